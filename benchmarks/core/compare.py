"""The regression gate: metrics of new run records against baseline records, within a tolerance per metric.

Records are grouped by (backbone identity, task, profile): the backbone is its content hash and role, never its
label, so two checkpoints under one label are never averaged together. A baseline group is paired with the new
group of the same backbone, or, when each side has a single backbone for that (task, profile), with it whatever
it is (a repaired checkpoint against its original). Repeats of a measurement are its distinct seeds; records of
the same seed (duplicates, relabelled copies) count once.

Tolerance of a metric, first found of: the tolerance file's ``task/metric`` entry, its ``metric`` entry, else the
larger of ``SPREAD_K`` x the standard deviation over the baseline's seeds and the file's ``default`` (or the
built-in 1% of the baseline value), so repeats can widen a tolerance but never tighten it. A metric regresses
when it is worse than the baseline by more than its tolerance, in its own direction: the one its task declares
(``Metric.higher_is_better``), never the direction a record carries (a record edited from "higher" to "lower"
cannot turn a drop into an improvement); only for a task not registered here is the baseline records' used.

Exit codes of :func:`compare_main`: 0 no regression; 1 a regression, a baseline (backbone, task) or metric
missing from the new records, or a new record of a failed task; 2 unusable input (no records, a malformed
tolerance file, or one naming a key, task or metric that neither side has).
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .identity import BackboneIdentity, RunIdentity
from .results import RecordError, is_failure, load_records, task_direction

SPREAD_K = 3.0
DEFAULT_TOLERANCE = {"rel": 0.01}
MIN_TOLERANCE = 1e-6  # float noise of repeated deterministic runs is not a regression
TOLERANCE_KEYS = ("default", "metrics")
TOLERANCE_HELP = """\
Tolerance file (YAML or JSON), every key optional:
  default: {rel: 0.01}          # any metric not named below; a number is an absolute tolerance
  metrics:
    top1: 0.5                   # metric 'top1' of every task: 0.5 points
    imagenet_knn/top5: {abs: 0.3}
    depth_nyu_dpt/rmse: {rel: 0.02}   # 2% of the baseline value
A spec is a number >= 0 (absolute), {abs: x} or {rel: x}. Without an entry a metric gets the larger of 3 x the
standard deviation over the baseline's seeds and the default (the file's, else 1% of the baseline value).
Unknown keys and tasks or metrics that neither side has are errors (exit 2), so a typo cannot pass silently."""


class CompareError(ValueError):
    """Input the gate cannot judge: no records, a malformed tolerance file."""


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


@dataclass
class GateResult:
    rows: list[Comparison] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # baseline (backbone, task) or metric absent from the new side
    errors: list[str] = field(default_factory=list)  # new records of failed tasks
    notes: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[Comparison]:
        return [c for c in self.rows if c.status == "REGRESSION"]

    @property
    def exit_code(self) -> int:
        return 1 if self.regressions or self.missing or self.errors else 0


def load_tolerances(path: str | Path | None) -> dict[str, Any]:
    """``{"default": spec, "metrics": {"task/metric" | "metric": spec}}`` (see ``TOLERANCE_HELP``)."""
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
    if data is None:
        data = {}
    if not isinstance(data, dict) or not isinstance(data.get("metrics") or {}, dict):
        raise CompareError(f"tolerance file {path}: expected a mapping with 'default' and/or 'metrics'")
    unknown = sorted(set(map(str, data)) - set(TOLERANCE_KEYS))
    if unknown:
        raise CompareError(f"tolerance file {path}: unknown key(s) {unknown}; the keys are {', '.join(TOLERANCE_KEYS)}")
    data["metrics"] = {str(k): v for k, v in (data.get("metrics") or {}).items()}
    for key, spec in [("default", data.get("default")), *data["metrics"].items()]:
        if spec is not None:
            try:
                _tolerance_value(spec, 1.0)
            except CompareError as err:
                raise CompareError(f"tolerance file {path}: entry {key!r}: {err}") from err
    data["_source"] = str(path)
    return data


def check_tolerance_names(tolerances: dict, records: list[dict]) -> None:
    """CompareError naming every ``metrics`` entry whose task or metric appears in neither side's records."""
    metrics_of: dict[str, set[str]] = defaultdict(set)
    for rec in records:
        metrics_of[rec["task"]].update(rec["metrics"])
    every_metric = set().union(*metrics_of.values()) if metrics_of else set()
    bad = []
    for key in tolerances.get("metrics", {}):
        task, sep, metric = key.partition("/")
        if not sep:
            task, metric = "", key
        if task and task in metrics_of:
            if metric not in metrics_of[task]:
                bad.append(f"{key!r} (task {task} has metrics {', '.join(sorted(metrics_of[task]))})")
        elif task and key not in every_metric:  # per-setting metrics such as "sigma_3/knn_top1" hold a '/'
            bad.append(f"{key!r} (no task {task!r} in the records: {', '.join(sorted(metrics_of))})")
        elif not task and key not in every_metric:
            bad.append(f"{key!r} (no such metric in the records)")
    if bad:
        where = tolerances.get("_source", "tolerance file")
        raise CompareError(f"{where}: entries that match no task or metric of either side: {'; '.join(bad)}")


