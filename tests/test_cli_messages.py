"""What the tool tells its user: run progress and closing lines, where report writes, ls, and the fix hints."""

import json

import pytest

from benchmarks.cli import main
from benchmarks.core import registry
from benchmarks.core.progress import SuiteProgress, expected_durations, format_duration, headline

FIRST, SECOND = "dinov2_tiny_random", "dinov2_tiny_reg_random"


class _Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_progress_counts_tasks_and_estimates_from_records_then_from_this_run():
    clock = _Clock()
    progress = SuiteProgress(["a", "b", "c"], expected={"a": 30.0, "c": 90.0}, clock=clock)
    assert progress.prefix() == "[1/3 | 0 s elapsed]"  # b was never recorded and nothing has finished
    clock.now += 50
    progress.done("a", 50.0)
    # b: the mean of this run's finished tasks (50 s); c: its recorded median (90 s)
    assert progress.prefix() == f"[2/3 | 50 s elapsed, about {format_duration(140)} left]"
    progress.done("b", None)  # skipped (--resume): not counted in the mean
    assert progress.index == 3 and progress.remaining_estimate() == 90.0


def test_expected_durations_take_the_median_of_the_same_profile():
    records = [{"task": "knn", "profile": "smoke", "wall_time_s": t} for t in (1.0, 9.0, 2.0)]
    records.append({"task": "knn", "profile": "paper", "wall_time_s": 500.0})
    assert expected_durations(records, "smoke") == {"knn": 2.0}


def test_result_lines_show_a_few_metrics():
    metrics = {f"m{i}": float(i) for i in range(6)}
    assert headline(metrics, ["m1", "m2", "m1"], limit=2) == "m1=1 m2=2 (+4 more in the record)"
    assert headline({"miou": 41.234}, ["miou"]) == "miou=41.23"
    assert format_duration(3725) == "1 h 02 min" and format_duration(65) == "1 min 05 s"


@pytest.fixture
def toy_suite(tmp_path, monkeypatch):
    """A suite of two toy tasks (no data, instant) under a temporary suites folder; the second repairs its input."""
    registry.list_tasks()  # discover the real tasks first, so that restoring the registry keeps them
    monkeypatch.setattr(registry, "_TASKS", dict(registry._TASKS))
    ran = []

    class Plain(registry.Task):
        name = "toy_plain"
        metrics = tuple(registry.Metric(f"score{i}") for i in range(5))

        def run(self, backbone, ctx):
            ran.append((self.name, ctx.backbone_label))
            return {"metrics": {m.name: 1.5 for m in self.metrics}}

    class Repairs(Plain):
        name = "toy_repairs"
        first_backbone_only = True

    registry.register_task(Plain)
    registry.register_task(Repairs)
    suites = tmp_path / "suites"
    suites.mkdir()
    (suites / "toys.yaml").write_text("title: toys\ntasks: [toy_plain, toy_repairs]\n")
    monkeypatch.setattr(registry, "SUITES_DIR", suites)
    return ran


def test_run_shows_k_of_n_and_ends_with_where_the_records_are(tmp_path, toy_suite, capsys):
    out = tmp_path / "runs"
    code = main(["run", "--suite", "toys", "--profile", "smoke", "--backbone", FIRST, "--backbone", SECOND,
                 "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--no-progress"])  # fmt: skip
    text = capsys.readouterr().out
    assert code == 0
    # the task that repairs its input ran on the first backbone only: 3 pairs, not 4
    assert toy_suite == [("toy_plain", FIRST), ("toy_repairs", FIRST), ("toy_plain", SECOND)]
    assert "[1/3 | " in text and "[3/3 | " in text and "[4/" not in text
    assert f"toy_repairs ran on {FIRST} only" in text
    assert f"    {FIRST} toy_plain: score0=1.5 score1=1.5 score2=1.5 (+2 more in the record)" in text
    lines = text.strip().splitlines()
    assert lines[-3].startswith("records: 3 written in ") and lines[-3].endswith(f"under {out}/<task>/")
    summary = next((out / "summaries").glob("*.json"))
    assert lines[-2] == f"summary: {summary}" and json.loads(summary.read_text())["ran"]
    assert lines[-1].startswith(f"next:    sinder-bench report --runs {out} ")


def test_smoke_runs_torch_on_one_thread_unless_told(tmp_path, toy_suite, capsys):
    import torch

    common = ["run", "--suite", "toys", "--profile", "smoke", "--backbone", FIRST, "--out", str(tmp_path / "runs"),
              "--cache-dir", str(tmp_path / "cache"), "--no-progress"]  # fmt: skip
    try:
        torch.set_num_threads(2)
        assert main(common) == 0 and torch.get_num_threads() == 1
        assert main([*common, "--threads", "2"]) == 0 and torch.get_num_threads() == 2
        assert main([*common, "--threads", "0"]) == 2
        assert "--threads 0: give 1 or more" in capsys.readouterr().err
    finally:
        torch.set_num_threads(1)


