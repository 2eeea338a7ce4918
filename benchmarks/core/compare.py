"""The regression gate: metrics of new run records against baseline records, within a tolerance per metric.

Pairs are (task, profile) groups, matched by backbone label, or, when each side has a single backbone for that
(task, profile), matched regardless of label (a repaired checkpoint against its original). Repeated records of
a group are averaged. Tolerance of a metric, first found of: the tolerance file's ``task/metric`` entry, its
``metric`` entry, ``SPREAD_K`` x the sample standard deviation of the baseline's repeated runs, the file's
``default``, and the built-in default (1% of the baseline value). A metric regresses when it is worse than the
baseline by more than its tolerance, in its own direction (higher or lower is better).

Exit codes of :func:`compare_main`: 0 no regression, 1 regression, 2 unusable input.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .results import RecordError, load_records

SPREAD_K = 3.0
DEFAULT_TOLERANCE = {"rel": 0.01}
MIN_TOLERANCE = 1e-6  # float noise of repeated deterministic runs is not a regression


class CompareError(ValueError):
    """Input the gate cannot judge: no records, no pairs, a malformed tolerance file."""


@dataclass
class Comparison:
    backbone: str
    task: str
    profile: str
    metric: str
    direction: str
    baseline: float
    new: float
    tolerance: float
    tolerance_source: str
    n_baseline: int
    n_new: int

    @property
    def delta(self) -> float:
        return self.new - self.baseline

    @property
    def status(self) -> str:
        if math.isnan(self.new) and not math.isnan(self.baseline):
            return "REGRESSION"  # a diverged or broken run is never within tolerance
        worse = -self.delta if self.direction == "higher" else self.delta
        if worse > self.tolerance:
            return "REGRESSION"
        return "improved" if worse < -self.tolerance else "ok"


def load_tolerances(path: str | Path | None) -> dict[str, Any]:
    """``{"default": spec, "metrics": {"task/metric" | "metric": spec}}``; spec = number (absolute) or
    ``{"abs": x}`` / ``{"rel": x}`` (fraction of the baseline value)."""
    if path is None:
        return {"metrics": {}}
    path = Path(path)
    if not path.is_file():
        raise CompareError(f"tolerance file {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as err:
        raise CompareError(f"tolerance file {path}: cannot parse ({err})") from err
    if not isinstance(data, dict) or not isinstance(data.get("metrics", {}), dict):
        raise CompareError(f"tolerance file {path}: expected a mapping with 'default' and/or 'metrics'")
    data.setdefault("metrics", {})
    for key, spec in [("default", data.get("default")), *data["metrics"].items()]:
        if spec is not None:
            try:
                _tolerance_value(spec, 1.0)
            except CompareError as err:
                raise CompareError(f"tolerance file {path}: entry {key!r}: {err}") from err
    return data


def _tolerance_value(spec: Any, baseline: float) -> float:
    if isinstance(spec, (int, float)) and not isinstance(spec, bool) and spec >= 0:
        return float(spec)
    if isinstance(spec, dict) and len(spec) == 1:
        (kind, value), = spec.items()
        if kind in ("abs", "rel") and isinstance(value, (int, float)) and value >= 0:
            return float(value) if kind == "abs" else float(value) * abs(baseline)
    raise CompareError(f"bad tolerance {spec!r}: use a number >= 0, {{abs: x}} or {{rel: x}}")


def _group(records: list[dict]) -> dict[tuple[str, str, str], list[dict]]:
    groups: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for rec in records:
        groups[(rec["backbone"]["label"], rec["task"], rec["profile"])].append(rec)
    return groups


def _pairs(new: dict, base: dict) -> tuple[list[tuple[tuple, tuple]], list[tuple]]:
    """Matched (new key, baseline key) pairs, and the new keys without a baseline."""
    pairs, unmatched = [], []
    for key in sorted(new):
        label, task, profile = key
        if key in base:
            pairs.append((key, key))
            continue
        new_labels = {k[0] for k in new if k[1:] == (task, profile)}
        base_keys = [k for k in base if k[1:] == (task, profile)]
        if len(new_labels) == 1 and len(base_keys) == 1:
            pairs.append((key, base_keys[0]))
        else:
            unmatched.append(key)
    return pairs, unmatched


def _values(records: list[dict], metric: str) -> list[float]:
    return [float(r["metrics"][metric]) for r in records if metric in r["metrics"]]


def compare(new_records: list[dict], baseline_records: list[dict], tolerances: dict | None = None):
    """Every comparable metric as a :class:`Comparison`, plus notes on what could not be compared."""
    tolerances = tolerances or {"metrics": {}}
    new, base = _group(new_records), _group(baseline_records)
    pairs, unmatched = _pairs(new, base)
    notes = [f"no baseline for {k[0]} / {k[1]} ({k[2]})" for k in unmatched]
    out = []
    for new_key, base_key in pairs:
        new_recs, base_recs = new[new_key], base[base_key]
        metrics = sorted(set().union(*(r["metrics"] for r in new_recs)) & set().union(*(r["metrics"] for r in base_recs)))
        missing = sorted(set().union(*(r["metrics"] for r in base_recs)) - set(metrics))
        if missing:
            notes.append(f"{new_key[0]} / {new_key[1]}: baseline metrics absent from the new records: {missing}")
        for metric in metrics:
            b_vals, n_vals = _values(base_recs, metric), _values(new_recs, metric)
            baseline, value = statistics.fmean(b_vals), statistics.fmean(n_vals)
            direction = (new_recs[0]["metric_directions"].get(metric)
                         or base_recs[0]["metric_directions"].get(metric) or "higher")  # fmt: skip
            task = new_key[1]
            if f"{task}/{metric}" in tolerances["metrics"]:
                tol, source = _tolerance_value(tolerances["metrics"][f"{task}/{metric}"], baseline), "file"
            elif metric in tolerances["metrics"]:
                tol, source = _tolerance_value(tolerances["metrics"][metric], baseline), "file"
            elif len(b_vals) >= 2:
                tol, source = SPREAD_K * statistics.stdev(b_vals), f"{SPREAD_K:g} sd of {len(b_vals)} runs"
            elif tolerances.get("default") is not None:
                tol, source = _tolerance_value(tolerances["default"], baseline), "file default"
            else:
                tol, source = _tolerance_value(DEFAULT_TOLERANCE, baseline), "default 1%"
            out.append(Comparison(
                backbone=new_key[0] if new_key[0] == base_key[0] else f"{new_key[0]} vs {base_key[0]}",
                task=task, profile=new_key[2], metric=metric, direction=direction, baseline=baseline, new=value,
                tolerance=max(tol, MIN_TOLERANCE), tolerance_source=source, n_baseline=len(b_vals),
                n_new=len(n_vals),
            ))  # fmt: skip
    return out, notes


def format_comparisons(rows: list[Comparison], fmt: str = "md") -> str:
    header = ["backbone", "task", "profile", "metric", "better", "baseline", "new", "delta", "tolerance",
              "tolerance from", "status"]  # fmt: skip
    body = [
        [c.backbone, c.task, c.profile, c.metric, c.direction, f"{c.baseline:.4f}", f"{c.new:.4f}",
         f"{c.delta:+.4f}", f"{c.tolerance:.4f}", c.tolerance_source, c.status]
        for c in rows
    ]  # fmt: skip
    if fmt == "csv":
        import csv
        import io

        buf = io.StringIO()
        csv.writer(buf).writerows([header, *body])
        return buf.getvalue()
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])


def compare_main(new_paths, baseline_paths, tolerance_file=None, fmt: str = "md", out=print, err=None) -> int:
    """Print the comparison; 0 when nothing regressed, 1 on a regression, 2 on unusable input."""
    import sys

    err = err or (lambda msg: print(msg, file=sys.stderr))
    try:
        tolerances = load_tolerances(tolerance_file)
        new = load_records(list(new_paths))
        base = load_records(list(baseline_paths))
        for side, recs, paths in (("new", new, new_paths), ("baseline", base, baseline_paths)):
            if not recs:
                raise CompareError(f"no run records under --{side} {' '.join(map(str, paths))}")
        rows, notes = compare(new, base, tolerances)
        if not rows:
            raise CompareError("no metric of the new records has a baseline to compare with: " + "; ".join(notes))
    except (CompareError, RecordError) as error:
        err(f"error: {error}")
        return 2
    out(format_comparisons(rows, fmt))
    for note in notes:
        out(f"note: {note}")
    bad = [c for c in rows if c.status == "REGRESSION"]
    out(f"{len(bad)} regression(s) in {len(rows)} metric(s)" + (": " + ", ".join(
        f"{c.task}/{c.metric}" for c in bad) if bad else ""))  # fmt: skip
    return 1 if bad else 0