def _tolerance_value(spec: Any, baseline: float) -> float:
    if isinstance(spec, (int, float)) and not isinstance(spec, bool) and spec >= 0:
        return float(spec)
    if isinstance(spec, dict) and len(spec) == 1:
        (kind, value), = spec.items()
        if kind in ("abs", "rel") and isinstance(value, (int, float)) and value >= 0:
            return float(value) if kind == "abs" else float(value) * abs(baseline)
    raise CompareError(f"bad tolerance {spec!r}: use a number >= 0, {{abs: x}} or {{rel: x}}")


GroupKey = tuple[BackboneIdentity, str, str]  # (backbone, task, profile)


def _group(records: list[dict]) -> dict[GroupKey, list[dict]]:
    groups: dict[GroupKey, list[dict]] = defaultdict(list)
    for rec in records:
        ident = RunIdentity.from_record(rec)
        groups[(ident.backbone, rec["task"], rec["profile"])].append(rec)
    return groups


def _label(records: list[dict], backbone: BackboneIdentity) -> str:
    labels = list(dict.fromkeys(r["backbone"]["label"] for r in sorted(records, key=lambda r: r["created"])))
    return f"{' / '.join(labels)} [{backbone.short}]"


def _pairs(new: dict, base: dict) -> tuple[list[tuple[GroupKey, GroupKey]], list[GroupKey]]:
    """Matched (new key, baseline key) pairs, and the baseline keys the new side lacks."""
    pairs, missing = [], []
    for key in sorted(base, key=str):
        _, task, profile = key
        if key in new:
            pairs.append((key, key))
            continue
        new_keys = [k for k in new if k[1:] == (task, profile)]
        base_keys = [k for k in base if k[1:] == (task, profile)]
        if len(new_keys) == 1 and len(base_keys) == 1:
            pairs.append((new_keys[0], key))
        else:
            missing.append(key)
    return pairs, missing


def _seed_values(records: list[dict], metric: str) -> list[float]:
    """One value per seed (the mean of that seed's records): duplicates never count as repeats."""
    by_seed: dict[int, list[float]] = defaultdict(list)
    for rec in records:
        if metric in rec["metrics"]:
            by_seed[int(rec.get("seed", 0))].append(float(rec["metrics"][metric]))
    return [statistics.fmean(v) for _, v in sorted(by_seed.items())]


def _tolerance(tolerances: dict, task: str, metric: str, baseline: float, b_vals: list[float]) -> tuple[float, str]:
    entries = tolerances.get("metrics", {})
    if f"{task}/{metric}" in entries:
        return _tolerance_value(entries[f"{task}/{metric}"], baseline), "file"
    if metric in entries:
        return _tolerance_value(entries[metric], baseline), "file"
    if tolerances.get("default") is not None:
        floor, source = _tolerance_value(tolerances["default"], baseline), "file default"
    else:
        floor, source = _tolerance_value(DEFAULT_TOLERANCE, baseline), "default 1%"
    if len(b_vals) >= 2:
        spread = SPREAD_K * statistics.stdev(b_vals)
        if spread > floor:
            return spread, f"{SPREAD_K:g} sd of {len(b_vals)} seeds"
    return floor, source