def test_report_on_a_missing_folder_exits_2(tmp_path, capsys):
    assert main(["report", "--runs", str(tmp_path / "missing"), "--out", str(tmp_path / "tables")]) == 2
    err = capsys.readouterr().err
    assert f"--runs {tmp_path / 'missing'}: no such folder of run records" in err
    assert not (tmp_path / "tables").exists()


def test_report_says_where_it_wrote_the_tables(tmp_path, capsys):
    from benchmarks.core import results as R

    record = R.make_record(task="imagenet_knn", profile="smoke", metrics={"top1": 50.0, "top5": 80.0},
                           backbone={"label": "tiny", "weights_sha256": "ab" * 32, "spec": "tiny"},
                           metric_directions={"top1": "higher", "top5": "higher"}, hparams={}, config={}, seed=0,
                           wall_time_s=1.0, device=R.device_info("cpu"), table="table3", suite="table3")  # fmt: skip
    R.ResultStore(tmp_path / "runs").write(record)  # an empty folder is refused: nothing to report
    out = tmp_path / "tables"
    assert main(["report", "--runs", str(tmp_path / "runs"), "--tables", "3,5", "--out", str(out), "--no-plots"]) == 0
    err = capsys.readouterr().err
    assert f"tables written: {out}/table{{3,5}}.md" in err
    assert f"remedies table written: {out}/remedies.md" in err  # the records' backbone gets a remedies row
    assert sorted(p.name for p in out.iterdir()) == ["remedies.md", "table3.md", "table5.md"]


def test_ls_describes_tasks_suites_and_whether_official_weights_are_present(tmp_path, monkeypatch, capsys):
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "dinov2_vits14_pretrain.pth").write_bytes(b"")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert main(["ls"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")}
    assert f"official weights present ({checkpoints / 'dinov2_vits14_pretrain.pth'})" in lines["dinov2_vits14"]
    assert "official weights not downloaded (dinov2_vitg14_pretrain.pth into" in lines["dinov2_vitg14"]
    assert "NAME:WEIGHTS" in lines["dinov2_tiny"]
    for name in registry.list_tasks():
        task = registry.get_task(name)
        assert lines[name].split(None, 1)[1].strip() in (task.title, f"{task.title} ({task.table})")
    assert lines["table3"].endswith("(2 tasks)") and "ImageNet" in lines["table3"]


def test_missing_official_weights_say_how_each_verb_takes_a_file(tmp_path, monkeypatch):
    from sinder.models.weights import resolve_weights_path

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError) as err:
        resolve_weights_path("dinov2_vitg14")
    assert "--backbone NAME:WEIGHTS` for run" in str(err.value) and "--weights PATH` for repair" in str(err.value)


def test_data_synth_into_a_full_folder_names_the_flag(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("earlier work")
    assert main(["data", "synth", "--dataset", "potsdam", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "pass --overwrite to replace it" in err and "overwrite=True" not in err
    assert (tmp_path / "keep.txt").read_text() == "earlier work"


def test_paper_preflight_says_where_to_get_a_missing_dataset(tmp_path, monkeypatch, capsys):
    from benchmarks.data import DATASETS

    monkeypatch.delenv("SINDER_BENCH_DATA", raising=False)
    code = main(["run", "--suite", "table1", "--backbone", f"x=dinov2_tiny:{tmp_path / 'w.safetensors'}",
                 "--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "runs")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert DATASETS["cityscapes"].url in err and DATASETS["potsdam"].url in err


def test_repair_progress_counts_clear_images_among_those_seen(tmp_path):
    """195 clear of 200 seen reads 195/200, not 20% of a 1000-image window still full of placeholders."""
    import torch

    from sinder.models.vit import build_vit
    from sinder.repair.config import RepairConfig
    from sinder.repair.run import RepairRun
    from sinder.repair.step import StepResult

    script = [True, False, True, True]  # True = a clear image

    class Scripted:
        calls = 0

        def __call__(self, image):
            clear = script[self.calls]
            self.calls += 1
            return (StepResult(None, 0, None, None), None) if clear else (StepResult(3, 3, 1.0, 1.0), torch.tensor(1.0))

        def backward(self, loss):
            pass

    config = RepairConfig(window=10, stop_fraction=0.75, max_iters=len(script), checkpoint_every=0, resolution=28)
    run = RepairRun(build_vit("dinov2_tiny", seed=0), list(range(len(script))), config, tmp_path,
                    load=lambda i: torch.zeros(3, 28, 28), directions=[torch.ones(96)] * 6, progress=False)  # fmt: skip
    run.step_fn = Scripted()
    run.run()
    assert run.clear_of_seen() == (3, 4)
    assert run.clear_fraction() == 3 / 10  # the stop rule's window is unchanged


def test_repair_help_describes_the_verb_and_every_flag(capsys):
    with pytest.raises(SystemExit):
        main(["repair", "--help"])
    text = capsys.readouterr().out
    assert "Fine-tune the singular values" in text
    for flag in ("--max-iters", "--num-images", "--resolution", "--no-progress"):
        after = text.split(flag, 1)[1].split("\n  --", 1)[0]
        assert len(after.split()) > 2, flag  # the flag, its metavar, then words of help
