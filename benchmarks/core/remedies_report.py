"""The remedies table: each remedy beside its base on the defect census and the trade-off tasks, with its cost.

Rows are grouped by base backbone: the base (an official release, a constructed model, any checkpoint), then
every remedy whose role names that base (a repair or test-time registers by ``base_sha256``; a register release
by the official release of the same architecture), each value with its difference from the base. The cost
columns come from the census records: tokens added at inference and seconds to make the remedy from its base.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from sinder.utils.atomic import atomic_path

from .identity import BackboneIdentity, Role
from .results import task_direction

# Each metric's direction is its task's (``Metric.higher_is_better``): see :func:`higher_is_better`.
COLUMNS = (
    {"key": "high_norm_last", "label": "High-norm tokens, last block", "task": "defect_census",
     "metric": "high_norm_last"},
    {"key": "defects_total", "label": "Eq. 5 defects, all blocks", "task": "defect_census",
     "metric": "defects_total"},
    {"key": "knn_top1", "label": "ImageNet KNN Top1", "task": "imagenet_knn", "metric": "top1"},
    {"key": "ade_lin_miou", "label": "ADE20k Linear mIoU", "task": "seg_ade20k_linear", "metric": "miou"},
    {"key": "nyu_lin4_rmse", "label": "NYUd Linear 4 RMSE", "task": "depth_nyu_linear4", "metric": "rmse"},
)  # fmt: skip
COSTS = (
    {"key": "extra_tokens", "label": "Extra inference tokens", "task": "defect_census", "metric": "extra_tokens"},
    {"key": "setup_s", "label": "Setup time (s)", "task": "defect_census", "metric": "setup_s"},
)


def higher_is_better(col: dict[str, Any]) -> bool | None:
    """A column's direction as its task declares it; None for a cost column or a task not registered here."""
    if col in COSTS:
        return None
    direction = task_direction(col["task"], col["metric"])
    return None if direction is None else direction == "higher"


def remedy_of(role: Role | dict[str, Any] | None) -> str:
    role = Role.from_dict(role)
    if role.is_remedied:
        return role.remedy or role.kind
    return "registers" if role.kind == "register" or role.official_release is not None else "base"


def _base_of(backbone: BackboneIdentity, candidates: list[BackboneIdentity]) -> BackboneIdentity | None:
    """The base a backbone's role names: a remedy's by content hash, a register release's official release."""
    role = backbone.role
    if role.is_remedied:
        return next((b for b in candidates if b.sha256 == role.base_sha256 and b != backbone
                     and not b.role.is_remedied), None)  # fmt: skip
    if role.official_release is not None:
        return next((b for b in candidates if b.role == role.official_release), None)
    return None


def paired_effect(agg, backbone, base, profile, col, row_key: str | None = None,
                  base_row: str | None = None) -> tuple[float, float]:
    """(mean, standard deviation) over seeds of ``backbone`` minus ``base`` in one column of an aggregate
    (``benchmarks.core.report.aggregate``), paired by seed: each seed's difference on the same seed's data, over
    the seeds both ran. The spread is NaN for fewer than two common seeds; without common seeds the mean is the
    difference of the two means."""

    def field_of(b, key, field, empty):
        entry = agg.get((b, col["task"], profile))
        metric = col["metric"].replace("{row}", str(key)) if key is not None else col["metric"]
        return (entry.get(field) or {}).get(metric, empty) if entry else empty

    mine, theirs = field_of(backbone, row_key, "per_seed", {}), field_of(base, base_row, "per_seed", {})
    common = sorted(set(mine) & set(theirs))
    if not common:
        return field_of(backbone, row_key, "metrics", math.nan) - field_of(base, base_row, "metrics", math.nan), math.nan
    diffs = [mine[s] - theirs[s] for s in common]
    return statistics.fmean(diffs), (statistics.stdev(diffs) if len(diffs) > 1 else math.nan)


