"""Every chart a smoke report writes keeps its text readable: no text box leaves the canvas or overlaps another
(matplotlib's drawn text extents; a rotated label is its rotated rectangle)."""

import pytest
from matplotlib.figure import Figure

from benchmarks.core import results as R
from benchmarks.core.remedies_report import COLUMNS as REMEDY_COLUMNS
from benchmarks.core.remedies_report import COSTS
from benchmarks.core.report import build_report, load_paper_tables
from sinder.models.roles import Role
from sinder.plots.layout import text_problems

BASE = "dinov2_tiny_defective"
SHA = {BASE: "a" * 64, "dinov2_tiny_defective_sinder": "b" * 64, "dinov2_tiny_defective_ttr": "c" * 64,
       "dinov2_tiny_defective_clamp": "d" * 64}  # fmt: skip


def _role(label):
    if label == BASE:
        return Role.constructed(BASE).as_dict()
    remedy = label.rsplit("_", 1)[1]
    kind = "repair" if remedy == "sinder" else "remedy"
    return Role.remedied(kind, remedy, {"x": 1}, SHA[BASE]).as_dict()


def _smoke_records(root, with_census=True):
    """What the main job records: every table's tasks on the tiny model, its repair and two more remedies."""
    store = R.ResultStore(root)
    metrics: dict[str, dict[str, float]] = {}
    for table in load_paper_tables().values():
        for col in table["columns"]:
            for row in table["rows"] if "{row}" in col["metric"] else [None]:
                name = col["metric"].replace("{row}", row["key"]) if row else col["metric"]
                metrics.setdefault(col["task"], {})[name] = 40.0 + len(name)
    if with_census:
        for col in REMEDY_COLUMNS + COSTS:
            metrics.setdefault(col["task"], {})[col["metric"]] = 3.0
    for i, label in enumerate(SHA):
        for task, values in metrics.items():
            if task.startswith("ablation_") and label != BASE:
                continue
            store.write(R.make_record(
                task=task, profile="smoke", metrics={k: v + i for k, v in values.items()},
                metric_directions=dict.fromkeys(values, "higher"), hparams={}, config={}, seed=0, wall_time_s=1.0,
                device={"type": "cpu"}, backbone={"label": label, "weights_sha256": SHA[label], "role": _role(label)},
            ))  # fmt: skip
    return root


@pytest.fixture
def checked(monkeypatch):
    """Figure.savefig also lists the text problems of each figure it writes, by file name."""
    found: dict[str, list[str]] = {}
    save = Figure.savefig

    def savefig(self, fname, *args, **kwargs):
        name = getattr(fname, "name", str(fname)).rsplit("/", 1)[-1]
        found[name.lstrip(".").split(".png.tmp")[0] + ".png"] = text_problems(self)  # atomic writes: temp names
        return save(self, fname, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return found


def test_every_chart_of_a_smoke_report_keeps_its_text_inside_and_apart(tmp_path, checked):
    build_report(_smoke_records(tmp_path / "runs"), tables="1-7", out_dir=tmp_path / "tables")
    names = sorted(p.name for p in (tmp_path / "tables").glob("*.png"))
    assert {"table1_effects.png", "table4_effects.png", "table5_effects.png", "remedies.png"} <= set(names)
    assert sorted(checked) == names  # every chart went through the check
    assert {k: v for k, v in checked.items() if v} == {}


def test_the_analyze_figures_keep_long_titles_inside(tmp_path, checked):
    import torch

    from sinder.plots.figures import (
        plot_norm_violins,
        plot_norm_violins_per_layer,
        plot_singular_value_differences,
    )

    who = "dinov2_tiny_defective_sinder"  # analyze's titles, at the tiny model's default sizes (8 layers)
    layers = list(range(8))
    norms = [torch.rand(30) * 10 + 50 for _ in layers], [torch.rand(300) + 1 for _ in layers]
    plot_norm_violins_per_layer(layers, *norms, tmp_path / "norms_per_layer.png",
                                title=f"{who}: token norms per layer over 500 images (defective: high-norm tokens)")
    plot_norm_violins({"defective": norms[0][-1], "normal": norms[1][-1]}, tmp_path / "norms_last_layer.png",
                      title=f"{who}: layer 7 token norms")  # fmt: skip
    diffs = {name: torch.randn(8, 4).numpy() for name in ("attn.qkv", "attn.proj", "mlp.w12", "mlp.w3")}
    plot_singular_value_differences(diffs, tmp_path / "svd.png", ylabel="second - first",
                                    title=f"leading singular values: {who} minus dinov2_tiny_defective (own)")
    assert sorted(checked) == ["norms_last_layer.png", "norms_per_layer.png", "svd.png"]
    assert {k: v for k, v in checked.items() if v} == {}


def test_remedies_chart_shows_only_the_columns_that_ran(tmp_path, monkeypatch):
    panels: dict[str, list[str]] = {}
    save = Figure.savefig

    def savefig(self, fname, *args, **kwargs):
        if "remedies" in str(fname):
            panels["titles"] = [ax.get_title() for ax in self.axes if ax.axison]
            panels["suptitle"] = [self.get_suptitle()]
        return save(self, fname, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    # the main job: no defect census (not in `all`), so no census panel, and the title says so
    build_report(_smoke_records(tmp_path / "runs", with_census=False), tables="4", out_dir=tmp_path / "t")
    assert panels["titles"] == ["ImageNet KNN Top1 (up)", "ADE20k Linear mIoU (up)", "NYUd Linear 4 RMSE (down)"]
    assert "not run, so not shown: defect_census" in panels["suptitle"][0].replace("\n", " ")
    build_report(_smoke_records(tmp_path / "all"), tables="4", out_dir=tmp_path / "t2")
    assert len(panels["titles"]) == len(REMEDY_COLUMNS + COSTS)


def test_every_analyze_figure_keeps_its_text_inside_and_apart(tmp_path, checked):
    from benchmarks.cli import main

    assert main(["data", "synth", "--dataset", "imagenet", "--out", str(tmp_path / "imagenet")]) == 0
    # the repaired-file spelling gives analyze's longest titles (NAME:WEIGHTS names both)
    from sinder.models.defective import defective_tiny_state_dict
    from sinder.models.state_io import save_state_dict

    save_state_dict(defective_tiny_state_dict(0), tmp_path / "tiny_sinder.safetensors")
    assert main(["analyze", "--backbone", f"dinov2_tiny_defective:{tmp_path / 'tiny_sinder.safetensors'}",
                 "--images", str(tmp_path / "imagenet" / "val"), "--max-images", "3", "--n-samples", "1500",
                 "--compare-weights", str(tmp_path / "tiny_sinder.safetensors"), "--out", str(tmp_path / "a")]) == 0
    names = sorted(p.name for p in (tmp_path / "a").glob("*.png"))
    assert "norms_per_layer.png" in names and len(names) >= 6
    assert sorted(checked) == names
    assert {k: v for k, v in checked.items() if v} == {}
