"""Tables 6-7 ablation tasks: each row's repaired model reaches both evaluations, smoke ones on a short schedule."""

from pathlib import Path
from types import SimpleNamespace

import pytest

from benchmarks.ablations import task as A
from benchmarks.core import registry


def test_smoke_rows_evaluate_with_the_shortened_segmentation_schedule(monkeypatch):
    seen = []

    class FakeEval:
        def __init__(self, name, config):
            self.name, self._config = name, config

        def config(self, profile):
            return {"overrides": dict(self._config)}

        def run(self, model, ctx):
            seen.append((self.name, ctx.config["overrides"]))
            return {"metrics": {"top1": 1.0, "top5": 2.0, "miou": 3.0, "aacc": 4.0}}

    fakes = {"imagenet_knn": FakeEval("imagenet_knn", {}),
             "seg_ade20k_linear": FakeEval("seg_ade20k_linear", {"iterations": 100, "crop": 84})}  # fmt: skip
    monkeypatch.setattr(A, "get_task", lambda name: fakes[name])
    monkeypatch.setattr(A._AblationTask, "_repair",
                        _fake_repair)
    shas = iter(f"{i:064d}" for i in range(100))  # every row's repair gives other weights
    monkeypatch.setattr("sinder.models.weights.state_dict_sha256", lambda state: next(shas))
    ablation = A.ThresholdAblation()
    assert ablation.first_backbone_only and not registry.Task.first_backbone_only
    ctx = SimpleNamespace(profile="smoke", config=ablation.config("smoke"), log=lambda msg: None,
                          work_dir=Path("/nonexistent"))  # fmt: skip
    monkeypatch.setattr(A.dataclasses, "replace", lambda ctx, **kw: SimpleNamespace(**{**vars(ctx), **kw}))
    out = ablation.run(_backbone(), ctx)
    seg = [overrides for name, overrides in seen if name == "seg_ade20k_linear"]
    assert len(seg) == len(ablation.settings) + 1 == 7  # the unrepaired base and Table 7's rows
    assert all(o == {"iterations": 12, "warmup": 2, "eval_images": 4, "crop": 84} for o in seg)  # the task's own crop kept
    assert out["metrics"]["mu_4/ade20k_miou"] == 3.0
    assert out["hparams"].pop("base") == {"setting": None, "blocks": 8}
    assert all(h["on_nonfinite"] == "skip" for h in out["hparams"].values())  # the policy is recorded per row
    assert ablation.config("paper")["evaluation_overrides"] == {}
    assert "details" not in out


def test_rows_with_an_earlier_rows_weights_report_its_evaluations(monkeypatch):
    runs = []

    class FakeEval:
        def config(self, profile):
            return {}

        def run(self, model, ctx):
            runs.append(ctx.work_dir.name)
            return {"metrics": {"top1": len(runs), "top5": 0.0, "miou": 10.0 * len(runs), "aacc": 0.0}}

    monkeypatch.setattr(A, "get_task", lambda name: FakeEval())
    monkeypatch.setattr(A._AblationTask, "_repair",
                        _fake_repair)
    # sigma_0 and sigma_5 end at the same weights, and so do mu_4 and mu_4.5
    same = {"base": "e", "sigma_0": "a", "sigma_3": "b", "sigma_5": "a", "mu_3.5": "c", "mu_4": "d", "mu_4.5": "d"}
    rows = iter(["base", *A.ThresholdAblation().settings])  # the unrepaired base is evaluated first
    monkeypatch.setattr("sinder.models.weights.state_dict_sha256", lambda state: same[next(rows)] * 64)
    monkeypatch.setattr(A.dataclasses, "replace", lambda ctx, **kw: SimpleNamespace(**{**vars(ctx), **kw}))
    ctx = SimpleNamespace(profile="smoke", config=A.ThresholdAblation().config("smoke"), log=lambda msg: None,
                          work_dir=Path("/nonexistent"))  # fmt: skip
    out = A.ThresholdAblation().run(_backbone(), ctx)
    assert runs == [f"{task}-{row}" for row in ("base", "sigma_0", "sigma_3", "mu_3.5", "mu_4")
                    for task in ("imagenet_knn", "seg_ade20k_linear")]  # fmt: skip
    assert out["details"] == {"same_weights_as": {"sigma_5": "sigma_0", "mu_4.5": "mu_4"}}
    m = out["metrics"]
    assert m["sigma_5/knn_top1"] == m["sigma_0/knn_top1"] == 3 and m["sigma_5/ade20k_miou"] == m["sigma_0/ade20k_miou"] == 40
    assert m["mu_4.5/knn_top1"] == m["mu_4/knn_top1"] == 9 and m["sigma_3/knn_top1"] == 5 and m["base/knn_top1"] == 1


