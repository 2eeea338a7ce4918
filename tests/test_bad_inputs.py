"""Issue 23, 'Inputs': every bad input is one line, exit 2, before any work, and nothing is written.

One table: the command (``{tmp}`` is the test's folder, ``{w}`` a folder of weights files made once), and a
piece of the message. Each row runs the CLI in this process (a traceback would be an exception here) and then
checks that no file appeared outside the inputs. Then a fuzz test: random ``--cfg-options`` strings against a
run whose preflight can never pass (a paper profile without data), so nothing runs: exit 2 with one line, or
the parser's own usage error, never a traceback.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

RUN = ["run", "--profile", "smoke", "--no-progress", "--out", "{tmp}/runs", "--cache-dir", "{tmp}/cache"]
TINY = "dinov2_tiny_defective"


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    """good, NaN, pickled, garbage, truncated and wrong-architecture weights of the tiny model; corrupt images."""
    from sinder.models.weights import load_backbone, save_state_dict

    folder = tmp_path_factory.mktemp("weights")
    state = load_backbone(TINY).state_dict()
    save_state_dict(state, folder / "good.safetensors", force=True)
    nan = {k: v.clone() for k, v in state.items()}
    key = next(k for k in nan if k.endswith("attn.qkv.weight"))
    nan[key][0, 0] = float("nan")
    save_state_dict(nan, folder / "nan.safetensors", force=True)
    torch.save({"model": _Pickled()}, folder / "pickled.pth")
    (folder / "garbage.safetensors").write_bytes(b"not a checkpoint " * 8)
    data = (folder / "good.safetensors").read_bytes()
    (folder / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    wrong = {k: v for k, v in state.items() if "blocks.0." not in k}
    save_state_dict(wrong, folder / "wrong.safetensors", force=True)
    (folder / "empty_runs").mkdir()
    from benchmarks.core import results as R

    failed = R.make_record(task="imagenet_knn", profile="smoke", metrics={}, metric_directions={}, hparams={},
                           backbone={"label": "tiny", "weights_sha256": "ab" * 32, "spec": "tiny"}, config={},
                           seed=0, wall_time_s=1.0, device=R.device_info("cpu"), error="RuntimeError: boom")  # fmt: skip
    R.ResultStore(folder / "failed_runs").write(failed)
    corrupt = folder / "corrupt_images"
    corrupt.mkdir()
    for i in range(3):
        (corrupt / f"img{i}.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return folder


class _Pickled:
    """A class pickled into a .pth: never unpickled (weights_only)."""


CASES = [
    # --cfg-options: typed and ranged task keys, at preflight
    ("cfg unbalanced", [*RUN, "--suite", "imagenet_knn", "--cfg-options", "imagenet_knn.ks=[10,"],
     "--cfg-options 'imagenet_knn.ks=[10,': unbalanced"),
    ("cfg float iterations", [*RUN, "--suite", "imagenet_linear", "--cfg-options", "imagenet_linear.iterations=1.5"],
     "iterations=1.5: expected an integer"),
    ("cfg zero iterations", [*RUN, "--suite", "imagenet_linear", "--cfg-options", "imagenet_linear.iterations=0"],
     "iterations=0: expected >= 1"),
    ("cfg negative iterations", [*RUN, "--suite", "imagenet_linear", "--cfg-options",
                                 "imagenet_linear.iterations=-1"], "iterations=-1: expected >= 1"),
    ("cfg batch 0", [*RUN, "--suite", "imagenet_knn", "--cfg-options", "imagenet_knn.batch_size=0"],
     "batch_size=0: expected >= 1"),
    ("cfg empty lrs", [*RUN, "--suite", "imagenet_linear", "--cfg-options", "imagenet_linear.lrs=[]"],
     "lrs=[]: expected at least one item"),
    ("cfg text ks", [*RUN, "--suite", "imagenet_knn", "--cfg-options", "imagenet_knn.ks=[a,b]"],
     "expected a list of integers"),
    ("cfg negative ks", [*RUN, "--suite", "imagenet_knn", "--cfg-options", "imagenet_knn.ks=[-5]"],
     "ks=[-5]: expected >= 1"),
    ("cfg nan", [*RUN, "--suite", "imagenet_knn", "--cfg-options", "imagenet_knn.T=nan"], "not a finite number"),
    ("checkpoint_every 0", [*RUN, "--suite", "imagenet_linear", "--cfg-options",
                            "imagenet_linear.checkpoint_every=0"], "checkpoint_every=0: expected >= 1"),
    ("checkpoint_every text", [*RUN, "--suite", "imagenet_linear", "--cfg-options",
                               "imagenet_linear.checkpoint_every=often"], "checkpoint_every='often'"),
    ("stego steps", [*RUN, "--suite", "stego_potsdam", "--cfg-options", "stego_potsdam.steps=0"],
     "steps=0: expected >= 1"),
    ("cause stage lr", [*RUN, "--suite", "cause_voc", "--cfg-options", "cause_voc.stage2.lr=-1.0"],
     "stage2: lr=-1.0: expected a positive number"),
    ("census images", [*RUN, "--suite", "defect_census", "--cfg-options", "defect_census.n_images=0"],
     "n_images=0: expected >= 1"),
    ("ablation evaluation", [*RUN, "--suite", "ablation_thresholds", "--cfg-options",
                             "ablation_thresholds.evaluation_overrides.seg_ade20k_linear.iterations=0"],
     "evaluation_overrides.seg_ade20k_linear: task seg_ade20k_linear (profile smoke): overrides: iterations=0"),
    # devices
    ("device index", [*RUN, "--suite", "imagenet_knn", "--device", "cuda:7"], "--device cuda:7"),
    ("device name", [*RUN, "--suite", "imagenet_knn", "--device", "gpuu"], "--device gpuu"),
    ("repair device", ["repair", "--backbone", TINY, "--images", "{w}/corrupt_images", "--out", "{tmp}/r.safetensors",
                       "--device", "gpuu"], "--device gpuu"),
    ("ttr device", ["ttr", "fit", "--backbone", TINY, "--images", "{w}/corrupt_images", "--out", "{tmp}/n.json",
                    "--selection", "robust_z", "--device", "cuda:7"], "--device cuda:7"),
    # weights of run
    ("run pickled", [*RUN, "--suite", "imagenet_knn", "--backbone", TINY + ":{w}/pickled.pth"], "pickled.pth"),
    ("run nan", [*RUN, "--suite", "imagenet_knn", "--backbone", TINY + ":{w}/nan.safetensors"], "not finite"),
    ("duplicate labels", [*RUN, "--suite", "imagenet_knn", "--backbone", "a=" + TINY,
                          "--backbone", "a=" + TINY + ":{w}/good.safetensors"], "label 'a'"),
    # clamp
    ("clamp garbage", ["clamp", "--backbone", TINY + ":{w}/garbage.safetensors", "--gamma", "5",
                       "--out", "{tmp}/c.safetensors"], "garbage.safetensors"),
    ("clamp truncated", ["clamp", "--backbone", TINY + ":{w}/truncated.safetensors", "--gamma", "5",
                         "--out", "{tmp}/c.safetensors"], "truncated.safetensors"),
    ("clamp missing", ["clamp", "--backbone", TINY + ":{w}/missing.safetensors", "--gamma", "5",
                       "--out", "{tmp}/c.safetensors"], "missing.safetensors"),
    ("clamp wrong arch", ["clamp", "--backbone", TINY + ":{w}/wrong.safetensors", "--gamma", "5",
                          "--out", "{tmp}/c.safetensors"], "wrong.safetensors"),
    ("clamp nan weights", ["clamp", "--backbone", TINY + ":{w}/nan.safetensors", "--gamma", "5",
                           "--out", "{tmp}/c.safetensors"], "not finite"),
    ("clamp negative", ["clamp", "--backbone", TINY, "--gamma", "-5", "--out", "{tmp}/c.safetensors"],
     "--gamma -5.0"),
    ("clamp nan gamma", ["clamp", "--backbone", TINY, "--gamma", "nan", "--out", "{tmp}/c.safetensors"],
     "--gamma nan"),
    ("clamp unwritable out", ["clamp", "--backbone", TINY, "--gamma", "5", "--out", "{tmp}/afile/c.safetensors"],
     "afile is not a folder"),
    ("remedy inf gamma", [*RUN, "--suite", "imagenet_knn", "--backbone", TINY + "+clamp:gamma=inf"], "gamma=inf"),
    ("remedy repeated gamma", [*RUN, "--suite", "imagenet_knn", "--backbone", TINY + "+clamp:gamma=5,gamma=3"],
     "gamma"),
    # repair
    ("repair nan weights", ["repair", "--backbone", TINY + ":{w}/nan.safetensors", "--images", "{w}/corrupt_images",
                            "--out", "{tmp}/r.safetensors", "--no-progress"], "not finite"),
    ("repair pickled", ["repair", "--backbone", TINY + ":{w}/pickled.pth", "--images", "{w}/corrupt_images",
                        "--out", "{tmp}/r.safetensors", "--no-progress"], "pickled.pth"),
    ("repair no census", ["repair", "--backbone", TINY, "--images", "{w}/corrupt_images", "--out",
                          "{tmp}/r.safetensors", "--no-progress", "--fail-on-regression", "--cfg-options",
                          "holdout_images=0"], "--fail-on-regression"),
    ("repair unwritable out", ["repair", "--backbone", TINY, "--images", "{w}/corrupt_images", "--out",
                              "{tmp}/afile/r.safetensors", "--no-progress"], "afile is not a folder"),
    ("repair inf lr", ["repair", "--backbone", TINY, "--images", "{w}/corrupt_images", "--out", "{tmp}/r.safetensors",
                       "--cfg-options", "lr=inf"], "config field 'lr': inf; expected a finite number"),
    # analyze / report
    ("analyze unwritable out", ["analyze", "--backbone", TINY, "--images", "{w}/corrupt_images", "--out",
                               "{tmp}/afile/analysis"], "afile is not a folder"),
    ("analyze compare missing", ["analyze", "--backbone", TINY, "--images", "{w}/corrupt_images", "--out",
                                 "{tmp}/analysis", "--compare", "own", "{w}/missing.safetensors"],
     "missing.safetensors"),
    ("report empty runs", ["report", "--runs", "{w}/empty_runs", "--out", "{tmp}/tables", "--no-plots"],
     "no run records"),
    ("report failed runs", ["report", "--runs", "{w}/failed_runs", "--no-plots"], "only 1 failed record(s)"),
    ("report unwritable out", ["report", "--runs", "{w}/empty_runs", "--out", "{tmp}/afile/tables"],
     "afile is not a folder"),
]  # fmt: skip


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize(("argv", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_bad_input_is_one_line_and_exit_2_before_any_work(tmp_path, weights_dir, capsys, argv, message):
    from benchmarks.cli import main

    (tmp_path / "afile").write_text("a file where --out wants a folder: unwritable, also for root")
    before = _files(tmp_path)
    argv = [a.format(tmp=tmp_path, w=weights_dir) for a in argv]
    if argv[0] == "run" and argv[-1].endswith("[10,"):  # refused while parsing: the parser exits
        with pytest.raises(SystemExit) as exited:
            main(argv)
        code = exited.value.code
    else:
        code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert message in err
    assert err.count("\n") == 1 and err.startswith("error: "), err  # one line
    assert _files(tmp_path) == before, "a refused command wrote files"


# ------------------------------------------------------------------------------------- --cfg-options fuzz
_VALUES = ["0", "-1", "1", "1.5", "-0.5", "1e9", "1e-3", "nan", "inf", "-inf", ".inf", "[]", "[", "]", "[1,",
           "[1,2]", "[a,b]", "[-5]", "[[1,2],[3]]", "(1,2)", "()", "a,b", "1,", ",", "'x'", '"y"', "null", "None",
           "true", "false", "yes", "auto", "{a: 1}", "x" * 40, "[1.5]", "[true]", "0x10", "1_000", "~", "", " ",
           "é", "[nan]", "{", "}", "[1,[2,", "a=b", "=", "''"]  # fmt: skip


def _keys(config: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in config.items():
        out.append(prefix + key)
        if isinstance(value, dict):
            out += _keys(value, f"{prefix}{key}.")
    return out


def _random_options(rng: random.Random, keys: dict[str, list[str]]) -> list[str]:
    options = []
    for _ in range(rng.randint(1, 3)):
        task = rng.choice([*keys, "no_such_task"])
        key = rng.choice(keys.get(task) or ["iterations"]) if rng.random() < 0.9 else rng.choice(["x", "", "a.b.c"])
        value = rng.choice(_VALUES)
        shape = rng.random()
        if shape < 0.8:
            options.append(f"{task}.{key}={value}")
        elif shape < 0.9:
            options.append(f"{key}={value}")  # no task
        else:
            options.append(f"{task}.{key}{value}")  # no '='
    return options


def test_random_cfg_options_end_in_a_usage_error_never_a_traceback(tmp_path, capsys):
    """The preflight of a paper run without data can never pass, so nothing runs: every random option string
    ends in exit 2 (one ``error:`` line) or the parser's own error, and an exception here would be a traceback."""
    from benchmarks.cli import main
    from benchmarks.core.registry import get_suite, get_task, list_tasks

    names = [t for t in get_suite("all").tasks if t in list_tasks()]
    keys = {name: _keys(get_task(name).config("paper")) for name in names}
    (tmp_path / "data").mkdir()
    rng = random.Random(23)
    base = ["run", "--suite", "all", "--profile", "paper", "--backbone", TINY, "--data-root", str(tmp_path / "data"),
            "--out", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache"), "--no-progress"]  # fmt: skip
    for _ in range(40):
        options = _random_options(rng, keys)
        try:
            code = main([*base, "--cfg-options", *options])
        except SystemExit as exited:  # refused while parsing (an item without '=', unbalanced brackets)
            code = exited.code
        err = capsys.readouterr().err
        assert code == 2, (options, err)
        assert "Traceback" not in err and err.count("error:") == 1, (options, err)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache" / "synth").exists()


# ------------------------------------------------------------------------------------- repair outcomes
_FAST = ["resolution=112", "num_images=8", "max_iters=6", "n_samples=2000", "checkpoint_every=3", "limit_layers=4"]


def test_a_repair_that_could_not_train_is_exit_2_and_writes_no_output(tmp_path, weights_dir, capsys):
    """All training images corrupt: no step read an image, so no repaired file (the issue: exit 0, output = input)."""
    from benchmarks.cli import main

    out = tmp_path / "r.safetensors"
    for flag in ([], ["--fail-on-regression"]):
        code = main(["repair", "--backbone", TINY, "--images", str(weights_dir / "corrupt_images"), "--out", str(out),
                     "--no-progress", "--device", "cpu", *flag, "--cfg-options", *_FAST, "holdout_images=1"])  # fmt: skip
        err = capsys.readouterr().err
        assert code == 2 and "error: the repair could not train: none of the 2 training images" in err, err
        assert not out.exists()
        if not flag:
            import shutil

            shutil.rmtree(tmp_path / "r.safetensors.work")


def test_repair_resume_after_the_output_finishes_the_report(tmp_path, capsys):
    """Killed after writing --out, before the report: --resume writes the report (and the same output bytes)."""
    from benchmarks.cli import main
    from sinder.utils.synthetic_images import write_synthetic_photos

    images = write_synthetic_photos(tmp_path / "imgs", 10)
    out = tmp_path / "r.safetensors"
    argv = ["repair", "--backbone", TINY, "--images", str(images), "--out", str(out), "--no-progress", "--device",
            "cpu", "--cfg-options", *_FAST, "holdout_images=2"]  # fmt: skip
    assert main(argv) == 0
    report = out.with_name("r.report.json")
    first = out.read_bytes()
    report.unlink()  # as if killed between the two writes
    capsys.readouterr()
    assert main(argv) == 2 and "exists; pass --force" in capsys.readouterr().err  # without --resume: refused
    assert main([*argv, "--resume"]) == 0
    assert report.is_file() and out.read_bytes() == first


# ------------------------------------------------------------------------------------- a nearly full disk
def _nearly_full(monkeypatch, free: int):
    import collections
    import shutil

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 * 2**30, 10 * 2**30 - free, free))


