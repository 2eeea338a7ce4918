"""`sinder-bench run --seeds 0,1`: the suite once per seed into one --out (issue 25).

The seeds' records are compared with those of separate `--seed` runs into another folder (the independent
computation); ImageNet linear on the smoke profile with 6 iterations is the cheapest task whose metrics move
with the seed (the probe's initialisation and the seed's own synthetic twin).
"""

from __future__ import annotations

import json
import shutil

import pytest

from benchmarks.classification.task import ImageNetLinear
from benchmarks.cli import main
from benchmarks.core.results import load_records

BACKBONE = "dinov2_tiny_random"
SHORT = ["--cfg-options", "imagenet_linear.iterations=6"]


def _run(out, cache, *extra):
    return main(["run", "--suite", "imagenet_linear", "--profile", "smoke", "--backbone", BACKBONE, "--out",
                 str(out), "--cache-dir", str(cache), "--no-progress", *SHORT, *extra])  # fmt: skip


def _metrics_by_seed(out) -> dict[int, dict]:
    return {r["seed"]: r["metrics"] for r in load_records(out) if r["task"] == "imagenet_linear"}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("seeds-cache")


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory, cache):
    out = tmp_path_factory.mktemp("two-seeds")
    assert _run(out, cache, "--seeds", "0,1") == 0
    return out


class _Calls:
    """The seeds ImageNetLinear.run is called with (the work done, not the records left)."""

    def __init__(self, monkeypatch, fail_seed: int | None = None):
        self.seeds = []
        original = ImageNetLinear.run

        def wrapped(task, backbone, ctx):
            self.seeds.append(ctx.seed)
            if ctx.seed == fail_seed:
                raise RuntimeError(f"synthetic failure of seed {ctx.seed}")
            return original(task, backbone, ctx)

        monkeypatch.setattr(ImageNetLinear, "run", wrapped)


def test_seeds_give_the_records_of_separate_seed_runs(two_seeds, cache, tmp_path, capsys):
    together = _metrics_by_seed(two_seeds)
    assert sorted(together) == [0, 1]
    apart = tmp_path / "apart"
    assert _run(apart, cache, "--seed", "0") == 0 and _run(apart, cache, "--seed", "1") == 0
    assert _metrics_by_seed(apart) == together
    assert together[0] != together[1]  # the seed matters here, so equal metrics say the seed reached each pass
    summaries = sorted((two_seeds / "summaries").glob("*.json"))
    assert len(summaries) == 2  # one per seed, never one overwriting the other
    assert sorted(json.loads(p.read_text())["ran"][0]["task"] for p in summaries) == ["imagenet_linear"] * 2


def test_each_pass_is_announced_and_the_summary_counts_per_seed(cache, tmp_path, capsys):
    capsys.readouterr()
    assert _run(tmp_path / "out", cache, "--seeds", "3,2") == 0
    text = capsys.readouterr().out
    assert text.index("seed 3 (1 of 2 seeds)") < text.index("seed 2 (2 of 2 seeds)")
    assert "over 2 seed(s) 3,2: exit 0" in text
    assert "  seed 3: 1 ran, 0 already recorded, 0 failed, 0 not available" in text
    assert "  seed 2: 1 ran, 0 already recorded, 0 failed, 0 not available" in text


def test_resume_skips_the_recorded_seeds(two_seeds, cache, tmp_path, monkeypatch, capsys):
    out = tmp_path / "runs"
    shutil.copytree(two_seeds, out)
    calls = _Calls(monkeypatch)
    capsys.readouterr()
    assert _run(out, cache, "--seeds", "0,1,2", "--resume") == 0
    assert calls.seeds == [2]  # seeds 0 and 1 are recorded: only seed 2 is new work
    assert sorted(_metrics_by_seed(out)) == [0, 1, 2]
    text = capsys.readouterr().out
    assert "  seed 0: 0 ran, 1 already recorded" in text and "  seed 2: 1 ran, 0 already recorded" in text


def test_the_exit_code_is_the_worst_seeds(cache, tmp_path, monkeypatch, capsys):
    calls = _Calls(monkeypatch, fail_seed=1)
    capsys.readouterr()
    assert _run(tmp_path / "out", cache, "--seeds", "0,1,2") == 1  # seed 1 failed, the others ran
    assert calls.seeds == [0, 1, 2]
    assert "  seed 1: 0 ran, 0 already recorded, 1 failed" in capsys.readouterr().out


def test_a_later_seed_that_cannot_start_is_exit_2_after_the_others(cache, tmp_path, monkeypatch, capsys):
    from benchmarks.core import runner

    original = runner.prepare_datasets

    def no_twin_for_seed_1(tasks, profile, data_root, cache_dir, seed):
        roots, problems = original(tasks, profile, data_root, cache_dir, seed)
        return roots, problems + (["no synthetic twin for seed 1"] if seed == 1 else [])

    monkeypatch.setattr(runner, "prepare_datasets", no_twin_for_seed_1)
    calls = _Calls(monkeypatch)
    capsys.readouterr()
    assert _run(tmp_path / "out", cache, "--seeds", "0,1,2") == 2
    assert calls.seeds == [0, 2]
    assert "  seed 1: did not start: cannot start suite 'imagenet_linear' (profile smoke): no synthetic twin" in (
        capsys.readouterr().out)  # fmt: skip


