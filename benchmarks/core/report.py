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


def deviation_notes(table: dict, records: list[dict]) -> list[str]:
    """One line per (backbone, task, profile) of this table's tasks whose records list deviations from the
    reference code (the record's ``deviations``), with the autocast dtype the runs computed in."""
    tasks = {col["task"] for col in table["columns"]}
    found: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    for rec in records:
        if rec["task"] in tasks and rec.get("deviations"):
            found[(rec["backbone"]["label"], rec["task"], rec["profile"])].update(rec["deviations"])
    return [f"- {label} / {task} ({profile}): " + "; ".join(sorted(devs))
            for (label, task, profile), devs in sorted(found.items())]  # fmt: skip


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
    """Grouped bars: one group per column, one bar per paper row and per run of ours (PNG, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = []
    for key in zip(frame["row"], frame["source"], frame["backbone"], frame["protocol"]):
        if key not in series:
            series.append(key)
    columns = table["columns"]
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(columns) * max(1, len(series)) ** 0.5), 5), dpi=100)
    # Our bars take the colour of the paper row they stand for, hatched, right after it.
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colours = {name: palette[i % len(palette)] for i, name in enumerate(dict.fromkeys(frame["row"]))}
    for i, (row_name, source, label, protocol) in enumerate(series):
        part = frame[(frame["row"] == row_name) & (frame["source"] == source) & (frame["backbone"] == label)
                     & (frame["protocol"] == protocol)]  # fmt: skip
        by_key = {r.column_key: (r.paper if source == "paper" else r.value) for r in part.itertuples()}
        values = [by_key.get(c["key"], math.nan) for c in columns]
        name = f"{row_name} (paper)" if source == "paper" else f"ours: {label} [{protocol}]"
        ax.bar([j + i * width for j in range(len(columns))], values, width, label=name, color=colours[row_name],
               hatch=None if source == "paper" else "//", edgecolor="white" if source == "paper" else "black")  # fmt: skip
    ax.set_xticks([j + width * (len(series) - 1) / 2 for j in range(len(columns))])
    ax.set_xticklabels([c["label"] for c in columns], rotation=30, ha="right", fontsize=8)
    ax.set_title(f"Table {table['table']}: {table['title']}", fontsize=9)
    ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.3), frameon=False)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


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
            notes = deviation_notes(table, records)
            if notes:
                text += "\nDeviations from the reference code in the runs shown:\n\n" + "\n".join(notes) + "\n"
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