def remedies_frame(agg: dict):
    """Long format: one line per (backbone, column) with value, its base's value and the difference (paired by
    seed, with its spread)."""
    import pandas as pd


    tasks = {c["task"] for c in COLUMNS + COSTS}
    directions = {c["key"]: higher_is_better(c) for c in COLUMNS + COSTS}
    lines = []
    for profile in sorted({p for (_, t, p) in agg if t in tasks}):
        backbones = sorted({b for (b, t, p) in agg if p == profile and t in tasks}, key=str)
        info = {b: next(v for (bb, t, p), v in agg.items() if bb == b and p == profile) for b in backbones}
        base = {b: _base_of(b, backbones) for b in backbones}
        roots = [b for b in backbones if base[b] is None]
        order = []
        for root in sorted(roots, key=lambda b: info[b]["label"]):
            order.append(root)
            order += sorted((b for b in backbones if base[b] == root), key=lambda b: (remedy_of(b.role),
                                                                                      info[b]["label"]))  # fmt: skip

        def value(b, col, profile=profile):
            entry = agg.get((b, col["task"], profile))
            return entry["metrics"].get(col["metric"], math.nan) if entry else math.nan

        def spread(b, col, profile=profile):
            entry = agg.get((b, col["task"], profile))
            return (entry.get("spread") or {}).get(col["metric"], math.nan) if entry else math.nan

        def seeds(b, col, profile=profile):
            entry = agg.get((b, col["task"], profile))
            return entry["n"] if entry else 0

        def effect(b, parent, col, profile=profile):
            if parent is None:
                return math.nan, math.nan
            return paired_effect(agg, b, parent, profile, col)

        for b in order:
            parent = base[b]
            for col in COLUMNS + COSTS:
                v = value(b, col)
                ref = value(parent, col) if parent is not None else math.nan
                delta, delta_spread = effect(b, parent, col)
                lines.append({
                    "protocol": profile, "backbone": info[b]["label"], "remedy": remedy_of(b.role),
                    "base": info[parent]["label"] if parent is not None else info[b]["label"],
                    "has_base": parent is not None, "column": col["label"], "column_key": col["key"],
                    "task": col["task"], "metric": col["metric"], "cost": col in COSTS,
                    "higher_is_better": directions[col["key"]], "value": v, "spread": spread(b, col),
                    "seeds": seeds(b, col), "base_value": ref, "delta": delta, "delta_spread": delta_spread,
                })  # fmt: skip
    return pd.DataFrame(lines)


def has_remedies(frame) -> bool:
    return bool(len(frame)) and bool(frame["has_base"].any() or (frame["task"] == "defect_census").any())


def _arrow(col: dict[str, Any]) -> str:
    return {True: " (up)", False: " (down)"}.get(higher_is_better(col), "")


def _fmt(value: float, delta: float | None = None, spread: float | None = None,
         delta_spread: float | None = None) -> str:
    if value is None or math.isnan(value):
        return "-"
    text = f"{value:.4g}"
    if spread is not None and not math.isnan(spread):
        text += f" ± {spread:.2g}"  # the standard deviation over seeds, when several ran
    if delta is not None and not math.isnan(delta):
        paired = "" if delta_spread is None or math.isnan(delta_spread) else f" ± {delta_spread:.2g}"
        text += f" ({delta:+.3g}{paired})"
    return text


def rows(frame) -> tuple[list[str], list[list[str]]]:
    header = ["Backbone", "Remedy", "Protocol"] + [c["label"] + _arrow(c) for c in COLUMNS]
    header += [c["label"] for c in COSTS]
    body = []
    for key in dict.fromkeys(zip(frame["protocol"], frame["backbone"])):
        part = frame[(frame["protocol"] == key[0]) & (frame["backbone"] == key[1])]
        cells = {r.column_key: r for r in part.itertuples()}
        first = part.iloc[0]
        name = key[1] if not first["has_base"] else f"  {key[1]} (of {first['base']})"
        body.append([name, first["remedy"], key[0]] + [
            _fmt(cells[c["key"]].value, cells[c["key"]].delta if first["has_base"] else None, cells[c["key"]].spread,
                 cells[c["key"]].delta_spread if first["has_base"] else None)
            for c in COLUMNS
        ] + [_fmt(cells[c["key"]].value) for c in COSTS])  # fmt: skip
    return header, body


