"""The paper's tables with our numbers beside them: markdown, LaTeX or CSV, plus a bar chart per table.

The paper's numbers live in ``benchmarks/paper/tableN.yaml`` (shipped with the package, with their source).
Each of its columns names the task and metric of our run records that fill it; each row names the role of the
backbones it stands for (``dinov2``, ``register``, ``sinder``), matched against the role our records carry
(what the weights are), never the label. Our records are averaged per (backbone identity, task, profile) over
distinct seeds; the "protocol" column says whether a number came from the paper's protocol or the smoke
profile, and smoke tables say that their absolute numbers come from a tiny constructed model on synthetic data.

Beside each table, the view the paper argues with: the effect of each remedy over its own base, metric by
metric (ours: a repaired checkpoint minus the base its metadata names; the paper's: SINDER minus DINOv2).

Tables 6 and 7 (the ablations, whose rows are repair settings, ``{row}`` in their metrics) label each of our rows
from what its record says ran (``hparams[row]["setting"]``: trainable, lambda of the backbone's blocks, sigma,
mu; :func:`setting_label`), with the paper's label beside it where the two differ, and show the delta to the
paper only where they agree. Their first row is the unrepaired base (ours: the row ``base`` of the same run),
and their effects are each row minus that base.
"""

from __future__ import annotations

import math
import re
import statistics
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sinder.utils.atomic import atomic_path, atomic_write_text

from . import remedies_report as R
from .identity import BackboneIdentity, Role, RunIdentity
from .results import RecordError, declared_direction, is_failure, load_records

PAPER_DIR = Path(__file__).resolve().parents[1] / "paper"  # inside the package: works from any install
DELTA = "delta (ours - paper)"
# Constructed backbones that stand in for a paper row in smoke runs (by architecture name, not label); smoke
# tables say that the model is constructed (trained + planted) and that only the effects compare.
STAND_INS = {"dinov2_tiny_defective": "dinov2", "dinov2_tiny_standin": "dinov2", "dinov2_tiny_standin_reg": "register"}
SMOKE_NOTE = ("Smoke profile: our numbers come from a tiny constructed model (trained on a synthetic twin, artifacts "
              "planted by their mechanism) on synthetic data, so only the effects "
              "(a remedy minus its base), not the absolute numbers, are comparable with the paper.")


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
                col["higher_is_better"] = _column_direction(path, number, col)
            for row in data["rows"]:
                row.setdefault("key", row["name"])
                row.setdefault("role", None)
                row["values"] = {str(k): float(v) for k, v in row.get("values", {}).items()}
        except (KeyError, TypeError, ValueError) as err:
            raise ReportError(f"{path}: malformed paper table ({type(err).__name__}: {err})") from err
        data["_path"] = str(path)
        tables[number] = data
    if not tables:
        raise ReportError(f"no paper tables (table*.yaml) in {folder}")
    return tables


def _column_direction(path: Path, number: int, col: dict) -> bool | None:
    """A column's direction, from its task's declaration (``Metric.higher_is_better``), the only one: a paper
    table that states it again is malformed, and so is a column of a task that fills another table (the task's
    ``table``). None when the task is not registered here (its direction is then not shown)."""
    from .registry import get_task

    if "higher_is_better" in col:
        raise ReportError(f"{path}: column {col['key']!r} states higher_is_better: the direction is declared "
                          f"once, on task {col['task']}'s metrics; remove it")  # fmt: skip
    try:
        task = get_task(col["task"])
    except KeyError:
        return None
    if task.table and task.table != f"table{number}":
        raise ReportError(f"{path}: column {col['key']!r} names task {task.name}, which fills {task.table}, "
                          f"not table{number}")  # fmt: skip
    return declared_direction(task, col["metric"]) == "higher"


def _arrow(col: dict) -> str:
    return {True: " (up)", False: " (down)"}.get(col["higher_is_better"], "")


def paper_role(role: Role | Mapping[str, Any] | None) -> str | None:
    """The paper row a backbone role stands for: ``dinov2``, ``register``, ``sinder`` or None.

    ``role`` is a :class:`Role` (or its dict form, a record's ``backbone.role``): an official release is DINOv2,
    an official register release is DINOv2-Register, any SINDER repair is DINOv2-SINDER, whatever its label.
    """
    role = Role.from_dict(role)
    if role.kind == "official":
        return "dinov2"
    if role.kind == "register":
        return "register"
    if role.is_sinder_repair:
        return "sinder"
    if role.kind == "constructed":
        return STAND_INS.get(role.name)
    return None