def _fake_repair(self, backbone, overrides, ctx, row, directions=None):
    """No repair: the backbone itself, with the row's resolved config (as _repair resolves it)."""
    return backbone, A.ablation_config(overrides, ctx.config["repair"], len(backbone.blocks)), None


def _backbone(depth=8):
    return SimpleNamespace(state_dict=dict, blocks=[None] * depth)


def test_rows_share_the_backbones_directions_and_repair_as_if_each_computed_them(monkeypatch):
    import copy

    import torch

    from sinder.defects import linearize
    from sinder.models.defective import build_defective_tiny
    from sinder.repair.smoke import repair_for_smoke

    backbone, _ = build_defective_tiny()
    calls = []
    original = linearize.singular_defect_directions
    monkeypatch.setattr(linearize, "singular_defect_directions", lambda *a, **k: calls.append(k) or original(*a, **k))
    computed: dict = {}
    row = A.ablation_config({"mu": 3.5}, "smoke", 8)
    shared = A._shared_directions(backbone, row, torch.device("cpu"), computed)
    assert A._shared_directions(backbone, A.ablation_config({"sigma": 5}, "smoke", 8), "cpu", computed) is shared
    assert len(calls) == 1 and calls[0]["n_samples"] == row.n_samples and calls[0]["seed"] == row.direction_seed
    # The same repair with the shared directions and with the ones RepairRun computes for the row's copy.
    row = A.ablation_config({"mu": 3.5, "max_iters": 6, "num_images": 6}, "smoke", 8)
    with_shared = repair_for_smoke(copy.deepcopy(backbone), config=row, directions=shared).state_dict()
    own = repair_for_smoke(copy.deepcopy(backbone), config=row).state_dict()
    assert len(calls) == 2  # the second repair computed its own
    assert all(torch.equal(with_shared[k], own[k]) for k in own)
    assert not all(torch.equal(with_shared[k], v) for k, v in backbone.state_dict().items())  # it did repair


# ------------------------------------------------------------------------------ the profile keys, checked
def test_rows_are_checked_as_repair_config_files_are(tmp_path):
    import pytest

    from sinder.repair.config import RepairConfig

    task = A.ThresholdAblation()
    with pytest.raises(ValueError) as by_file:
        (tmp_path / "bad.yaml").write_text("sigma: -1\n")
        RepairConfig.from_file(tmp_path / "bad.yaml")
    with pytest.raises(ValueError) as by_row:
        task.config("smoke", {"settings.sigma_3.sigma": -1})
    assert "config field 'sigma': -1; expected >= 0" in str(by_file.value)
    assert str(by_row.value) == ("task ablation_thresholds (profile smoke): settings.sigma_3: config field 'sigma': "
                                 "-1; expected >= 0")  # fmt: skip
    with pytest.raises(ValueError, match=r"settings.sv_except_qk: config field 'trainable': 'everything'; expected one of"):
        A.ConstraintAblation().config("paper", {"settings.sv_except_qk.trainable": "everything"})
    with pytest.raises(ValueError, match=r"settings.sv_except_qk_5: unknown repair config key\(s\) lamda"):
        A.check_profile({**task.config("paper"), "settings": {"sv_except_qk_5": {"lamda": 5}}}, "p")
    with pytest.raises(ValueError, match=r"settings.mu_4: config field 'mu': 'high' \(str\); expected a number"):
        A.check_profile({**task.config("paper"), "settings": {"mu_4": {"mu": "high"}}}, "p")


