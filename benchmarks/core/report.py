"""The paper's tables with our numbers beside them: markdown, LaTeX or CSV, plus a bar chart per table.

The paper's numbers live in ``results/paper/tableN.yaml`` (with their source). Each of its columns names the
task and metric of our run records that fill it; each row names the backbone labels it stands for. Our records
are averaged per (backbone label, task, profile); the "protocol" column says whether a number came from the
paper's protocol or the smoke profile, so smoke numbers are never mistaken for reproductions.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from sinder.atomic import atomic_path, atomic_write_text

from .results import RecordError, load_records

PAPER_DIR = Path(__file__).resolve().parents[2] / "results" / "paper"
DELTA = "delta (ours - paper)"


class ReportError(ValueError):
    """Unusable input for a report (a malformed paper table or run record, a bad --tables value)."""


def parse_tables(spec: str | int | list[int]) -> list[int]:
    """``"1-7"``, ``"3"``, ``"1,3,5"`` or ``"1-3,6"`` -> sorted table numbers."""
    if isinstance(spec, int):
        return [spec]
    if isinstance(spec, list):
        return sorted(set(spec))
    out: set[int] = set()
    for part in str(spec).replace(" ", "").split(","):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            raise ReportError(f"--tables {spec!r}: expected numbers and ranges like 3, 1-7 or 1,3,5")
        lo, hi = int(match.group(1)), int(match.group(2) or match.group(1))
        if lo > hi:
            raise ReportError(f"--tables {spec!r}: range {part} is reversed")
        out.update(range(lo, hi + 1))
    return sorted(out)


def load_paper_tables(paper_dir: str | Path | None = None) -> dict[int, dict[str, Any]]:
    import yaml

    folder = Path(paper_dir) if paper_dir else PAPER_DIR
    tables = {}
    for path in sorted(folder.glob("table*.yaml")):
        data = yaml.safe_load(path.read_text())
        try:
            number = int(data["table"])
            for col in data["columns"]:
                col["key"], col["task"], col["metric"] = str(col["key"]), str(col["task"]), str(col["metric"])
                col.setdefault("label", col["key"])
                col.setdefault("higher_is_better", True)
            for row in data["rows"]:
                row.setdefault("key", row["name"])
                row.setdefault("match", [])
                row["values"] = {str(k): float(v) for k, v in row.get("values", {}).items()}
        except (KeyError, TypeError, ValueError) as err:
            raise ReportError(f"{path}: malformed paper table ({type(err).__name__}: {err})") from err
        data["_path"] = str(path)
        tables[number] = data
    if not tables:
        raise ReportError(f"no paper tables (table*.yaml) in {folder}")
    return tables


def aggregate(records: list[dict]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """Mean of each metric over the records of one (backbone label, task, profile), with the run count."""
    groups: dict[tuple[str, str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    counts: dict[tuple[str, str, str], int] = defaultdict(int)
    for rec in records:
        key = (rec["backbone"]["label"], rec["task"], rec["profile"])
        counts[key] += 1
        for name, value in rec["metrics"].items():
            groups[key][name].append(float(value))
    return {
        key: {"metrics": {m: sum(v) / len(v) for m, v in metrics.items()}, "n": counts[key]}
        for key, metrics in groups.items()
    }


def match_row(label: str, rows: list[dict]) -> dict | None:
    """The paper row a backbone label stands for: an exact name first, then the first glob in file order."""
    for row in rows:
        if label in [p for p in row["match"] if not any(c in p for c in "*?[")]:
            return row
    for row in rows:
        if any(fnmatch.fnmatchcase(label, p) for p in row["match"]):
            return row
    return None


def _templated(table: dict) -> bool:
    return any("{row}" in col["metric"] for col in table["columns"])


def table_frame(table: dict, agg: dict[tuple[str, str, str], dict[str, Any]]):
    """Long-format pandas DataFrame: one line per (paper row, source, column) with paper, ours and delta."""
    import pandas as pd

    tasks = {col["task"] for col in table["columns"]}
    ours = sorted({(label, profile) for (label, task, profile) in agg if task in tasks})
    lines = []

    def add(row, source, label, profile, n_runs, value_of):
        for col in table["columns"]:
            paper = row["values"].get(col["key"], math.nan) if row else math.nan
            value = value_of(col)
            lines.append({
                "table": table["table"], "row": row["name"] if row else "(no paper row)",
                "row_key": row["key"] if row else "", "source": source, "backbone": label, "protocol": profile,
                "n_runs": n_runs, "column": col["label"], "column_key": col["key"], "task": col["task"],
                "metric": col["metric"], "higher_is_better": bool(col["higher_is_better"]), "paper": paper,
                "value": value, "delta": value - paper if source == "ours" else math.nan,
            })  # fmt: skip

    assigned = {}
    if not _templated(table):
        assigned = {(label, profile): match_row(label, table["rows"]) for label, profile in ours}
    for row in table["rows"]:
        add(row, "paper", "", "paper", 0, lambda col, row=row: row["values"].get(col["key"], math.nan))
        for label, profile in ours:
            if not _templated(table) and assigned[(label, profile)] is not row:
                continue

            def value_of(col, label=label, profile=profile, row=row):
                entry = agg.get((label, col["task"], profile))
                metric = col["metric"].replace("{row}", str(row["key"]))
                return entry["metrics"].get(metric, math.nan) if entry else math.nan

            n_runs = max((agg[(label, t, profile)]["n"] for t in tasks if (label, t, profile) in agg), default=0)
            add(row, "ours", label, profile, n_runs, value_of)
    for (label, profile), row in assigned.items():
        if row is None:  # a backbone no paper row stands for: ours only, no delta
            n_runs = max((agg[(label, t, profile)]["n"] for t in tasks if (label, t, profile) in agg), default=0)
            add(None, "ours", label, profile, n_runs,
                lambda col, label=label, profile=profile: (agg.get((label, col["task"], profile)) or {"metrics": {}})[
                    "metrics"].get(col["metric"], math.nan))  # fmt: skip
    return pd.DataFrame(lines)


def _decimals(table: dict, key: str) -> int:
    places = [len(f"{v:g}".split(".")[1]) if "." in f"{v:g}" else 0 for r in table["rows"]
              for k, v in r["values"].items() if k == key]  # fmt: skip
    return max(places, default=2) or 2


def wide_rows(table: dict, frame) -> tuple[list[str], list[list[str]]]:
    """Header and string rows laid out as the paper: backbones down, metric columns across."""
    arrows = {True: " (up)", False: " (down)"}
    header = [table.get("row_header", "Backbone"), "Source", "Protocol"] + [
        col["label"] + arrows[bool(col["higher_is_better"])] for col in table["columns"]
    ]
    body = []
    if frame.empty:
        return header, body
    order = []
    for key in zip(frame["row"], frame["source"], frame["backbone"], frame["protocol"]):
        if key not in order:
            order.append(key)
    for row_name, source, label, protocol in order:
        part = frame[(frame["row"] == row_name) & (frame["source"] == source) & (frame["backbone"] == label)
                     & (frame["protocol"] == protocol)]  # fmt: skip
        cells = {r.column_key: r for r in part.itertuples()}
        if source == "paper":
            fmt = [_fmt(cells[c["key"]].paper, _decimals(table, c["key"])) for c in table["columns"]]
            body.append([row_name, "paper", "paper"] + fmt)
            continue
        n = int(part["n_runs"].max()) if len(part) else 0
        values = [_fmt(cells[c["key"]].value, _decimals(table, c["key"])) for c in table["columns"]]
        body.append([row_name, f"ours: {label} (n={n})", protocol] + values)
        if row_name != "(no paper row)":
            deltas = [_fmt(cells[c["key"]].delta, _decimals(table, c["key"]), sign=True) for c in table["columns"]]
            body.append([row_name, DELTA, protocol] + deltas)
    return header, body


def _fmt(value: float, decimals: int, sign: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:+.{decimals}f}" if sign else f"{value:.{decimals}f}"


def render_markdown(table: dict, frame) -> str:
    header, body = wide_rows(table, frame)
    lines = [f"### Table {table['table']}: {table['title']}", "", f"Paper source: {table['source'].rstrip('.')}."]
    if table.get("note"):
        lines += ["", table["note"]]
    if not (frame["source"] == "ours").any():
        lines += ["", "No run records of this table's tasks yet."]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines) + "\n"


def render_latex(table: dict, frame) -> str:
    import pandas as pd

    header, body = wide_rows(table, frame)
    df = pd.DataFrame(body, columns=header)
    return df.to_latex(
        index=False, escape=True, caption=f"{table['title']} Paper numbers: {table['source'].rstrip('.')}.",
        label=f"tab:sinder-bench-{table['table']}",
    )  # fmt: skip


def plot_table(table: dict, frame, path: str | Path) -> Path:
    """Small multiples (PNG, Agg backend): one panel per column, the paper's rows along x, and in each row the
    paper's bar (solid) beside ours (hatched, one per backbone and protocol). Colours stand for roles (paper, ours
    under each protocol), so the legend has one entry per role; our backbones are named under their rows."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    columns = table["columns"]
    rows, series, roles = chart_series(frame)
    palette = ["#9aa5b1", "#d95f02", "#1b9e77", "#7570b3", "#e7298a"]
    colour = {role: palette[i % len(palette)] for i, role in enumerate(roles)}
    per_row = max(len(bars) for bars in series.values()) if series else 1
    width = 0.8 / per_row
    ncols = min(4, len(columns))
    nrows = math.ceil(len(columns) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.0 * ncols, 0.6 + 2.6 * nrows + 0.2 * len(rows)), dpi=100,
                             squeeze=False)  # fmt: skip
    ours_by_row = {name: sorted({b for src, b, _ in series[name] if src == "ours"}) for name in rows}
    shared = {tuple(v) for v in ours_by_row.values() if v}
    # One backbone behind every row (the ablations: rows are settings): name it once, in the title.
    named_once = len(shared) == 1 and len(rows) > 1 and all(ours_by_row.values())
    tick_labels = []
    for name in rows:
        text = textwrap.fill(name, 24)
        if ours_by_row[name] and not named_once:
            text += "\nours: " + ", ".join(ours_by_row[name])
        tick_labels.append(text)
    for index, col in enumerate(columns):
        ax = axes[index // ncols][index % ncols]
        part = frame[frame["column_key"] == col["key"]]
        for i, name in enumerate(rows):
            for j, (source, label, protocol) in enumerate(series[name]):
                hit = part[(part["row"] == name) & (part["source"] == source) & (part["backbone"] == label)
                           & (part["protocol"] == protocol)]  # fmt: skip
                if hit.empty:
                    continue
                value = hit["paper"].iloc[0] if source == "paper" else hit["value"].iloc[0]
                role = "paper" if source == "paper" else f"ours ({protocol} protocol)"
                ax.bar(i + (j - (len(series[name]) - 1) / 2) * width, value, width, color=colour[role],
                       hatch=None if source == "paper" else "//", edgecolor="black", linewidth=0.4)  # fmt: skip
        ax.set_title(col["label"], fontsize=8)
        ax.set_ylabel(f"{_axis_unit(col)} ({'higher' if col['higher_is_better'] else 'lower'} is better)",
                      fontsize=7)  # fmt: skip
        ax.set_xticks(range(len(rows)))
        last_row = index + ncols >= len(columns)
        ax.set_xticklabels(tick_labels if last_row else [""] * len(rows), rotation=35, ha="right", fontsize=6)
        if last_row:
            ax.set_xlabel(table.get("row_header", "Backbone"), fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(axis="y", linewidth=0.3, alpha=0.6)
    for index in range(len(columns), nrows * ncols):
        axes[index // ncols][index % ncols].axis("off")
    handles = [Patch(facecolor=colour[r], edgecolor="black", hatch=None if r == "paper" else "//",
                                        label=r) for r in roles]  # fmt: skip
    title = f"Table {table['table']}: {table['title']}"
    if named_once:
        title += f"\nours: {', '.join(next(iter(shared)))}"
    fig.suptitle(title, fontsize=9, x=0.02, ha="left")
    fig.legend(handles=handles, loc="upper right", ncol=1, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - (0.2 + 0.17 * max(len(handles), title.count("\n") + 1)) / fig.get_figheight()))
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def chart_series(frame) -> tuple[list[str], dict[str, list[tuple[str, str, str]]], list[str]]:
    """(rows in order, row -> its bars as (source, backbone, protocol), the legend's roles: paper, ours per protocol)."""
    rows = list(dict.fromkeys(frame["row"]))
    series: dict[str, list[tuple[str, str, str]]] = {}
    for key in zip(frame["row"], frame["source"], frame["backbone"], frame["protocol"]):
        series.setdefault(key[0], [])
        if key[1:] not in series[key[0]]:
            series[key[0]].append(key[1:])
    roles = list(dict.fromkeys(("paper" if src == "paper" else f"ours ({proto} protocol)")
                               for bars in series.values() for src, _, proto in bars))  # fmt: skip
    return rows, series, roles


def _axis_unit(col: dict) -> str:
    """``RMSE`` for the depth columns, else ``%`` (every other metric of the paper's tables is a percentage)."""
    return "RMSE" if "rmse" in (col.get("metric", "") + col.get("label", "")).lower() else "%"


def build_report(
    runs: str | Path | list[str | Path],
    *,
    fmt: str = "md",
    tables: str | list[int] = "1-7",
    out_dir: Path | None = None,
    plots: bool = True,
    paper_dir: str | Path | None = None,
) -> str:
    """The report text in ``fmt`` (md, latex or csv); with ``out_dir`` also tableN files and PNG charts."""
    import pandas as pd

    if fmt not in ("md", "latex", "csv"):
        raise ReportError(f"unknown format {fmt!r}; use md, latex or csv")
    paper = load_paper_tables(paper_dir)
    wanted = parse_tables(tables)
    unknown = [n for n in wanted if n not in paper]
    if unknown:
        raise ReportError(f"no paper table {unknown} (known: {sorted(paper)})")
    try:
        records = load_records(runs, missing_ok=True)
    except RecordError as err:
        raise ReportError(str(err)) from err
    agg = aggregate(records)
    parts, frames = [], []
    for number in wanted:
        table = paper[number]
        frame = table_frame(table, agg)
        frames.append(frame)
        if fmt == "md":
            text = render_markdown(table, frame)
        elif fmt == "latex":
            text = render_latex(table, frame)
        else:
            text = frame.to_csv(index=False)
        parts.append(text)
        if out_dir is not None:
            suffix = {"md": "md", "latex": "tex", "csv": "csv"}[fmt]
            atomic_write_text(Path(out_dir) / f"table{number}.{suffix}", text)
            if plots:
                plot_table(table, frame, Path(out_dir) / f"table{number}.png")
    if fmt == "csv":
        return pd.concat(frames, ignore_index=True).to_csv(index=False)
    header = f"{len(records)} run record(s) from {runs}" if records else f"no run records found under {runs}"
    return (f"% {header}\n" if fmt == "latex" else f"_{header}_\n\n") + "\n".join(parts)