def _unmatched_row(role: Role) -> str:
    """The row name of a backbone no paper row stands for; a remedy the paper did not evaluate says which."""
    return f"(no paper row: {role.remedy})" if role.is_remedied else "(no paper row)"


def row_for_role(role: Role | Mapping[str, Any] | None, rows: list[dict]) -> dict | None:
    wanted = paper_role(role)
    return next((row for row in rows if wanted is not None and row.get("role") == wanted), None)


Key = tuple[BackboneIdentity, str, str]  # (backbone, task, profile)


def model_tags(backbone: Mapping[str, Any], role: Role, constructed_sha256: set[str]) -> str:
    """What a row's label adds about the model, from a record that says its family (``backbone.family``): the
    family where it is not the paper's DINOv2, and ``constructed`` for a constructed stand-in or a remedy of one
    (its base's content hash among ``constructed_sha256``): `` (clip, constructed)``; '' for an older record."""
    family = backbone.get("family")
    if not family:
        return ""
    tags = [family] if family != "dinov2" else []
    if role.kind == "constructed" or (role.is_remedied and role.base_sha256 in constructed_sha256):
        tags.append("constructed")
    return f" ({', '.join(tags)})" if tags else ""


def aggregate(records: list[dict]) -> dict[Key, dict[str, Any]]:
    """Per (backbone identity, task, profile): the mean of each metric over distinct seeds (records of one seed,
    such as a record reused under a new label, count once), its spread (``spread``: the standard deviation over
    seeds, for metrics measured on two or more), the seed count and a display label (the role is the key's:
    ``backbone.role``)."""
    groups: dict[Key, list[dict]] = defaultdict(list)
    for rec in records:
        if is_failure(rec):
            continue
        ident = RunIdentity.from_record(rec)
        groups[(ident.backbone, rec["task"], rec["profile"])].append(rec)
    labels: dict[BackboneIdentity, list[str]] = defaultdict(list)
    for (backbone, _, _), recs in groups.items():
        for rec in sorted(recs, key=lambda r: r["created"]):
            labels[backbone].append(rec["backbone"]["label"])
    latest = {b: names[-1] for b, names in labels.items()}
    clashes = {name for name in latest.values() if list(latest.values()).count(name) > 1}
    constructed = {b.sha256 for b in labels if b.role.kind == "constructed"}
    out = {}
    for key, recs in groups.items():
        by_seed: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for rec in recs:
            for name, value in rec["metrics"].items():
                by_seed[int(rec.get("seed", 0))][name].append(float(value))
        names = {m for seed in by_seed.values() for m in seed}
        per_seed = {m: [statistics.fmean(s[m]) for s in by_seed.values() if m in s] for m in names}
        metrics = {m: statistics.fmean(v) for m, v in per_seed.items()}
        # the spread over seeds (sample standard deviation), where two or more seeds ran
        spread = {m: statistics.stdev(v) for m, v in per_seed.items() if len(v) > 1}
        label = latest[key[0]]
        newest = max(recs, key=lambda r: r["created"])
        label = f"{label} [{key[0].short}]" if label in clashes else label
        seed_values = {m: {seed: statistics.fmean(v[m]) for seed, v in by_seed.items() if m in v} for m in names}
        out[key] = {"metrics": metrics, "spread": spread, "n": len(by_seed), "per_seed": seed_values,
                    "hparams": newest.get("hparams") or {},
                    "label": label + model_tags(newest["backbone"], key[0].role, constructed)}  # fmt: skip
    return out


# ------------------------------------------------------------------------------- Tables 6-7: what each row ran
BASE_ROW = "base"  # the ablation tables' row of the unrepaired backbone (the key in table6/7.yaml, the tasks' row)
TRAINABLE_LABELS = {"singular_values_and_biases": "Singular Value and Bias",
                    "singular_values_except_qk": "Singular Value except QK", "singular_values": "Singular Value"}