def test_the_repair_key_chooses_what_each_row_starts_from():
    import pytest

    from sinder.repair.config import SMOKE_CONFIG, RepairConfig

    task = A.ThresholdAblation()
    assert task.config("paper")["repair"] == "official" and task.config("smoke")["repair"] == "smoke"
    official = A.ablation_config({"mu": 3.5}, "official", 12)
    assert official == RepairConfig(mu=3.5, on_nonfinite="skip")
    smoke = A.ablation_config({"mu": 3.5, "limit_layers": 20}, "smoke", 8)  # lambda 20 of 40 -> 4 of 8
    assert smoke == RepairConfig(**{**SMOKE_CONFIG, "mu": 3.5, "limit_layers": 4, "on_nonfinite": "skip"})
    with pytest.raises(ValueError, match=r"task ablation_thresholds \(profile smoke\): repair: 'fast'; expected one "
                                         r"of official, smoke"):  # fmt: skip
        task.config("smoke", {"repair": "fast"})


def test_the_evaluations_key_chooses_the_evaluations(monkeypatch):
    import pytest

    evaluated = []

    class FakeEval:
        def __init__(self, name):
            self.name = name

        def config(self, profile):
            return {}

        def run(self, model, ctx):
            evaluated.append(self.name)
            return {"metrics": {"top1": 1.0, "top5": 2.0, "miou": 3.0, "aacc": 4.0}}

    monkeypatch.setattr(A, "get_task", FakeEval)
    monkeypatch.setattr(A._AblationTask, "_repair",
                        _fake_repair)
    shas = iter(f"{i:064d}" for i in range(100))
    monkeypatch.setattr("sinder.models.weights.state_dict_sha256", lambda state: next(shas))
    monkeypatch.setattr(A.dataclasses, "replace", lambda ctx, **kw: SimpleNamespace(**{**vars(ctx), **kw}))
    task = A.ThresholdAblation()
    config = task.config("smoke", {"evaluations": ["imagenet_knn"], "evaluation_overrides": {}})
    ctx = SimpleNamespace(profile="smoke", config=config, log=lambda msg: None, work_dir=Path("/nonexistent"))
    out = task.run(_backbone(), ctx)
    assert evaluated == ["imagenet_knn"] * 7
    assert sorted(out["metrics"]) == sorted(f"{row}/knn_{k}" for row in ("base", *task.settings) for k in ("top1", "top5"))
    assert [m.name for m in task.metrics][:5] == ["base/knn_top1", "base/knn_top5", "base/ade20k_miou",
                                                  "base/ade20k_aacc", "sigma_0/knn_top1"]  # the paper's evaluations
    with pytest.raises(ValueError, match=r"evaluations: \['imagenet_knn', 'knn'\]; expected a list of distinct names "
                                         r"among imagenet_knn, seg_ade20k_linear"):  # fmt: skip
        task.config("paper", {"evaluations": ["imagenet_knn", "knn"]})
    # the smoke profile shortens ADE20k: dropping that evaluation without its overrides is refused
    with pytest.raises(ValueError, match=r"evaluation_overrides: .*expected a mapping from evaluations in this "
                                         r"profile \(imagenet_knn\)"):  # fmt: skip
        task.config("smoke", {"evaluations": ["imagenet_knn"]})