NOTE = ("Each remedy beside its base: its value (mean ± standard deviation over seeds where several ran) and, in "
        "parentheses, its difference from the base paired by seed (the mean ± standard deviation of each seed's "
        "remedy minus base, over the seeds both ran); cost: tokens added at "
        "inference and seconds to make the remedy from its base (a repair's training, a neuron fit, a weight "
        "transform; '-' when not recorded, e.g. a register release's pretraining).")  # fmt: skip


def render_markdown(frame) -> str:
    header, body = rows(frame)
    lines = ["### Remedies: each remedy beside its base", "", NOTE]
    if (frame["protocol"] == "smoke").any():
        lines += ["", "**Smoke profile: a tiny constructed model (trained + planted artifacts) on synthetic data; only the "
                  "effects compare.**"]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines) + "\n"


def render_latex(frame) -> str:
    import pandas as pd

    header, body = rows(frame)
    return pd.DataFrame(body, columns=header).to_latex(index=False, escape=True, caption=NOTE,
                                                       label="tab:sinder-bench-remedies")  # fmt: skip


def _label_effects(ax, part, series) -> None:
    """Each remedy's bar carries its effect over its base (paired by seed, ± its spread where several seeds ran),
    written upwards from the bar's foot: beside the absolute values an effect of 0.8 on 37 is otherwise invisible.
    Anchored in axes height, so the label stays inside the panel whatever the bar's height and the layout."""
    from matplotlib.transforms import blended_transform_factory

    effects = {(r.protocol, r.backbone): (r.delta, r.delta_spread) for r in part.itertuples() if r.has_base}
    foot = blended_transform_factory(ax.transData, ax.transAxes)
    for x, key in enumerate(series):
        delta, spread = effects.get(key, (math.nan, math.nan))
        if math.isnan(delta):
            continue
        text = f"{delta:+.3g}" + ("" if math.isnan(spread) else f" ± {spread:.2g}")
        ax.text(x, 0.04, text, rotation=90, ha="center", va="bottom", fontsize=7, transform=foot)


def plot_remedies(frame, path: str | Path) -> Path | None:
    """One panel per column (metrics and costs) that has records: a bar per backbone, each base followed by its
    remedies. A column whose task did not run (the census is not in ``--suite all``) is left out, and named under
    the title; None (nothing written) when no column has a value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sinder.plots.layout import fit_text

    ran = {key for key, value in zip(frame["column_key"], frame["value"]) if not math.isnan(value)}
    columns = [c for c in COLUMNS + COSTS if c["key"] in ran]
    left_out = sorted({c["task"] for c in COLUMNS + COSTS if c["key"] not in ran})
    if not columns:
        return None
    series = list(dict.fromkeys(zip(frame["protocol"], frame["backbone"])))
    remedies = list(dict.fromkeys(frame["remedy"]))
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colour = {r: palette[i % len(palette)] for i, r in enumerate(remedies)}
    ncols = min(4, len(columns))
    nrows = math.ceil(len(columns) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(max(6, 4 * ncols), 3.2 * nrows + 1.2), dpi=100, squeeze=False,
                             layout="constrained")  # fmt: skip
    for ax, col in zip(axes.flat, columns):
        part = frame[frame["column_key"] == col["key"]]
        values = {(r.protocol, r.backbone): (r.value, r.remedy) for r in part.itertuples()}
        heights = [values.get(s, (math.nan, ""))[0] for s in series]
        colours = [colour.get(values.get(s, (0, "base"))[1], "grey") for s in series]
        ax.bar(range(len(series)), heights, color=colours, edgecolor="black")
        _label_effects(ax, part, series)
        ax.set_title(col["label"] + _arrow(col), fontsize=9)
        ax.set_xticks(range(len(series)))
        ax.set_xticklabels([b for _, b in series], rotation=35, ha="right", fontsize=7)
    for ax in list(axes.flat)[len(columns):]:
        ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colour[r]) for r in remedies]
    fig.legend(handles, remedies, loc="outside lower center", ncol=len(remedies), fontsize=8, frameon=False)
    title = "Remedies beside their base; in each remedy's bar, its effect over the base (paired by seed)"
    if (frame["protocol"] == "smoke").any():
        title += "\nsmoke: tiny constructed model, synthetic data"
    if left_out:
        title += f"\nnot run, so not shown: {', '.join(left_out)}"
    fig.suptitle(title, fontsize=10)
    fit_text(fig)
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