def setting_label(setting: Mapping[str, Any] | None, blocks: int | None = None) -> str:
    """The label of an ablation row from its resolved setting (a record's ``hparams[row]["setting"]``), in the
    paper's words: ``Singular Value except QK in 2 of 8 Layers; sigma = 1; mu = 4``; None: the unrepaired base."""
    if setting is None:
        return f"unrepaired backbone ({blocks} blocks)" if blocks else "unrepaired backbone"
    what = TRAINABLE_LABELS.get(setting["trainable"], str(setting["trainable"]))
    lam = setting["limit_layers"]
    where = f"in all {setting['blocks']} Layers" if lam is None else f"in {lam} of {setting['blocks']} Layers"
    return f"{what} {where}; sigma = {setting['sigma']}; mu = {float(setting['mu']):g}"


def _row_run(entry: dict | None, row: dict) -> tuple[str, bool]:
    """(the label of our row ``row`` of a templated table from its record, whether it ran the paper's setting).
    A record without the row's setting (before task version 2) keeps the paper's name, marked as such."""
    ran = ((entry or {}).get("hparams") or {}).get(row["key"])
    if not isinstance(ran, Mapping) or "setting" not in ran:
        return f"{row['name']} (setting not recorded)", True
    if ran["setting"] is None:  # the base row
        return f"{setting_label(None, ran.get('blocks'))} (paper: {row['name']})", False
    ours = setting_label(ran["setting"])
    paper = ran.get("paper_setting")
    if paper is not None and setting_label(paper) == ours:
        return row["name"], True
    return f"{ours} (paper: {row['name']})", False


def ran_notes(table: dict, agg: dict[Key, dict[str, Any]]) -> list[str]:
    """For a templated table (Tables 6-7): one line per (backbone, profile) saying, from its record's resolved
    settings, what every row held fixed and what the rows changed (the caption of what ran, not the paper's)."""
    if not _templated(table):
        return []
    tasks = {col["task"] for col in table["columns"]}
    lines = []
    for (_, task, profile), entry in sorted(agg.items(), key=lambda kv: (kv[0][2], str(kv[0][0]))):
        if task not in tasks:
            continue
        settings = [v["setting"] for k, v in entry.get("hparams", {}).items()
                    if k != BASE_ROW and isinstance(v, Mapping) and v.get("setting")]  # fmt: skip
        if not settings:
            lines.append(f"- ours, {entry['label']} ({profile}): its record does not say what each row ran")
            continue
        parts = []
        for field, name in (("trainable", "trained"), ("limit_layers", "lambda"), ("sigma", "sigma"), ("mu", "mu")):
            values = [s[field] for s in settings]
            show = (lambda v: TRAINABLE_LABELS.get(v, str(v))) if field == "trainable" else (
                lambda v: "all" if v is None else f"{v:g}")
            common = max(dict.fromkeys(values), key=values.count)
            others = sorted(dict.fromkeys(v for v in values if v != common),
                            key=lambda v: (v is not None, v if isinstance(v, int | float) else 0, str(v)))
            text = f"{name} = {show(common)}" + (" blocks" if field == "limit_layers" else "")
            if others:
                text += " unless the row sets " + ", ".join(show(v) for v in others)
            parts.append(text)
        lines.append(f"- ours, {entry['label']} ({profile}, {settings[0]['blocks']} blocks): " + "; ".join(parts))
    return lines


def deviation_notes(table: dict, records: list[dict]) -> list[str]:
    """One line per (backbone, task, profile) of this table's tasks whose records list deviations from the
    reference code (the record's ``deviations``)."""
    tasks = {col["task"] for col in table["columns"]}
    found: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    for rec in records:
        if rec["task"] in tasks and rec.get("deviations"):
            found[(rec["backbone"]["label"], rec["task"], rec["profile"])].update(rec["deviations"])
    return [f"- {label} / {task} ({profile}): " + "; ".join(sorted(devs))
            for (label, task, profile), devs in sorted(found.items())]  # fmt: skip


def _templated(table: dict) -> bool:
    return any("{row}" in col["metric"] for col in table["columns"])


