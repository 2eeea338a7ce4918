"""Errors before work and nothing lost: preflight, failing record writes, temp folders of killed runs, specs."""

import errno
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.classification.task import ImageNetKNN, ImageNetLinear
from benchmarks.cli import main
from benchmarks.core import claims, results
from benchmarks.core.backbones import parse_backbone_spec
from benchmarks.core.results import load_records
from sinder.models.weights import load_backbone, save_state_dict
from sinder.utils.atomic import remove_stale_temps, temp_prefix

BACKBONE = "dinov2_tiny_random"
README = Path(__file__).resolve().parents[1] / "README.md"


def _run(out, cache, *backbones):
    args = ["run", "--suite", "table3", "--profile", "smoke", "--out", str(out), "--cache-dir", str(cache),
            "--no-progress"]  # fmt: skip
    for spec in backbones or (BACKBONE,):
        args += ["--backbone", spec]
    return main(args)


def test_preflight_opens_every_weights_file_before_any_work(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(ImageNetKNN, "run", lambda *a: calls.append("knn"))
    good = load_backbone(BACKBONE).state_dict()
    corrupt = tmp_path / "corrupt.safetensors"
    save_state_dict(good, corrupt)
    corrupt.write_bytes(corrupt.read_bytes()[:300])  # truncated: the header no longer parses
    wrong = tmp_path / "wrong.safetensors"
    save_state_dict({**good, "pos_embed": torch.zeros(1, 5, good["pos_embed"].shape[-1])}, wrong)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # an --out that can never be created (root included)
    code = _run(blocker / "runs", tmp_path / "cache", BACKBONE, f"a={BACKBONE}:{corrupt}", f"b={BACKBONE}:{wrong}")
    err = capsys.readouterr().err
    assert code == 2 and calls == [] and "3 missing or invalid input(s)" in err
    problems = [line for line in err.splitlines() if line.startswith("  - ")]
    assert any(f"output folder (--out) {blocker / 'runs'} is not writable: {blocker} is not a folder" in p for p in problems)
    assert any("corrupt.safetensors" in p and "cannot read weights file" in p for p in problems)
    assert any("wrong.safetensors" in p and "wrong shapes (1): pos_embed" in p for p in problems)
    assert not (tmp_path / "cache" / "synth").exists()  # stopped before generating any data


def test_a_full_disk_fails_that_task_and_keeps_earlier_records(tmp_path, monkeypatch, capsys):
    original = ImageNetLinear.config
    monkeypatch.setattr(ImageNetLinear, "config",
                        lambda self, profile, overrides=None: original(self, profile, {"iterations": 2}))
    write = results.ResultStore.write

    def full_after_knn(store, record):
        if record["task"] == "imagenet_linear":
            raise OSError(errno.ENOSPC, "No space left on device")
        return write(store, record)

    monkeypatch.setattr(results.ResultStore, "write", full_after_knn)
    assert _run(tmp_path / "runs", tmp_path / "cache") == 1
    out = capsys.readouterr().out
    assert [r["task"] for r in load_records(tmp_path / "runs")] == ["imagenet_knn"]  # kept
    assert "failed: [dinov2_tiny_random] imagenet_linear: OSError: [Errno 28] No space left on device" in out
    assert "could not record the failure either" in out


def test_temp_folders_of_a_killed_run_are_removed(tmp_path):
    scratch = tmp_path / "tmp"
    (scratch / "20260101T000000-123-r0" / "sinder-smoke-repair-x").mkdir(parents=True)  # its run died
    live = claims.Claim(scratch / ".live-r0.lock")
    assert live.acquire()
    (scratch / "live-r0").mkdir()
    with claims.scratch_dir(scratch, "mine-r0") as mine:
        import tempfile

        assert Path(tempfile.mkdtemp()).parent == mine  # the run's temp files land in its own folder
        assert sorted(p.name for p in scratch.iterdir() if not p.name.startswith(".")) == ["live-r0", "mine-r0"]
    assert sorted(p.name for p in scratch.iterdir() if not p.name.startswith(".")) == ["live-r0"]
    live.release()
    # A staging folder of a killed dataset build is removed by the next builder, a live one's and the dataset kept.
    target = tmp_path / "synth" / "imagenet-seed0"
    target.mkdir(parents=True)
    dead = temp_prefix(target.name).replace(f"-{os.getpid()}-", f"-{_dead_pid()}-") + "abc"
    (target.parent / dead).mkdir()
    (target.parent / f"{temp_prefix(target.name)}live").mkdir()
    remove_stale_temps(target.parent, recursive=False)
    assert sorted(p.name for p in target.parent.iterdir()) == sorted([f"{temp_prefix(target.name)}live", "imagenet-seed0"])


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_claims_are_exclusive_and_die_with_their_holder(tmp_path):
    import subprocess
    import sys

    first, second = claims.Claim(tmp_path / "k.lock"), claims.Claim(tmp_path / "k.lock")
    assert first.acquire() and not second.acquire()
    assert re.fullmatch(rf"pid {os.getpid()} on .+", second.holder())
    first.release()
    assert second.acquire()
    second.release()
    # A process killed while holding a claim leaves it free.
    code = ("import os, signal, sys; sys.path.insert(0, '.'); from benchmarks.core.claims import Claim; "
            f"assert Claim({str(tmp_path / 'k.lock')!r}).acquire(); os.kill(os.getpid(), signal.SIGKILL)")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == -9
    assert claims.Claim(tmp_path / "k.lock").acquire()


def test_backbone_specs_with_equals_in_the_weights_path():
    spec = parse_backbone_spec("dinov2_vitg14:/ckpt/lr=0.1/model.safetensors")
    assert (spec.label, spec.name, spec.weights) == ("model", "dinov2_vitg14", "/ckpt/lr=0.1/model.safetensors")
    spec = parse_backbone_spec("run=dinov2_vitg14:/ckpt/lr=0.1/model.safetensors")
    assert (spec.label, spec.weights) == ("run", "/ckpt/lr=0.1/model.safetensors")
    with pytest.raises(ValueError, match="label"):
        parse_backbone_spec("bad label=dinov2_vits14")


def test_readme_dataset_table_matches_the_loaders_layouts():
    from benchmarks.core.runner import _dataset_dirname
    from benchmarks.data.specs import DATASETS

    rows = {}
    for line in README.read_text().splitlines():
        match = re.fullmatch(r"\| .+ \(`(\w+)`\) \| `([^`]+)/` \| `([^`]+)` \|", line)
        if match:
            rows[match.group(1)] = (match.group(2), match.group(3))
    assert sorted(rows) == sorted(DATASETS)
    for name, spec in DATASETS.items():
        assert rows[name] == (spec.root_name, spec.layout)
        assert _dataset_dirname(name) == spec.root_name  # where `run` looks under --data-root
        if spec.inner:
            assert spec.layout.startswith(spec.inner + "/")


def test_the_smoke_twin_is_a_sinder_repair_by_its_metadata(tmp_path, monkeypatch):
    from benchmarks.core import backbones as B
    from benchmarks.core.report import paper_role

    def halve_the_norm(model):
        model.norm.weight.data.mul_(0.5)
        return model

    monkeypatch.setattr("sinder.repair.smoke.repair_for_smoke", halve_the_norm)
    spec = B.parse_backbone_spec(f"plain={BACKBONE}")
    twin = B.repaired_twin(spec, tmp_path, log=lambda msg: None)
    base, repaired = B.load(spec), B.load(twin)
    assert twin.label == "plain_sinder" and repaired.weights_sha256 != base.weights_sha256
    role = repaired.weights_role
    assert (role["kind"], role["remedy"], role["base_sha256"]) == ("repair", "sinder", base.weights_sha256)
    assert paper_role(role) == "sinder" and paper_role(base.weights_role) is None
