import csv
import io
import statistics

import pytest

from benchmarks.core import results as R
from benchmarks.core.identity import Role
from benchmarks.core.report import (
    SMOKE_NOTE,
    ReportError,
    build_report,
    load_paper_tables,
    parse_tables,
    row_for_role,
)

OFFICIAL = {"kind": "official", "name": "dinov2_vitg14"}
REGISTER = {"kind": "register", "name": "dinov2_vitg14_reg"}


def _sha(label):
    return (label * 64)[:64]


def _repair(base_label):
    return {"kind": "repair", "remedy": "sinder", "base_sha256": _sha(base_label), "config": {},
            "config_sha256": "c" * 64}  # fmt: skip


def _write(store, task, label, metrics, profile="paper", directions=None, role=None, seed=0, sha=None):
    store.write(R.make_record(
        task=task, profile=profile, backbone={"label": label, "weights_sha256": sha or _sha(label),
                                              "role": role or {"kind": "other"}},
        metrics=metrics, metric_directions=directions or dict.fromkeys(metrics, "higher"), hparams={}, config={},
        seed=seed, wall_time_s=1.0, device={"type": "cpu"},
    ))  # fmt: skip


@pytest.fixture(scope="module")
def paper():
    return load_paper_tables()


def test_paper_numbers_agree_with_the_differences_stated_in_the_text(paper):
    def v(table, row, key):
        return next(r for r in paper[table]["rows"] if r["name"] == row)["values"][key]

    def close(a, b):
        return abs(a - b) < 1e-6

    d, r, s = "DINOv2", "DINOv2-Register", "DINOv2-SINDER"
    # Section 5.1: STEGO cluster mIoU +2.39 (Cityscapes), +3.25 (Potsdam); CAUSE +4.2/+4.4 and +7.1/+6.3.
    assert close(v(1, s, "cs_cluster_miou") - v(1, d, "cs_cluster_miou"), 2.39)
    assert close(v(1, s, "pd_cluster_miou") - v(1, d, "pd_cluster_miou"), 3.25)
    assert [round(v(2, s, k) - v(2, d, k), 1) for k in ("cs_miou", "cs_crf_miou", "voc_miou", "voc_crf_miou")] == [
        4.2, 4.4, 7.1, 6.3]  # fmt: skip
    # Section 5.2: vs Register, KNN top-1 -0.18 and top-5 +1.03; linear -0.81 and -0.34.
    assert [round(v(3, s, k) - v(3, r, k), 2) for k in ("knn_top1", "knn_top5", "linear_top1", "linear_top5")] == [
        -0.18, 1.03, -0.81, -0.34]  # fmt: skip
    # Section 5.3: +2.28 / +1.54 (ADE20k) and +1.58 / +0.93 (VOC) over DINOv2; +2.08 / +1.16 over Register.
    keys = ("ade_lin_miou", "ade_ms_miou", "voc_lin_miou", "voc_ms_miou")
    assert [round(v(4, s, k) - v(4, d, k), 2) for k in keys] == [2.28, 1.54, 1.58, 0.93]
    assert [round(v(4, s, k) - v(4, r, k), 2) for k in keys[:2]] == [2.08, 1.16]
    # The released setting appears three times: Table 6 (10 layers), Table 7 (sigma 3, mu 4) and Table 3 KNN.
    released = [v(6, "Singular Value except QK in 10 Layers", "knn_top1"), v(7, "Skip less than sigma = 3", "knn_top1"),
                v(7, "Mask threshold mu = 4", "knn_top1"), v(3, s, "knn_top1")]  # fmt: skip
    assert len(set(released)) == 1
    assert v(6, "Singular Value except QK in 10 Layers", "ade_miou") == v(4, s, "ade_lin_miou")
    assert sorted(paper) == [1, 2, 3, 4, 5, 6, 7]
    assert all(paper[n]["source"] for n in paper)