def _ours(table: dict, agg: dict[Key, dict[str, Any]]) -> list[tuple[BackboneIdentity, str]]:
    tasks = {col["task"] for col in table["columns"]}
    return sorted({(b, profile) for (b, task, profile) in agg if task in tasks}, key=lambda k: (k[1], str(k[0])))


def _label_of(agg, backbone: BackboneIdentity, profile: str) -> str:
    return next(v["label"] for (b, _, p), v in agg.items() if b == backbone and p == profile)


def _value(agg, backbone, profile, col, row_key: str | None = None, field: str = "metrics") -> float:
    """A column's mean over seeds (``field="spread"``: its standard deviation over seeds, NaN for one seed)."""
    entry = agg.get((backbone, col["task"], profile))
    metric = col["metric"].replace("{row}", str(row_key)) if row_key is not None else col["metric"]
    return (entry.get(field) or {}).get(metric, math.nan) if entry else math.nan


def table_frame(table: dict, agg: dict[Key, dict[str, Any]]):
    """Long-format pandas DataFrame: one line per (paper row, source, column) with paper, ours and delta."""
    import pandas as pd

    tasks = {col["task"] for col in table["columns"]}
    ours = _ours(table, agg)
    lines = []

    def add(row, source, label, profile, n_runs, value_of, other="(no paper row)", ran=None, spread_of=None):
        name = row["name"] if row else other
        ran_label, same = ran if ran is not None else (name, True)
        for col in table["columns"]:
            paper = row["values"].get(col["key"], math.nan) if row else math.nan
            value = value_of(col)
            spread = spread_of(col) if spread_of is not None else math.nan
            lines.append({
                "table": table["table"], "row": row["name"] if row else other,
                "row_key": row["key"] if row else "", "source": source, "backbone": label, "protocol": profile,
                "n_runs": n_runs, "column": col["label"], "column_key": col["key"], "task": col["task"],
                "metric": col["metric"], "higher_is_better": col["higher_is_better"], "paper": paper,
                "value": value, "spread": spread, "delta": value - paper if source == "ours" and same else math.nan,
                "label": ran_label, "same_setting": same,
            })  # fmt: skip

    def n_runs(backbone, profile):
        return max((agg[(backbone, t, profile)]["n"] for t in tasks if (backbone, t, profile) in agg), default=0)

    assigned = {}
    if not _templated(table):
        assigned = {(b, profile): row_for_role(b.role, table["rows"]) for b, profile in ours}
    for row in table["rows"]:
        add(row, "paper", "", "paper", 0, lambda col, row=row: row["values"].get(col["key"], math.nan))
        for backbone, profile in ours:
            if not _templated(table) and assigned[(backbone, profile)] is not row:
                continue
            row_key = row["key"] if _templated(table) else None
            ran = None
            if _templated(table):
                entry = next((agg[(backbone, t, profile)] for t in sorted(tasks) if (backbone, t, profile) in agg), None)
                ran = _row_run(entry, row)
            add(row, "ours", _label_of(agg, backbone, profile), profile, n_runs(backbone, profile),
                lambda col, b=backbone, p=profile, k=row_key: _value(agg, b, p, col, k), ran=ran,
                spread_of=lambda col, b=backbone, p=profile, k=row_key: _value(agg, b, p, col, k, "spread"))  # fmt: skip
    for (backbone, profile), row in assigned.items():
        if row is None:  # a backbone no paper row stands for: ours only, no delta
            add(None, "ours", _label_of(agg, backbone, profile), profile, n_runs(backbone, profile),
                lambda col, b=backbone, p=profile: _value(agg, b, p, col), _unmatched_row(backbone.role),
                spread_of=lambda col, b=backbone, p=profile: _value(agg, b, p, col, field="spread"))  # fmt: skip
    return pd.DataFrame(lines)


def _paper_row(table: dict, role: str) -> dict | None:
    return next((r for r in table["rows"] if r.get("role") == role), None)