def test_a_bad_row_stops_the_run_before_any_work(tmp_path, capsys):
    from benchmarks.cli import main

    code = main(["run", "--suite", "ablation_thresholds", "--profile", "smoke", "--out", str(tmp_path / "runs"),
                 "--cache-dir", str(tmp_path / "cache"), "--no-progress",
                 "--cfg-options", "ablation_thresholds.settings.mu_4.mu=-4"])  # fmt: skip
    assert code == 2
    assert "settings.mu_4: config field 'mu': -4.0; expected a positive number" in capsys.readouterr().err
    assert not (tmp_path / "cache" / "synth").exists()  # before any synthetic data


# ------------------------------------------------------------------------------ what each row ran, in the report
ROW_VALUES = {"base": 50.0, "sigma_0": 51.0, "sigma_3": 52.0, "sigma_5": 53.0, "mu_3.5": 54.0, "mu_4": 55.0,
              "mu_4.5": 56.0, "sv_bias": 10.0, "sv_except_qk": 40.0, "sv_except_qk_15": 45.0, "sv_except_qk_10": 46.0,
              "sv_except_qk_5": 47.0}


def _record_of_a_run(monkeypatch, task, profile, depth, label):
    """The record a run of ``task`` writes, with the evaluations faked (each row scores ROW_VALUES[row])."""
    from benchmarks.core import results as R

    class FakeEval:
        def config(self, profile):
            return {}

        def run(self, model, ctx):
            value = ROW_VALUES[ctx.work_dir.name.split("-", 1)[1]]
            return {"metrics": {"top1": value, "top5": value + 1, "miou": value + 2, "aacc": value + 3}}

    logged = []
    monkeypatch.setattr(A, "get_task", lambda name: FakeEval())
    monkeypatch.setattr(A._AblationTask, "_repair", _fake_repair)
    shas = iter(f"{i:064d}" for i in range(100))
    monkeypatch.setattr("sinder.models.weights.state_dict_sha256", lambda state: next(shas))
    monkeypatch.setattr(A.dataclasses, "replace", lambda ctx, **kw: SimpleNamespace(**{**vars(ctx), **kw}))
    ctx = SimpleNamespace(profile=profile, config=task.config(profile), log=logged.append, work_dir=Path("/x"))
    out = task.run(_backbone(depth), ctx)
    record = R.make_record(task=task.name, profile=profile, backbone={"label": label, "weights_sha256": label[0] * 64,
                                                                      "role": {"kind": "other"}},
                           metrics=out["metrics"], metric_directions=dict.fromkeys(out["metrics"], "higher"),
                           hparams=out["hparams"], config=ctx.config, seed=0, wall_time_s=1.0,
                           device={"type": "cpu"})  # fmt: skip
    return record, out, logged


def test_the_record_says_what_each_row_ran_resolved(monkeypatch):
    record, out, logged = _record_of_a_run(monkeypatch, A.ConstraintAblation(), "smoke", 8, "tiny")
    row = out["hparams"]["sv_except_qk_15"]
    # lambda 15 of the paper's 40 blocks -> round(15 * 8 / 40) = 3 of 8; the smoke base's sigma 1 (SMOKE_CONFIG)
    assert row["setting"] == {"trainable": "singular_values_except_qk", "limit_layers": 3, "sigma": 1, "mu": 4.0,
                              "blocks": 8}  # fmt: skip
    assert row["paper_setting"] == {"trainable": "singular_values_except_qk", "limit_layers": 15, "sigma": 3,
                                    "mu": 4.0, "blocks": 40}  # fmt: skip
    assert out["hparams"]["sv_bias"]["setting"]["limit_layers"] is None
    line = next(msg for msg in logged if "sv_except_qk_15" in msg)
    assert "'limit_layers': 3" in line and "15" not in line.replace("sv_except_qk_15", "")  # the console says what ran
    assert A.ConstraintAblation.version == A.ThresholdAblation.version == "2"
    with pytest.raises(ValueError, match=r"settings.base: the name of the unrepaired backbone's row"):
        A.check_profile({**A.ThresholdAblation().config("paper"), "settings": {"base": {"mu": 4}}}, "p")