@pytest.mark.parametrize(("argv", "message"), [
    ([*RUN, "--suite", "imagenet_knn"], "cache folder (--cache-dir) {tmp}/cache: 1 MiB free, the run writes about "),
    (["repair", "--backbone", TINY, "--images", "{tmp}", "--out", "{tmp}/r.safetensors", "--no-progress"],
     "--out's folder {tmp}: 1 MiB free, the run writes about 4 MiB"),
])  # fmt: skip
def test_a_nearly_full_disk_stops_before_any_work(tmp_path, capsys, monkeypatch, argv, message):
    from benchmarks.cli import main

    _nearly_full(monkeypatch, 2**20)
    code = main([a.format(tmp=tmp_path) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and message.format(tmp=tmp_path) in err and err.count("error:") == 1, err
    assert list(tmp_path.iterdir()) == []


def test_a_write_that_still_fails_for_space_is_one_line(capsys):
    import argparse
    import errno

    from sinder.cli.common import run_verb

    def verb(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/results/runs/x.json")

    assert run_verb(verb, argparse.Namespace()) == 2
    assert capsys.readouterr().err == ("error: No space left on device writing /results/runs/x.json: free some "
                                       "space (or choose another folder) and rerun; with --resume a run goes on "
                                       "where it stopped\n")  # fmt: skip


def test_torch_save_failing_on_a_full_disk_is_one_line(capsys):
    """torch.save's writer reports a full disk as a RuntimeError without errno (the issue's repair traceback)."""
    import argparse

    from sinder.cli.common import run_verb

    def verb(args):
        raise RuntimeError("basic_ios::clear: iostream error\nException raised from ...")

    assert run_verb(verb, argparse.Namespace()) == 2
    assert capsys.readouterr().err == ("error: writing a file failed (basic_ios::clear: iostream error): is the disk "
                                       "full? Free some space and rerun; with --resume a run goes on where it "
                                       "stopped\n")  # fmt: skip


def test_random_repair_cfg_options_end_in_a_usage_error_never_a_traceback(tmp_path, capsys):
    """``repair --cfg-options`` with random keys and values: the images folder is missing, so even a valid
    config stops before any work; every string ends in exit 2 and one ``error:`` line."""
    import dataclasses

    from benchmarks.cli import main
    from sinder.repair.config import RepairConfig

    fields = [f.name for f in dataclasses.fields(RepairConfig)] + ["no_such_field"]
    rng = random.Random(7)
    seen = set()
    for _ in range(40):
        options = [f"{rng.choice(fields)}={rng.choice(_VALUES)}" for _ in range(rng.randint(1, 3))]
        try:
            code = main(["repair", "--backbone", TINY, "--images", str(tmp_path / "missing"), "--out",
                         str(tmp_path / "r.safetensors"), "--no-progress", "--cfg-options", *options])  # fmt: skip
        except SystemExit as exited:  # refused while parsing
            code = exited.code
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, (options, err)
        seen.add("missing" in err)
    assert seen == {True, False}  # some options were refused, some configs valid (then the folder is missing)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------- every key typed
def _schemas():
    from benchmarks.census.task import CENSUS_RANGES, CensusProfile
    from benchmarks.unsupervised import schema as S

    return [("stego_potsdam", S.StegoProfile, S.STEGO_RANGES), ("stego_cityscapes", S.StegoProfile, S.STEGO_RANGES),
            ("cause_voc", S.CauseProfile, S.CAUSE_RANGES), ("cause_cityscapes", S.CauseProfile, S.CAUSE_RANGES),
            ("defect_census", CensusProfile, CENSUS_RANGES)]  # fmt: skip


@pytest.mark.parametrize("profile", ["paper", "smoke"])
def test_every_key_of_the_new_schemas_profiles_has_a_type_and_each_range_names_a_key(profile):
    import dataclasses

    from benchmarks.core.registry import get_task
    from benchmarks.unsupervised.schema import STAGE_RANGES, CauseStage

    for task, schema, ranges in _schemas():
        names = {f.name for f in dataclasses.fields(schema)}
        config = get_task(task).config(profile)  # checked against the schema on the way
        assert set(config) == names, task
        assert set(ranges) <= names, task
        for stage in ("stage1", "stage2", "stage3") if task.startswith("cause") else ():
            derived = {"batch_size_per_process", "lr_per_process"}  # _cause_ddp's, after the check
            assert set(config[stage]) - derived <= {f.name for f in dataclasses.fields(CauseStage)}
    assert set(STAGE_RANGES) <= {f.name for f in dataclasses.fields(CauseStage)}