def effects_frame(table: dict, agg: dict[Key, dict[str, Any]]):
    """The effect of each remedy over its own base, per column: the paper's (SINDER minus DINOv2) and ours
    (each repaired checkpoint minus the base its metadata names, when the base was run in the same profile)."""
    import pandas as pd

    lines = []

    def add(name, source, profile, value_of):
        for col in table["columns"]:
            value = value_of(col)
            value, spread = value if isinstance(value, tuple) else (value, math.nan)
            lines.append({"table": table["table"], "effect": name, "source": source, "protocol": profile,
                          "column": col["label"], "column_key": col["key"], "task": col["task"],
                          "metric": col["metric"], "higher_is_better": col["higher_is_better"],
                          "value": value, "spread": spread})  # fmt: skip

    if _templated(table):  # the ablations: each row minus the unrepaired base, the paper's and ours
        base = next((r for r in table["rows"] if r["key"] == BASE_ROW), None)
        if base is None:
            return pd.DataFrame(lines)
        for row in table["rows"]:
            if row is base:
                continue
            add(f"{row['name']} - base", "paper", "paper",
                lambda col, r=row: r["values"].get(col["key"], math.nan) - base["values"].get(col["key"], math.nan))
        tasks = {col["task"] for col in table["columns"]}
        for backbone, profile in _ours(table, agg):
            entry = next((agg[(backbone, t, profile)] for t in sorted(tasks) if (backbone, t, profile) in agg), None)
            for row in table["rows"]:
                if row is base:
                    continue
                add(f"{_row_run(entry, row)[0]} - base", f"ours: {_label_of(agg, backbone, profile)}", profile,
                    lambda col, b=backbone, p=profile, k=row["key"]: R.paired_effect(agg, b, b, p, col, k, BASE_ROW))
        return pd.DataFrame(lines)
    sinder, dinov2 = _paper_row(table, "sinder"), _paper_row(table, "dinov2")
    if sinder and dinov2:
        add(f"{sinder['name']} - {dinov2['name']}", "paper", "paper",
            lambda col: sinder["values"].get(col["key"], math.nan) - dinov2["values"].get(col["key"], math.nan))
    for backbone, profile in _ours(table, agg):
        role = backbone.role
        if not role.is_remedied:
            continue
        bases = [b for b, p in _ours(table, agg) if p == profile and b.sha256 == role.base_sha256
                 and not b.role.is_remedied]  # fmt: skip
        if not bases:
            continue
        base = bases[0]
        name = f"{_label_of(agg, backbone, profile)} - {_label_of(agg, base, profile)}"
        add(name, f"ours ({role.remedy or 'remedy'})", profile,
            lambda col, b=backbone, a=base, p=profile: R.paired_effect(agg, b, a, p, col))
    return pd.DataFrame(lines)


def _decimals(table: dict, key: str) -> int:
    places = [len(f"{v:g}".split(".")[1]) if "." in f"{v:g}" else 0 for r in table["rows"]
              for k, v in r["values"].items() if k == key]  # fmt: skip
    return max(places, default=2) or 2