def test_markdown_has_paper_numbers_ours_and_deltas(tmp_path):
    store = R.ResultStore(tmp_path / "runs")
    _write(store, "imagenet_knn", "dinov2_vitg14", {"top1": 80.00, "top5": 95.00}, role=OFFICIAL)
    _write(store, "imagenet_knn", "dinov2_vitg14", {"top1": 81.00, "top5": 95.00}, role=OFFICIAL, seed=1)  # averaged
    _write(store, "imagenet_linear", "sinder_run", {"top1": 86.00, "top5": 97.00}, profile="smoke",
           role=_repair("dinov2_vitg14"))
    _write(store, "imagenet_knn", "mystery", {"top1": 1.0, "top5": 2.0})
    text = build_report(tmp_path / "runs", tables="3", out_dir=tmp_path / "tables")
    lines = text.splitlines()
    assert any(line.startswith("| DINOv2 | paper | paper | 83.53 | 94.01 | 86.53 | 97.65 |") for line in lines)
    ours = next(line for line in lines if "ours: dinov2_vitg14 (n=2)" in line)
    assert "| paper | 80.50 ± 0.71 | 95.00 ± 0.00 | - | - |" in ours  # mean ± standard deviation over the 2 seeds
    delta = lines[lines.index(ours) + 1]
    assert delta.startswith("| DINOv2 | delta (ours - paper) |") and "-3.03" in delta and "+0.99" in delta
    sinder = next(line for line in lines if "ours: sinder_run" in line)
    assert sinder.startswith("| DINOv2-SINDER |") and "| smoke |" in sinder and "86.00" in sinder
    assert "-0.29" in lines[lines.index(sinder) + 1]  # 86.00 - 86.29
    assert any(line.startswith("| (no paper row) | ours: mystery") for line in lines)
    png = (tmp_path / "tables" / "table3.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "tables" / "table3.md").read_text().startswith("### Table 3")


def test_lower_is_better_table_and_templated_ablation_rows(tmp_path):
    store = R.ResultStore(tmp_path)
    _write(store, "depth_nyu_linear1", "dinov2_vitg14", {"rmse": 0.400}, directions={"rmse": "lower"}, role=OFFICIAL)
    _write(store, "ablation_thresholds", "dinov2_vitg14", {"sigma_3/knn_top1": 83.0, "mu_4.5/ade20k_miou": 50.0})
    text = build_report(tmp_path, tables="5,7", plots=False)
    assert "Linear 1 RMSE (down)" in text and "| 0.400 |" in text and "+0.030" in text
    sigma3 = next(line for line in text.splitlines() if line.startswith("| Skip less than sigma = 3 (setting not recorded) | ours"))
    assert "83.00" in sigma3
    mu45 = next(line for line in text.splitlines() if line.startswith("| Mask threshold mu = 4.5 (setting not recorded) | ours"))
    assert "50.00" in mu45 and "83.00" not in mu45


def test_csv_and_latex(tmp_path):
    store = R.ResultStore(tmp_path)
    _write(store, "imagenet_knn", "dinov2_vitg14_reg", {"top1": 83.69, "top5": 93.0}, role=REGISTER)
    rows = list(csv.DictReader(io.StringIO(build_report(tmp_path, fmt="csv", tables="3", plots=False))))
    ours = [r for r in rows if r["source"] == "ours" and r["column_key"] == "knn_top1"]
    assert len(ours) == 1 and ours[0]["row"] == "DINOv2-Register" and float(ours[0]["delta"]) == pytest.approx(0.0)
    latex = build_report(tmp_path, fmt="latex", tables="3", plots=False)
    assert "\\begin{tabular}" in latex and "dinov2\\_vitg14\\_reg" in latex and "83.69" in latex


def test_no_records_still_shows_the_paper(tmp_path):
    text = build_report(tmp_path / "empty", tables="1", plots=False)
    assert "19.38" in text and "No run records" in text


def test_table_selection_and_matching(paper):
    assert parse_tables("1-3,6") == [1, 2, 3, 6]
    assert parse_tables("5") == [5]
    with pytest.raises(ReportError, match="--tables"):
        parse_tables("x")
    rows = paper[3]["rows"]
    assert row_for_role(OFFICIAL, rows)["name"] == "DINOv2"
    assert row_for_role(Role.release("dinov2_vitg14"), rows)["name"] == "DINOv2"
    assert row_for_role(REGISTER, rows)["name"] == "DINOv2-Register"
    assert row_for_role(Role.release("dinov2_vitg14_reg"), rows)["name"] == "DINOv2-Register"
    assert row_for_role(_repair("x"), rows)["name"] == "DINOv2-SINDER"
    assert row_for_role(Role.constructed("dinov2_tiny_defective"), rows)["name"] == "DINOv2"
    assert row_for_role(Role.remedied("repair", "clamp", {"gamma": 2.0}, "ab" * 32), rows) is None
    assert row_for_role(Role.remedied("remedy", "sinder", {}, "ab" * 32), rows) is None  # not a repaired file
    assert row_for_role({"kind": "other"}, rows) is None and row_for_role(None, rows) is None
    with pytest.raises(TypeError, match="never parsed"):  # a role key is a name, not something to read back
        row_for_role("official:dinov2_vitg14", rows)
    with pytest.raises(ReportError, match="no paper table"):
        build_report("nowhere", tables="9")


def test_report_verb(tmp_path, capsys):
    from benchmarks.cli import main

    store = R.ResultStore(tmp_path / "runs")
    _write(store, "imagenet_linear", "dinov2_vitg14", {"top1": 86.0, "top5": 97.0}, profile="smoke", role=OFFICIAL)
    assert main(["report", "--runs", str(tmp_path / "runs"), "--tables", "3", "--out", str(tmp_path / "t")]) == 0
    out = capsys.readouterr().out
    assert "86.53" in out and "86.00" in out and "-0.53" in out
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["table3.md", "table3.png", "table3_effects.png"]
    (tmp_path / "runs" / "bad.json").write_text("{}")
    assert main(["report", "--runs", str(tmp_path / "runs"), "--tables", "3", "--no-plots"]) == 2
    assert "bad.json" in capsys.readouterr().err


def test_rows_follow_the_role_not_the_label(tmp_path):
    store = R.ResultStore(tmp_path / "runs")
    knn = {"top1": 80.0, "top5": 90.0}
    _write(store, "imagenet_knn", "dinov2", knn, role=OFFICIAL, profile="smoke")  # the README's label
    _write(store, "imagenet_knn", "register", knn, role=REGISTER, profile="smoke")
    _write(store, "imagenet_knn", "candidate", {"top1": 82.5, "top5": 89.0}, role=_repair("dinov2"), profile="smoke")
    _write(store, "imagenet_knn", "my_sinder_lookalike", knn, profile="smoke")  # a label is not a role
    text = build_report(tmp_path / "runs", tables="3", out_dir=tmp_path / "t")
    lines = text.splitlines()
    row_of = {line.split(" | ")[1].split(" (n=")[0]: line.split(" | ")[0] for line in lines if "| ours: " in line}
    assert row_of == {"ours: dinov2": "| DINOv2", "ours: register": "| DINOv2-Register",
                      "ours: candidate": "| DINOv2-SINDER", "ours: my_sinder_lookalike": "| (no paper row)"}
    assert SMOKE_NOTE in text
    # The remedy-over-base view: the paper's SINDER - DINOv2 (83.51 - 83.53) and ours (82.5 - 80.0, 89.0 - 90.0).
    paper_effect = next(line for line in lines if line.startswith("| DINOv2-SINDER - DINOv2 | paper |"))
    assert "| -0.02 | +0.14 | -0.24 | -0.04 |" in paper_effect  # 86.29 - 86.53 linear top-1
    ours_effect = next(line for line in lines if line.startswith("| candidate - dinov2 | ours (sinder) | smoke |"))
    assert "| +2.50 | -1.00 | - | - |" in ours_effect
    assert (tmp_path / "t" / "table3_effects.png").read_bytes()[:4] == b"\x89PNG"


def test_rows_come_from_the_typed_role_not_the_label_or_the_key_text(tmp_path):
    from benchmarks.core.identity import RunIdentity

    store = R.ResultStore(tmp_path / "runs")
    repaired = _repair("dinov2_vitg14")
    rec = R.make_record(
        task="imagenet_knn", profile="paper", metrics={"top1": 83.0, "top5": 94.0},
        backbone={"label": "dinov2_vitg14_reg", "weights_sha256": _sha("s"), "role": repaired},
        metric_directions={}, hparams={}, config={}, seed=0, wall_time_s=1.0, device={"type": "cpu"},
        identity=RunIdentity.of(backbone_sha256=_sha("s"), role=repaired, task="imagenet_knn", task_version="1",
                                config={}, seed=0, profile="paper"),
    )  # fmt: skip
    rec["identity"]["role"] = "register:dinov2_vitg14_reg"  # the key text is a name: the row reads the role's fields
    store.write(rec)
    _write(store, "imagenet_knn", "DINOv2-SINDER", {"top1": 1.0, "top5": 2.0}, role=OFFICIAL)  # label != role
    _write(store, "imagenet_knn", "ttr_of_g", {"top1": 3.0, "top5": 4.0},
           role={**repaired, "kind": "remedy", "remedy": "ttr"})  # fmt: skip
    text = build_report(tmp_path / "runs", tables="3", plots=False)
    row_of = {line.split(" | ")[1].split(" (n=")[0]: line.split(" | ")[0] for line in text.splitlines()
              if "| ours: " in line}  # fmt: skip
    assert row_of == {"ours: dinov2_vitg14_reg": "| DINOv2-SINDER", "ours: DINOv2-SINDER": "| DINOv2",
                      "ours: ttr_of_g": "| (no paper row: ttr)"}  # fmt: skip


def test_column_directions_are_the_tasks(tmp_path, paper):
    from benchmarks.core.registry import get_task

    for number, table in paper.items():
        for col in table["columns"]:
            task = get_task(col["task"])
            assert task.table == f"table{number}"  # each column's task fills this table
            metric = task.metric(col["metric"].replace("{row}", table["rows"][0]["key"]))
            assert col["higher_is_better"] is metric.higher_is_better, (number, col["key"])
    assert [c["higher_is_better"] for c in paper[5]["columns"]] == [False, False, False]  # RMSE
    text = build_report(tmp_path / "none", tables="5", plots=False)
    assert "| Linear 1 RMSE (down) | Linear 4 RMSE (down) | DPT RMSE (down) |" in text

    def table_file(columns):
        folder = tmp_path / f"paper{len(list(tmp_path.iterdir()))}"
        folder.mkdir()
        (folder / "table3.yaml").write_text(
            "table: 3\ntitle: t\nsource: s\ncolumns:\n" + "".join(f"  - {c}\n" for c in columns)
            + "rows:\n  - {name: DINOv2, role: dinov2, values: {a: 1.0}}\n")  # fmt: skip
        return folder

    stated = table_file(["{key: a, task: imagenet_knn, metric: top1, higher_is_better: false}"])
    with pytest.raises(ReportError, match="declared once, on task imagenet_knn"):
        load_paper_tables(stated)
    other_table = table_file(["{key: a, task: depth_nyu_dpt, metric: rmse}"])
    with pytest.raises(ReportError, match="depth_nyu_dpt, which fills table5, not table3"):
        load_paper_tables(other_table)
    unknown = table_file(["{key: a, label: A, task: no_such_task, metric: x}"])
    assert load_paper_tables(unknown)[3]["columns"][0]["higher_is_better"] is None  # not registered: no direction
    assert "| Backbone | Source | Protocol | A |" in build_report(tmp_path / "none", tables="3", plots=False,
                                                                 paper_dir=unknown)  # fmt: skip


def test_remedies_table_directions_are_the_tasks():
    from benchmarks.core import remedies_report as RR
    from benchmarks.core.registry import get_task

    assert all("higher_is_better" not in c for c in RR.COLUMNS + RR.COSTS)
    for col in RR.COLUMNS:
        assert RR.higher_is_better(col) is get_task(col["task"]).metric(col["metric"]).higher_is_better
    assert [RR.higher_is_better(c) for c in RR.COLUMNS] == [False, False, True, True, False]
    assert [RR.higher_is_better(c) for c in RR.COSTS] == [None, None]  # costs: no arrow


def test_paper_numbers_ship_inside_the_package():
    from pathlib import Path

    import benchmarks
    from benchmarks.core import report

    package = Path(benchmarks.__file__).resolve().parent
    assert report.PAPER_DIR.is_relative_to(package)  # package data ("**/*.yaml"), not the source tree's results/
    assert sorted(p.name for p in report.PAPER_DIR.glob("table*.yaml")) == [f"table{n}.yaml" for n in range(1, 8)]


def test_charts_are_screen_sized_with_one_legend_entry_per_role(tmp_path, paper):
    from PIL import Image

    from benchmarks.core.report import aggregate, chart_series, table_frame

    store = R.ResultStore(tmp_path / "runs")
    for label in ("dinov2_tiny_defective", "dinov2_tiny_defective_sinder"):
        metrics = {c["metric"]: 40.0 for c in paper[2]["columns"] if c["task"] == "cause_voc"}
        _write(store, "cause_voc", label, metrics, profile="smoke")
    ablation = {c["metric"].replace("{row}", r["key"]): 50.0 for c in paper[6]["columns"] for r in paper[6]["rows"]}
    _write(store, "ablation_constraints", "dinov2_tiny_defective", ablation, profile="smoke")
    build_report(tmp_path / "runs", tables="2,6", out_dir=tmp_path / "t")
    for number in (2, 6):
        width, height = Image.open(tmp_path / "t" / f"table{number}.png").size
        assert width <= 1400 and height <= 1000, (number, width, height)
    records = R.load_records(tmp_path / "runs")
    rows, series, roles = chart_series(table_frame(paper[6], aggregate(records)))
    assert roles == ["paper", "ours (smoke protocol)"]  # not one entry per setting
    assert len(rows) == 6 and all(len(bars) == 2 for bars in series.values())  # the unrepaired base and 5 settings


def test_a_task_joins_its_tables_suite_by_declaring_the_table(monkeypatch):
    # Task.table is the one declaration: a new task that fills Table 4 is in the table4 suite (and so in `all`)
    # without any suite file naming it, after the tasks the paper's columns order.
    from benchmarks.core import registry

    monkeypatch.setattr(registry, "_TASKS", dict(registry._TASKS))
    before = registry.get_suite("table4").tasks
    assert before == ("seg_ade20k_linear", "seg_ade20k_multiscale", "seg_voc_linear", "seg_voc_multiscale")

    @registry.register_task
    class Extra(registry.Task):
        name = "aa_extra_segmentation"  # sorts first by name: the paper's column order must still win
        table = "table4"

    assert registry.get_suite("table4").tasks == (*before, "aa_extra_segmentation")
    assert "aa_extra_segmentation" in registry.get_suite("all").tasks
    # the paper's column order, not the alphabet: Table 5 lists the linear heads before DPT
    assert registry.get_suite("table5").tasks == ("depth_nyu_linear1", "depth_nyu_linear4", "depth_nyu_dpt")


def test_rows_say_the_family_and_that_a_model_is_constructed(tmp_path):
    """Records that carry ``backbone.family`` label their rows with it (the paper's DINOv2 left implicit) and say
    when the model is constructed: a stand-in, or a remedy whose base is one; older records keep their label."""
    from benchmarks.core.remedies_report import remedies_frame
    from benchmarks.core.report import aggregate, table_frame

    store = R.ResultStore(tmp_path)
    knn = {"top1": 1.0, "top5": 2.0}

    def write(label, role, family, sha=None):
        store.write(R.make_record(
            task="imagenet_knn", profile="smoke", metrics=knn, metric_directions=dict.fromkeys(knn, "higher"),
            hparams={}, config={}, seed=0, wall_time_s=1.0, device={"type": "cpu"},
            backbone={"label": label, "weights_sha256": sha or _sha(label), "role": role,
                      **({"family": family} if family else {})},
        ))  # fmt: skip

    clip = "clip_tiny_defective"
    write(clip, Role.constructed(clip).as_dict(), "clip")
    write(f"{clip}_sinder", _repair(clip), "clip")
    write(f"{clip}+clamp", Role.remedied("remedy", "clamp", {"gamma": 1}, _sha(clip)).as_dict(), "clip")
    write("dinov2_tiny_defective", Role.constructed("dinov2_tiny_defective").as_dict(), "dinov2")
    write("vitg", OFFICIAL, "dinov2")
    write("siglip_folder", {"kind": "other"}, "siglip")
    write("old", {"kind": "other"}, None)
    labels = {v["label"] for v in aggregate(store.records()).values()}
    assert labels == {f"{clip} (clip, constructed)", f"{clip}_sinder (clip, constructed)",
                      f"{clip}+clamp (clip, constructed)", "dinov2_tiny_defective (constructed)", "vitg",
                      "siglip_folder (siglip)", "old"}  # fmt: skip

    agg = aggregate(store.records())
    table = next(t for t in load_paper_tables().values() if any(c["task"] == "imagenet_knn" for c in t["columns"]))
    frame = table_frame(table, agg)
    ours = frame[frame["source"] == "ours"]
    rows = dict(zip(ours["backbone"], ours["row"]))
    assert rows[f"{clip} (clip, constructed)"] == "(no paper row)"  # a CLIP stand-in is no DINOv2 row
    remedies = remedies_frame(agg)
    bases = dict(zip(remedies["backbone"], remedies["base"]))
    assert bases[f"{clip}+clamp (clip, constructed)"] == f"{clip} (clip, constructed)"


def test_a_constructed_register_release_is_its_base_s_register_row_with_the_spread_over_seeds(tmp_path):
    """``dinov2_tiny_standin_reg`` (role constructed) sits under ``dinov2_tiny_standin`` as its "registers" row,
    and with three seeds each value shows mean ± sample standard deviation (2.0 over 40, 42, 44)."""
    from benchmarks.core.remedies_report import remedies_frame, render_markdown
    from benchmarks.core.report import aggregate

    store = R.ResultStore(tmp_path)
    for seed, (base, reg) in enumerate([(40.0, 41.0), (42.0, 44.0), (44.0, 47.0)]):
        for label, value in (("dinov2_tiny_standin", base), ("dinov2_tiny_standin_reg", reg)):
            _write(store, "seg_ade20k_linear", label, {"miou": value}, profile="smoke", seed=seed,
                   role={"kind": "constructed", "name": label})  # fmt: skip
    frame = remedies_frame(aggregate(store.records()))
    reg = frame[(frame["backbone"] == "dinov2_tiny_standin_reg") & (frame["column_key"] == "ade_lin_miou")].iloc[0]
    assert (reg["remedy"], reg["base"], bool(reg["has_base"])) == ("registers", "dinov2_tiny_standin", True)
    assert reg["delta"] == pytest.approx(2.0) and reg["spread"] == pytest.approx(3.0) and reg["seeds"] == 3
    text = render_markdown(frame)
    assert "| dinov2_tiny_standin | base | smoke | - | - | - | 42 ± 2 |" in text
    assert "  dinov2_tiny_standin_reg (of dinov2_tiny_standin) | registers |" in text
    # the difference is paired by seed: 1, 2, 3 -> +2 ± 1, while each value alone spreads by 2 and 3
    assert reg["delta_spread"] == pytest.approx(1.0)
    assert "| 44 ± 3 (+2 ± 1) |" in text


def test_an_effect_is_paired_by_seed_and_shows_its_own_spread(tmp_path, paper):
    """A remedy's effect over its base in a paper table's effect view: per seed, remedy minus base on that seed's
    data; the mean and sample standard deviation of those differences (computed here independently), over the
    seeds both ran (a seed only the base ran is left out), not the difference of two spreads."""
    from benchmarks.core.report import _decimals, aggregate, effect_rows, effects_frame

    store = R.ResultStore(tmp_path)
    base_runs = {0: 30.0, 1: 45.0, 2: 38.0, 3: 50.0}  # seed 3: the base only
    remedy_runs = {0: 31.0, 1: 45.5, 2: 39.5}
    for seed, miou in base_runs.items():
        _write(store, "seg_ade20k_linear", "tiny", {"miou": miou}, profile="smoke", seed=seed,
               role={"kind": "constructed", "name": "tiny"})  # fmt: skip
    for seed, miou in remedy_runs.items():
        _write(store, "seg_ade20k_linear", "tiny_sinder", {"miou": miou}, profile="smoke", seed=seed,
               role=_repair("tiny"))  # fmt: skip
    table = next(t for t in paper.values() if any(c["task"] == "seg_ade20k_linear" for c in t["columns"]))
    column = next(c for c in table["columns"] if c["task"] == "seg_ade20k_linear" and c["metric"] == "miou")
    effects = effects_frame(table, aggregate(store.records()))
    ours = effects[(effects["source"] == "ours (sinder)") & (effects["column_key"] == column["key"])].iloc[0]
    diffs = [remedy_runs[s] - base_runs[s] for s in remedy_runs]  # 1.0, 0.5, 1.5
    assert ours["value"] == pytest.approx(statistics.fmean(diffs))
    assert ours["spread"] == pytest.approx(statistics.stdev(diffs))
    decimals = _decimals(table, column["key"])
    _, body = effect_rows(table, effects)
    row = next(r for r in body if r[1] == "ours (sinder)")
    assert f"+{statistics.fmean(diffs):.{decimals}f} ± {statistics.stdev(diffs):.{decimals}f}" in row


def test_paper_tables_show_the_spread_over_seeds_beside_the_mean(tmp_path, paper):
    """Table 4 with three seeds of one backbone: each cell is mean ± sample standard deviation over the seeds,
    computed here independently; a backbone with one seed shows the plain value."""
    from benchmarks.core.report import _decimals, aggregate, render_markdown, table_frame

    store = R.ResultStore(tmp_path)
    seeds = [40.0, 43.0, 49.0]
    for seed, miou in enumerate(seeds):
        _write(store, "seg_ade20k_linear", "many", {"miou": miou}, profile="smoke", seed=seed)
    _write(store, "seg_ade20k_linear", "once", {"miou": 41.0}, profile="smoke")
    table = next(t for t in paper.values() if any(c["task"] == "seg_ade20k_linear" for c in t["columns"]))
    column = next(c for c in table["columns"] if c["task"] == "seg_ade20k_linear" and c["metric"] == "miou")
    decimals = _decimals(table, column["key"])  # the paper's own precision for the column
    text = render_markdown(table, table_frame(table, aggregate(store.records())))
    mean, sd = statistics.fmean(seeds), statistics.stdev(seeds)  # 44 ± 4.58
    many = next(line for line in text.splitlines() if "ours: many" in line)
    once = next(line for line in text.splitlines() if "ours: once" in line)
    assert f"{mean:.{decimals}f} ± {sd:.{decimals}f}" in many
    assert f"{41.0:.{decimals}f}" in once and "±" not in once


def test_the_remedies_chart_writes_each_remedys_paired_effect_in_its_bar(tmp_path, monkeypatch):
    """remedies.png: beside absolute bars an effect of 0.8 on 37 is invisible, so each remedy's bar carries its
    effect over its base, paired by seed (mean ± sd computed here independently); the base's bar carries none."""
    from matplotlib.figure import Figure

    from benchmarks.core.remedies_report import plot_remedies, remedies_frame
    from benchmarks.core.report import aggregate

    store = R.ResultStore(tmp_path / "runs")
    base_runs, remedy_runs = (30.0, 45.0, 38.0), (31.0, 45.5, 39.5)
    for seed, (b, r) in enumerate(zip(base_runs, remedy_runs)):
        _write(store, "seg_ade20k_linear", "tiny", {"miou": b}, profile="smoke", seed=seed,
               role={"kind": "constructed", "name": "tiny"})  # fmt: skip
        _write(store, "seg_ade20k_linear", "tiny_sinder", {"miou": r}, profile="smoke", seed=seed,
               role=_repair("tiny"))  # fmt: skip
    texts: list[str] = []
    save = Figure.savefig

    def savefig(self, fname, *args, **kwargs):
        texts.extend(t.get_text() for ax in self.axes for t in ax.texts)
        return save(self, fname, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    assert plot_remedies(remedies_frame(aggregate(store.records())), tmp_path / "remedies.png").is_file()
    diffs = [r - b for r, b in zip(remedy_runs, base_runs)]
    assert texts == [f"{statistics.fmean(diffs):+.3g} ± {statistics.stdev(diffs):.2g}"]