def gate(new_records: list[dict], baseline_records: list[dict], tolerances: dict | None = None) -> GateResult:
    """Every comparable metric, and everything that makes the gate fail besides a regression."""
    tolerances = tolerances or {"metrics": {}}
    result = GateResult()
    for rec in new_records:
        if is_failure(rec):
            result.errors.append(f"{rec['backbone']['label']} / {rec['task']} ({rec['profile']}) failed: "
                                 f"{rec['error']} [{rec.get('_path', '')}]")  # fmt: skip
    skipped = [r for r in baseline_records if is_failure(r)]
    if skipped:
        result.notes.append(f"{len(skipped)} baseline record(s) of failed tasks ignored")
    new = _group([r for r in new_records if not is_failure(r)])
    base = _group([r for r in baseline_records if not is_failure(r)])
    pairs, missing = _pairs(new, base)
    failed_tasks = {(r["task"], r["profile"]) for r in new_records if is_failure(r)}
    for key in missing:
        if key[1:] not in failed_tasks:  # a failed task is already reported as such
            result.missing.append(f"baseline {_label(base[key], key[0])} / {key[1]} ({key[2]}) has no new record")
    paired_new = {n for n, _ in pairs}
    result.notes += [f"no baseline for {_label(new[k], k[0])} / {k[1]} ({k[2]})" for k in sorted(new, key=str)
                     if k not in paired_new]  # fmt: skip
    undeclared: set[str] = set()
    for new_key, base_key in pairs:
        new_recs, base_recs = new[new_key], base[base_key]
        new_label, base_label = _label(new_recs, new_key[0]), _label(base_recs, base_key[0])
        task = new_key[1]
        new_metrics = set().union(*(r["metrics"] for r in new_recs))
        base_metrics = set().union(*(r["metrics"] for r in base_recs))
        for metric in sorted(base_metrics - new_metrics):
            result.missing.append(f"{new_label} / {task}: baseline metric {metric!r} is missing from the new records")
        versions = {RunIdentity.from_record(r).task_version for r in new_recs + base_recs}
        configs = {RunIdentity.from_record(r).config_sha256 for r in new_recs + base_recs}
        if len(versions) > 1 or len(configs) > 1:
            result.notes.append(f"{new_label} / {task}: compared across task versions {sorted(versions)} or "
                                f"{len(configs)} different configs")  # fmt: skip
        for metric in sorted(new_metrics & base_metrics):
            b_vals, n_vals = _seed_values(base_recs, metric), _seed_values(new_recs, metric)
            baseline, value = statistics.fmean(b_vals), statistics.fmean(n_vals)
            direction = task_direction(task, metric)
            if direction is None:  # a task this checkout lacks: the baseline's word, never the new record's
                direction = base_recs[0]["metric_directions"].get(metric) or "higher"
                undeclared.add(task)
            stated = {r["metric_directions"].get(metric) for r in new_recs + base_recs} - {None, direction}
            if stated:  # an edited or outdated record: say so, and go by the task
                result.notes.append(f"{new_label} / {task}: records state {metric} as {'/'.join(sorted(stated))} "
                                    f"is better; compared as {direction} (the task's)")  # fmt: skip
            tol, source = _tolerance(tolerances, task, metric, baseline, b_vals)
            result.rows.append(Comparison(
                backbone=new_label if new_key == base_key else f"{new_label} vs {base_label}",
                task=task, profile=new_key[2], metric=metric, direction=direction, baseline=baseline, new=value,
                tolerance=max(tol, MIN_TOLERANCE), tolerance_source=source, n_baseline=len(b_vals),
                n_new=len(n_vals),
            ))  # fmt: skip
    result.notes += [f"task {task} is not registered here: its metric directions come from the baseline records"
                     for task in sorted(undeclared)]  # fmt: skip
    return result


def compare(new_records: list[dict], baseline_records: list[dict], tolerances: dict | None = None):
    """Every comparable metric as a :class:`Comparison`, plus notes (including what is missing or failed)."""
    result = gate(new_records, baseline_records, tolerances)
    return result.rows, result.errors + result.missing + result.notes


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
    """Print the comparison; 0 when nothing regressed or went missing, 1 when something did, 2 on unusable input."""
    import sys

    err = err or (lambda msg: print(msg, file=sys.stderr))
    try:
        tolerances = load_tolerances(tolerance_file)
        new = load_records(list(new_paths))
        base = load_records(list(baseline_paths))
        for side, recs, paths in (("new", new, new_paths), ("baseline", base, baseline_paths)):
            if not recs:
                raise CompareError(f"no run records under --{side} {' '.join(map(str, paths))}")
        check_tolerance_names(tolerances, new + base)
        result = gate(new, base, tolerances)
    except (CompareError, RecordError) as error:
        err(f"error: {error}")
        return 2
    if result.rows:
        out(format_comparisons(result.rows, fmt))
    for note in result.notes:
        out(f"note: {note}")
    for line in result.missing:
        out(f"MISSING: {line}")
    for line in result.errors:
        out(f"FAILED TASK: {line}")
    bad = result.regressions
    out(f"{len(bad)} regression(s) in {len(result.rows)} metric(s)" + (": " + ", ".join(
        f"{c.task}/{c.metric}" for c in bad) if bad else "") + f"; {len(result.missing)} missing; "
        f"{len(result.errors)} failed task(s)")  # fmt: skip
    return result.exit_code