def wide_rows(table: dict, frame) -> tuple[list[str], list[list[str]]]:
    """Header and string rows laid out as the paper: backbones down, metric columns across."""
    header = [table.get("row_header", "Backbone"), "Source", "Protocol"] + [
        col["label"] + _arrow(col) for col in table["columns"]
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
        values = [_fmt(cells[c["key"]].value, _decimals(table, c["key"]), spread=cells[c["key"]].spread)
                  for c in table["columns"]]  # fmt: skip
        body.append([part["label"].iloc[0], f"ours: {label} (n={n})", protocol] + values)
        if not row_name.startswith("(no paper row") and bool(part["same_setting"].all()):
            deltas = [_fmt(cells[c["key"]].delta, _decimals(table, c["key"]), sign=True) for c in table["columns"]]
            body.append([row_name, DELTA, protocol] + deltas)
    return header, body


def _fmt(value: float, decimals: int, sign: bool = False, spread: float = math.nan) -> str:
    """A value at the table's decimals; `` ± s`` where several seeds ran (their standard deviation)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    text = f"{value:+.{decimals}f}" if sign else f"{value:.{decimals}f}"
    return text if spread is None or math.isnan(spread) else f"{text} ± {spread:.{decimals}f}"


def effect_rows(table: dict, effects) -> tuple[list[str], list[list[str]]]:
    """Header and string rows of the remedy-over-base view (signed numbers)."""
    header = ["Effect (row - base)" if _templated(table) else "Effect (remedy - its base)", "Source", "Protocol"] + [
        col["label"] + _arrow(col) for col in table["columns"]
    ]
    body = []
    if effects.empty:
        return header, body
    for key in dict.fromkeys(zip(effects["effect"], effects["source"], effects["protocol"])):
        part = effects[(effects["effect"] == key[0]) & (effects["source"] == key[1]) & (effects["protocol"] == key[2])]
        cells = {r.column_key: (r.value, r.spread) for r in part.itertuples()}
        row = []
        for c in table["columns"]:
            value, spread = cells.get(c["key"], (math.nan, math.nan))
            row.append(_fmt(value, _decimals(table, c["key"]), sign=True, spread=spread))
        body.append(list(key) + row)
    return header, body


def _is_smoke(frame) -> bool:
    return bool(((frame["source"] == "ours") & (frame["protocol"] == "smoke")).any()) if len(frame) else False


_RAN_HEADING = ("What our runs ran (from each record's resolved settings; a row's Setting is ours, with the paper's "
                "label beside it where they differ, and a delta to the paper only where they agree):")


def _effects_heading(table: dict) -> str:
    if _templated(table):
        return (f"Effect of each row over the unrepaired base (Table {table['table']}; ours: the base row of the same "
                "run, evaluated under the same protocol):")
    return (f"Effect of each remedy over its own base (Table {table['table']}; ours: a repaired checkpoint minus the "
            "base its metadata names):")


def render_markdown(table: dict, frame, effects=None, ran: list[str] | None = None) -> str:
    header, body = wide_rows(table, frame)
    lines = [f"### Table {table['table']}: {table['title']}", "", f"Paper source: {table['source'].rstrip('.')}."]
    if table.get("note"):
        lines += ["", ("Paper: " if _templated(table) else "") + table["note"]]
    if ran:
        lines += ["", _RAN_HEADING, "", *ran]
    if _is_smoke(frame):
        lines += ["", f"**{SMOKE_NOTE}**"]
    if not (frame["source"] == "ours").any():
        lines += ["", "No run records of this table's tasks yet."]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    if effects is not None and not effects.empty:
        header, body = effect_rows(table, effects)
        lines += ["", _effects_heading(table), ""]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines) + "\n"


def render_latex(table: dict, frame, effects=None, ran: list[str] | None = None) -> str:
    import pandas as pd

    header, body = wide_rows(table, frame)
    caption = f"{table['title']} Paper numbers: {table['source'].rstrip('.')}."
    if ran:
        caption += " Ours: " + " ".join(line.removeprefix("- ours, ") + "." for line in ran)
    if _is_smoke(frame):
        caption += " " + SMOKE_NOTE
    text = pd.DataFrame(body, columns=header).to_latex(
        index=False, escape=True, caption=caption, label=f"tab:sinder-bench-{table['table']}"
    )
    if effects is not None and not effects.empty:
        header, body = effect_rows(table, effects)
        text += pd.DataFrame(body, columns=header).to_latex(
            index=False, escape=True, caption=_effects_heading(table).rstrip(":") + ".",
            label=f"tab:sinder-bench-{table['table']}-effects",
        )  # fmt: skip
    return text


def plot_effects(table: dict, effects, path: str | Path) -> Path:
    """Grouped bars of each remedy's effect over its base, per column (the paper's and ours), with the spread over
    seeds as error bars where several ran, PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = list(dict.fromkeys(zip(effects["effect"], effects["source"], effects["protocol"])))
    columns = table["columns"]
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(columns) * max(1, len(series)) ** 0.5), 4.5), dpi=100)
    for i, (name, source, protocol) in enumerate(series):
        part = effects[(effects["effect"] == name) & (effects["source"] == source) & (effects["protocol"] == protocol)]
        by_key = {r.column_key: (r.value, r.spread) for r in part.itertuples()}
        values = [by_key.get(c["key"], (math.nan, math.nan)) for c in columns]
        spreads = [0.0 if math.isnan(sd) else sd for _, sd in values]
        # error bars: the standard deviation over seeds of the paired effect, where several seeds ran
        ax.bar([j + i * width for j in range(len(columns))], [v for v, _ in values], width,
               yerr=spreads if any(spreads) else None, capsize=3,
               label=f"{name} ({source}, {protocol})", hatch=None if source == "paper" else "//",
               edgecolor="black")  # fmt: skip
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks([j + width * (len(series) - 1) / 2 for j in range(len(columns))])
    ax.set_xticklabels([c["label"] + _arrow(c) for c in columns],
                       rotation=30, ha="right", fontsize=8)  # fmt: skip
    title = f"Table {table['table']}: effect of each " + ("row over the unrepaired base" if _templated(table)
                                                           else "remedy over its base")
    if (effects["protocol"] == "smoke").any():
        title += "\n(smoke: tiny constructed model, synthetic data)"
    return _save_bars(fig, ax, title, path, legend_columns=2)