def test_table_rows_and_captions_are_labelled_from_the_records(monkeypatch, tmp_path):
    from benchmarks.core import results as R
    from benchmarks.core.report import build_report

    store = R.ResultStore(tmp_path / "runs")
    smoke, _, _ = _record_of_a_run(monkeypatch, A.ThresholdAblation(), "smoke", 8, "tiny")
    store.write(smoke)
    text = build_report(tmp_path / "runs", tables="7", plots=False)
    lines = text.splitlines()
    # the smoke mu = 4 row ran at sigma 1 with lambda 4 of 8 (SMOKE_CONFIG): its label says so, the paper's beside
    mu4 = next(line for line in lines if "(paper: Mask threshold mu = 4)" in line)
    assert mu4.startswith("| Singular Value except QK in 4 of 8 Layers; sigma = 1; mu = 4 (paper: Mask threshold mu "
                          "= 4) | ours: tiny (n=1) | smoke | 55.00 | 56.00 | 57.00 | 58.00 |")  # fmt: skip
    assert "delta (ours - paper)" not in lines[lines.index(mu4) + 1]  # another setting: no delta to the paper
    sigma0 = next(line for line in lines if "(paper: Skip less than sigma = 0)" in line)
    assert sigma0.startswith("| Singular Value except QK in 4 of 8 Layers; sigma = 0; mu = 4 (paper:")
    # the caption of what ran, from the record: sigma is 1 in every row but the sigma rows
    assert ("- ours, tiny (smoke, 8 blocks): trained = Singular Value except QK; lambda = 4 blocks; sigma = 1 unless "
            "the row sets 0, 3, 5; mu = 4 unless the row sets 3.5, 4.5") in lines  # fmt: skip
    assert any(line.startswith("Paper: Rows are repair settings") and "in the paper, sigma = 3 and mu = 4" in line
               for line in lines)  # fmt: skip
    # the base row: the paper's DINOv2 (Table 3 KNN, Table 4 ADE20k linear) and ours, the same run's base row
    assert "| DINOv2, unrepaired (Tables 3 and 4) | paper | paper | 83.53 | 94.01 | 48.83 | 81.46 |" in lines
    assert any(line.startswith("| unrepaired backbone (8 blocks) (paper: DINOv2, unrepaired (Tables 3 and 4)) | "
                               "ours: tiny (n=1) | smoke | 50.00 | 51.00 | 52.00 | 53.00 |") for line in lines)
    # each row's effect over the base: the paper's (Table 7 minus Tables 3-4) and ours (row minus base row)
    assert "| Mask threshold mu = 4 - base | paper | paper | -0.02 | +0.14 | +2.28 | +1.24 |" in lines
    assert any(line.startswith("| Singular Value except QK in 4 of 8 Layers; sigma = 1; mu = 4 (paper: Mask threshold "
                               "mu = 4) - base | ours: tiny | smoke | +5.00 | +5.00 | +5.00 | +5.00 |")
               for line in lines)  # fmt: skip

    # The paper's setting on ViT-g (40 blocks): the paper's label, and a delta to the paper.
    paper, _, _ = _record_of_a_run(monkeypatch, A.ConstraintAblation(), "paper", 40, "vitg")
    store.write(paper)
    lines = build_report(tmp_path / "runs", tables="6", plots=False).splitlines()
    row15 = next(line for line in lines if line.startswith("| Singular Value except QK in 15 Layers | ours: vitg"))
    assert "| 45.00 | 46.00 | 47.00 | 48.00 |" in row15
    assert lines[lines.index(row15) + 1].startswith("| Singular Value except QK in 15 Layers | delta (ours - paper) "
                                                    "| paper | -37.81 |")  # 45.00 - 82.81
    assert ("- ours, vitg (paper, 40 blocks): trained = Singular Value except QK unless the row sets Singular Value "
            "and Bias; lambda = all blocks unless the row sets 5, 10, 15; sigma = 3; mu = 4") in lines  # fmt: skip