@pytest.mark.parametrize(("flags", "message"), [
    (["--seeds", "0,0"], "error: --seeds '0,0': seed 0 is given twice; each seed runs once"),
    (["--seeds", "0,-1"], "error: --seeds '0,-1': '-1' is not a non-negative integer; e.g. --seeds 0,1,2"),
    (["--seeds", "0,x"], "error: --seeds '0,x': 'x' is not a non-negative integer; e.g. --seeds 0,1,2"),
    (["--seeds", "1,"], "error: --seeds '1,': '' is not a non-negative integer; e.g. --seeds 0,1,2"),
    (["--seeds", ""], "error: --seeds '': no seed; give distinct non-negative integers, e.g. --seeds 0,1,2"),
    (["--seed", "0", "--seeds", "1,2"], "error: --seed 0 and --seeds 1,2: give one of them"),
    (["--seeds", "0,1", "--launcher", "slurm", "--seed", "3", "--dry-run"], "error: --seed 3 and --seeds 0,1"),
])  # fmt: skip
def test_a_bad_seed_list_is_one_line_before_any_work(flags, message, tmp_path, monkeypatch, capsys):
    from benchmarks.core import runner

    monkeypatch.setattr(runner, "run_suite", lambda *a, **k: pytest.fail("the run started"))
    capsys.readouterr()
    assert _run(tmp_path / "out", tmp_path / "cache", *flags) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_dry_run_lists_every_seed(tmp_path, capsys):
    capsys.readouterr()
    assert _run(tmp_path / "out", tmp_path / "cache", "--seeds", "0,5", "--launcher", "local", "--dry-run") == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines if line.startswith("[")] == [
        f"[{BACKBONE}] imagenet_linear (seed 0)", f"[{BACKBONE}] imagenet_linear (seed 5)"]  # fmt: skip
    assert lines[-1] == "dry run: 2 job(s) not submitted"


def test_launched_jobs_run_each_seed(tmp_path, monkeypatch):
    """Each seed's job reaches run_suite with its own seed, and the manifest and status keep them apart."""
    from benchmarks.core import launch as L
    from benchmarks.core import runner
    from benchmarks.core.job import RunSummary

    seen = []

    class RunNow:
        def submit(self, fn, job, run_args, place):
            seen.append((job["seed"], run_args["seed"]))
            return type("Handle", (), {"job_id": str(100 + len(seen))})()

    monkeypatch.setattr(L, "make_executor", lambda *a, **k: RunNow())
    monkeypatch.setattr(runner, "run_suite", lambda s, b, **k: RunSummary(run_id="r", suite=s, profile="smoke"))
    out = tmp_path / "out"
    assert _run(out, tmp_path / "cache", "--seeds", "4,1", "--launcher", "slurm") == 0
    assert seen == [(4, 4), (1, 1)]
    assert [e["seed"] for e in L.read_manifest(out)] == [4, 1]
    monkeypatch.setattr(L, "job_state", lambda entry: ("pending", f"job {entry['job_id']}"))
    rows = L.status_rows(out)
    assert [(r["seed"], r["state"]) for r in rows] == [(1, "pending"), (4, "pending")]
    assert L.format_status(rows).splitlines()[0].split()[:5] == ["backbone", "task", "profile", "seed", "state"]


def test_the_disk_preflight_counts_every_seed(tmp_path, monkeypatch):
    from test_disk_preflight import _expected_knn_run, _free, _imagenet

    from benchmarks.classification.task import ImageNetKNN
    from benchmarks.core.runner import PreflightError
    from benchmarks.core.seeds import run_seeds

    monkeypatch.setattr(ImageNetKNN, "run", lambda self, backbone, ctx: {"metrics": {"top1": 1.0, "top5": 1.0}})
    data = tmp_path / "data"
    need = 3 * _expected_knn_run(_imagenet(data, 2), width=96)  # every seed writes its features and record

    def run():
        return run_seeds("imagenet_knn", ["dinov2_tiny_defective"], seeds=[0, 1, 2], profile="paper", data_root=data,
                         out=tmp_path / "runs", cache_dir=tmp_path / "cache", progress=False, log=lambda m: None)  # fmt: skip

    _free(monkeypatch, need - 1)
    with pytest.raises(PreflightError, match=f"the run writes about {need / 2**20:.0f} MiB"):
        run()
    assert not (tmp_path / "runs").exists()  # refused before the first seed
    _free(monkeypatch, need)
    result = run()
    assert result.exit_code == 0 and sorted(result.summaries) == [0, 1, 2]