def _save_bars(fig, ax, title: str, path: str | Path, legend_columns: int) -> Path:
    """Title, legend under the axes, and the PNG written atomically; closes the figure."""
    import matplotlib.pyplot as plt

    from sinder.plots.layout import fit_text

    ax.set_title(title, fontsize=9)
    fig.set_layout_engine("constrained")  # the legend gets its own room under the x labels, never over them
    fig.legend(*ax.get_legend_handles_labels(), fontsize=7, ncol=legend_columns, loc="outside lower center",
               frameon=False)  # fmt: skip
    fit_text(fig)
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def plot_table(table: dict, frame, path: str | Path) -> Path:
    """Small multiples (PNG, Agg backend): one panel per column, the paper's rows along x, and in each row the
    paper's bar (solid) beside ours (hatched, one per backbone and protocol). Colours stand for roles (paper, ours
    under each protocol), so the legend has one entry per role; our backbones are named under their rows."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from sinder.plots.layout import fit_text

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
        better = {True: " (higher is better)", False: " (lower is better)"}.get(col["higher_is_better"], "")
        ax.set_ylabel(f"{_axis_unit(col)}{better}", fontsize=7)
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
    if _is_smoke(frame):
        title += "\n(ours: smoke profile, a tiny constructed model on synthetic data)"
    fig.suptitle(title, fontsize=9, x=0.02, ha="left")
    fig.set_layout_engine("constrained")  # the title, then the legend, then the panels: each its own room
    fig.legend(handles=handles, loc="outside upper right", ncol=len(handles), fontsize=7, frameon=False)
    fit_text(fig)
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
        effects = effects_frame(table, agg)
        frames += [frame.assign(view="values"), effects.assign(view="effects")]
        ran = ran_notes(table, agg)
        if fmt == "md":
            text = render_markdown(table, frame, effects, ran)
            notes = deviation_notes(table, records)
            if notes:
                text += "\nDeviations from the reference code in the runs shown:\n\n" + "\n".join(notes) + "\n"
        elif fmt == "latex":
            text = render_latex(table, frame, effects, ran)
        else:
            text = pd.concat([frame.assign(view="values"), effects.assign(view="effects")]).to_csv(index=False)
        parts.append(text)
        if out_dir is not None:
            suffix = {"md": "md", "latex": "tex", "csv": "csv"}[fmt]
            atomic_write_text(Path(out_dir) / f"table{number}.{suffix}", text)
            if plots:
                plot_table(table, frame, Path(out_dir) / f"table{number}.png")
                if not effects.empty:
                    plot_effects(table, effects, Path(out_dir) / f"table{number}_effects.png")
    remedies = R.remedies_frame(agg)
    if R.has_remedies(remedies):  # each remedy beside its base, with its cost (suite `remedies`)
        frames.append(remedies.assign(view="remedies"))
        if fmt != "csv":
            parts.append(R.render_markdown(remedies) if fmt == "md" else R.render_latex(remedies))
        if out_dir is not None:
            suffix = {"md": "md", "latex": "tex", "csv": "csv"}[fmt]
            text = parts[-1] if fmt != "csv" else remedies.to_csv(index=False)
            atomic_write_text(Path(out_dir) / f"remedies.{suffix}", text)
            if plots:
                R.plot_remedies(remedies, Path(out_dir) / "remedies.png")
    if fmt == "csv":
        return pd.concat(frames, ignore_index=True).to_csv(index=False)
    header = f"{len(records)} run record(s) from {runs}" if records else f"no run records found under {runs}"
    return (f"% {header}\n" if fmt == "latex" else f"_{header}_\n\n") + "\n".join(parts)
