"""The regression gate: metrics of new run records against baseline records, within a tolerance per metric.

Records are grouped by (backbone identity, task, profile): the backbone is its content hash and role, never its
label, so two checkpoints under one label are never averaged together. A baseline group is paired with the new
group of the same backbone, or, when each side has a single backbone for that (task, profile), with it whatever
it is (a repaired checkpoint against its original). Repeats of a measurement are its distinct seeds; records of
the same run identity (duplicates, relabelled copies) count once, and must agree: two records of one identity
with different metrics (a rerun without ``--resume``) are a conflict, not averaged. Seeds are compared with
seeds: when both sides share seeds, each side's value is the mean over the shared seeds (what else each side has
is said in a note); only when they share none are the means of all seeds compared (also said).

A failed record is superseded by a successful record of the same run identity on its side (a ``--resume``
retry), as ``status`` counts it. Records whose resolved config or task version differ between the sides (a
``--cfg-options`` override) are not the same measurement: unusable input unless ``allow_config_change``, and
then listed.

Tolerance of a metric, first found of: the tolerance file's ``task/metric`` entry, its ``metric`` entry, else the
larger of ``SPREAD_K`` x a standard deviation over seeds and the file's ``default`` (or the built-in 1% of the
baseline value), so repeats can widen a tolerance but never tighten it. The standard deviation is that of the
per-seed differences (new minus baseline) when the sides share two or more seeds: each seed's pair saw the same
data, so the spread of the data across seeds (tens of points between small twins' draws) does not widen the
tolerance of a comparison it does not affect; otherwise that of the baseline's seeds. A metric regresses
when it is worse than the baseline by more than its tolerance, in its own direction: the one its task declares
(``Metric.higher_is_better``), never the direction a record carries (a record edited from "higher" to "lower"
cannot turn a drop into an improvement); only for a task not registered here is the baseline records' used.
A non-finite value (NaN, inf) on either side, or a non-finite tolerance, fails the metric.

Exit codes of :func:`compare_main`: 0 only when every metric of every baseline (backbone, task) was compared
and none regressed, and every successful new group had a baseline; 1 on a regression or a non-finite value, a
baseline (backbone, task) or metric missing from the new records, a new record of a failed task, or a new
(backbone, task) with no baseline to gate it; 2 on unusable input (no records; a malformed tolerance file or
one naming a key, task or metric that neither side has; a record that is not UTF-8 JSON; ``--new`` and
``--baseline`` sharing records; conflicting records; a config change without ``allow_config_change``; a
baseline with no successful record, or nothing compared at all).
"""

from __future__ import annotations

import json
import math
import re
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
Tolerance file (YAML 1.2 or JSON), every key optional:
  default: {rel: 0.01}          # any metric not named below; a number is an absolute tolerance
  metrics:
    top1: 0.5                   # metric 'top1' of every task: 0.5 points
    imagenet_knn/top5: {abs: 0.3}
    depth_nyu_dpt/rmse: {rel: 2e-2}   # 2% of the baseline value
A spec is a finite number >= 0 (absolute; any YAML 1.2 number: 0.5, 1e-3, 1E9, .5), {abs: x} or {rel: x}.
Without an entry a metric gets the larger of 3 x a standard deviation over seeds (of the per-seed differences
when both sides share two or more seeds, else of the baseline's) and the default (the file's, else 1% of the
baseline value). Unknown keys, repeated keys, non-finite values (.inf, .nan)
and tasks or metrics that neither side has are errors (exit 2), so a typo cannot pass silently."""


class CompareError(ValueError):
    """Input the gate cannot judge: no records, a malformed tolerance file, conflicting records."""


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
    seeds: str = ""

    @property
    def delta(self) -> float:
        return self.new - self.baseline

    @property
    def status(self) -> str:
        if not all(math.isfinite(v) for v in (self.new, self.baseline, self.tolerance)):
            return "NOT FINITE"  # a diverged or broken run (or baseline) is never within tolerance
        worse = -self.delta if self.direction == "higher" else self.delta
        if not math.isfinite(worse):
            return "NOT FINITE"
        if worse > self.tolerance:
            return "REGRESSION"
        return "improved" if worse < -self.tolerance else "ok"


FAILING = ("REGRESSION", "NOT FINITE")


@dataclass
class GateResult:
    rows: list[Comparison] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # baseline (backbone, task) or metric absent from the new side
    errors: list[str] = field(default_factory=list)  # new records of failed tasks
    ungated: list[str] = field(default_factory=list)  # new (backbone, task) with no baseline
    config_changes: list[str] = field(default_factory=list)  # pairs compared across configs or task versions
    notes: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[Comparison]:
        return [c for c in self.rows if c.status in FAILING]

    @property
    def exit_code(self) -> int:
        return 1 if self.regressions or self.missing or self.errors or self.ungated else 0


# ------------------------------------------------------------------------------------------- tolerance files
_YAML12_INT = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
_YAML12_FLOAT = re.compile(
    r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)  # the YAML 1.2 core schema (https://yaml.org/spec/1.2.2/#1032-tag-resolution), which PyYAML (1.1) lacks:
#    PyYAML reads 1e-3 and 1e9 as text; 1.2 reads them as numbers
_YAML12_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")


def _yaml12_loader():
    """A safe YAML loader with the 1.2 core schema's numbers and booleans that refuses repeated keys."""
    import yaml

    int_tag, float_tag, bool_tag = (f"tag:yaml.org,2002:{t}" for t in ("int", "float", "bool"))

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                self.flatten_mapping(node)
                seen = set()
                for key_node, _ in node.value:
                    key = self.construct_object(key_node, deep=True)
                    try:
                        repeated = key in seen
                    except TypeError:  # an unhashable key: the parent's constructor says so
                        continue
                    if repeated:
                        raise CompareError(f"key {key!r} is given twice (line {key_node.start_mark.line + 1})")
                    seen.add(key)
            return super().construct_mapping(node, deep=deep)

    Loader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag not in (int_tag, float_tag, bool_tag)]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    Loader.add_implicit_resolver(bool_tag, _YAML12_BOOL, list("tTfF"))
    Loader.add_implicit_resolver(int_tag, _YAML12_INT, list("-+0123456789"))
    Loader.add_implicit_resolver(float_tag, _YAML12_FLOAT, list("-+0123456789."))

    def construct_int(loader, node):
        text = loader.construct_scalar(node)
        if text.startswith(("0o", "0x")):
            return int(text[2:], 8 if text[1] == "o" else 16)
        return int(text, 10)

    Loader.add_constructor(int_tag, construct_int)
    return Loader


def _json_pairs(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise CompareError(f"key {key!r} is given twice")
        out[key] = value
    return out


def _parse_tolerance_text(text: str, is_json: bool) -> Any:
    if is_json:
        return json.loads(text, object_pairs_hook=_json_pairs)
    import yaml

    return yaml.load(text, Loader=_yaml12_loader())  # noqa: S506 (a SafeLoader subclass)


def load_tolerances(path: str | Path | None) -> dict[str, Any]:
    """``{"default": spec, "metrics": {"task/metric" | "metric": spec}}`` (see ``TOLERANCE_HELP``)."""
    if path is None:
        return {"metrics": {}}
    path = Path(path)
    if not path.is_file():
        raise CompareError(f"tolerance file {path} does not exist or is not a file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise CompareError(f"tolerance file {path}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    except OSError as err:
        raise CompareError(f"tolerance file {path}: cannot read ({err.strerror or err})") from err
    try:
        data = _parse_tolerance_text(text, path.suffix.lower() == ".json")
    except CompareError as err:
        raise CompareError(f"tolerance file {path}: {err}") from err
    except Exception as err:  # YAML or JSON syntax, recursion in a crafted file: all unusable input
        reason = " ".join(str(err).split())[:300]
        raise CompareError(f"tolerance file {path}: cannot parse ({type(err).__name__}: {reason})") from err
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise CompareError(f"tolerance file {path}: expected a mapping with 'default' and/or 'metrics', got "
                           f"{type(data).__name__}")  # fmt: skip
    unknown = sorted({str(k) for k in data} - set(TOLERANCE_KEYS))
    if unknown:
        raise CompareError(f"tolerance file {path}: unknown key(s) {unknown}; the keys are {', '.join(TOLERANCE_KEYS)}")
    metrics = data.get("metrics")
    if metrics is None:
        metrics = {}
    if not isinstance(metrics, dict):
        raise CompareError(f"tolerance file {path}: 'metrics' must be a mapping of metric names to tolerances, "
                           f"got {type(metrics).__name__}")  # fmt: skip
    names = [str(k) for k in metrics]
    if len(set(names)) != len(names):  # e.g. 1 and "1", or 0.5 and "0.5"
        raise CompareError(f"tolerance file {path}: 'metrics' names a metric twice")
    data = {"default": data.get("default"), "metrics": dict(zip(names, metrics.values(), strict=True))}
    for key, spec in [("default", data["default"]), *data["metrics"].items()]:
        if spec is not None or key != "default":
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


def _number(value: Any) -> float | None:
    """``value`` as a finite float >= 0, else None (booleans, text, NaN, infinities and overflowing ints are not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) and number >= 0 else None


def _tolerance_value(spec: Any, baseline: float) -> float:
    number = _number(spec)
    if number is not None:
        return number
    if isinstance(spec, dict) and len(spec) == 1:
        (kind, value), = spec.items()
        number = _number(value)
        if kind in ("abs", "rel") and number is not None:
            return number if kind == "abs" else number * abs(baseline)
    raise CompareError(f"bad tolerance {spec!r}: use a finite number >= 0, {{abs: x}} or {{rel: x}}")


# ------------------------------------------------------------------------------------------- records
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


def _where(rec: dict) -> str:
    return rec.get("_path") or rec.get("record_id", "")


def without_superseded(records: list[dict]) -> tuple[list[dict], list[dict]]:
    """``records`` less the failures that a successful record of the same run identity supersedes (a
    ``--resume`` retry: the work is done, as ``status`` says), and those superseded failures."""
    done = {RunIdentity.from_record(r) for r in records if not is_failure(r)}
    kept, dropped = [], []
    for rec in records:
        (dropped if is_failure(rec) and RunIdentity.from_record(rec) in done else kept).append(rec)
    return kept, dropped


def conflicts(records: list[dict], side: str) -> list[str]:
    """One line per run identity whose successful records disagree on a metric (the same work, two answers)."""
    by_identity: dict[RunIdentity, list[dict]] = defaultdict(list)
    for rec in records:
        if not is_failure(rec):
            by_identity[RunIdentity.from_record(rec)].append(rec)
    lines = []
    for ident, recs in by_identity.items():
        if len(recs) < 2:
            continue
        names = sorted(set().union(*(r["metrics"] for r in recs)))
        for metric in names:
            values = [r["metrics"].get(metric) for r in recs]
            distinct = {json.dumps(v) for v in values}  # NaN == NaN here; a missing value differs from any
            if len(distinct) > 1:
                shown = ", ".join(f"{v!r} ({_where(r)})" for v, r in zip(values, recs, strict=True))
                lines.append(f"{side} records of one run ({recs[0]['backbone']['label']} / {ident.task} "
                             f"({ident.profile}), seed {ident.seed}) disagree on {metric}: {shown}; "
                             "keep the one to trust (a rerun without --resume writes a second record)")  # fmt: skip
                break
    return lines


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


def _seed_values(records: list[dict], metric: str) -> dict[int, float]:
    """One value per seed (records of one seed agree, :func:`conflicts`; the mean guards the rest)."""
    by_seed: dict[int, list[float]] = defaultdict(list)
    for rec in records:
        if metric in rec["metrics"]:
            by_seed[int(rec.get("seed", 0))].append(float(rec["metrics"][metric]))
    return {seed: statistics.fmean(v) for seed, v in sorted(by_seed.items())}


def _seeds_text(seeds) -> str:
    return ",".join(map(str, sorted(seeds)))


def _tolerance(tolerances: dict, task: str, metric: str, baseline: float, b_vals: list[float],
               paired: list[float] | None = None) -> tuple[float, str]:
    entries = tolerances.get("metrics", {})
    if f"{task}/{metric}" in entries:
        return _tolerance_value(entries[f"{task}/{metric}"], baseline), "file"
    if metric in entries:
        return _tolerance_value(entries[metric], baseline), "file"
    if tolerances.get("default") is not None:
        floor, source = _tolerance_value(tolerances["default"], baseline), "file default"
    else:
        floor, source = _tolerance_value(DEFAULT_TOLERANCE, baseline), "default 1%"
    if paired is not None and len(paired) >= 2 and all(math.isfinite(v) for v in paired):
        # seeds on both sides: each seed's difference sees the same data, so the data's own spread across seeds
        # (10 mIoU between the smoke twins' draws) cancels; the differences' spread is the comparison's noise
        spread = SPREAD_K * statistics.stdev(paired)
        if spread > floor:
            return spread, f"{SPREAD_K:g} sd of the differences on {len(paired)} shared seeds"
        return floor, source
    if len(b_vals) >= 2 and all(math.isfinite(v) for v in b_vals):
        spread = SPREAD_K * statistics.stdev(b_vals)
        if spread > floor:
            return spread, f"{SPREAD_K:g} sd of {len(b_vals)} seeds"
    return floor, source


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): value}


def _config_difference(new_recs: list[dict], base_recs: list[dict]) -> str:
    """What differs between the sides' resolved configs and task versions, e.g. ``iterations: 3 -> 300``."""
    def summary(recs):
        versions = sorted({RunIdentity.from_record(r).task_version for r in recs})
        configs = {RunIdentity.from_record(r).config_sha256: r.get("config", {}) for r in recs}
        return versions, list(configs.values())

    (b_versions, b_configs), (n_versions, n_configs) = summary(base_recs), summary(new_recs)
    parts = []
    if b_versions != n_versions:
        parts.append(f"task version {'/'.join(b_versions)} -> {'/'.join(n_versions)}")
    if len(b_configs) > 1 or len(n_configs) > 1:
        parts.append(f"{len(b_configs)} baseline and {len(n_configs)} new configs")
    b_flat, n_flat = _flat(b_configs[0]), _flat(n_configs[0])
    for key in sorted(set(b_flat) | set(n_flat)):
        if key.rsplit(".", 1)[-1] in ("checkpoint_every", "checkpoint_every_s"):
            continue
        if b_flat.get(key, "<unset>") != n_flat.get(key, "<unset>"):
            parts.append(f"{key}: {b_flat.get(key, '<unset>')!r} -> {n_flat.get(key, '<unset>')!r}")
    return "; ".join(parts[:8]) + ("; ..." if len(parts) > 8 else "") or "configs differ"


def gate(new_records: list[dict], baseline_records: list[dict], tolerances: dict | None = None) -> GateResult:
    """Every comparable metric, and everything that makes the gate fail besides a regression."""
    tolerances = tolerances or {"metrics": {}}
    result = GateResult()
    new_records, new_superseded = without_superseded(new_records)
    baseline_records, base_superseded = without_superseded(baseline_records)
    for side, dropped in (("new", new_superseded), ("baseline", base_superseded)):
        if dropped:
            result.notes.append(f"{len(dropped)} {side} record(s) of failed tasks superseded by a successful retry "
                                "of the same run")  # fmt: skip
    for rec in new_records:
        if is_failure(rec):
            result.errors.append(f"{rec['backbone']['label']} / {rec['task']} ({rec['profile']}) failed: "
                                 f"{rec['error']} [{rec.get('_path', '')}]")  # fmt: skip
    skipped = [r for r in baseline_records if is_failure(r)]
    if skipped:
        result.notes.append(f"{len(skipped)} baseline record(s) of failed tasks ignored: what they measure has "
                            "no baseline")  # fmt: skip
    new = _group([r for r in new_records if not is_failure(r)])
    base = _group([r for r in baseline_records if not is_failure(r)])
    pairs, missing = _pairs(new, base)
    failed_tasks = {(r["task"], r["profile"]) for r in new_records if is_failure(r)}
    for key in missing:
        if key[1:] not in failed_tasks:  # a failed task is already reported as such
            result.missing.append(f"baseline {_label(base[key], key[0])} / {key[1]} ({key[2]}) has no new record")
    paired_new = {n for n, _ in pairs}
    result.ungated += [f"{_label(new[k], k[0])} / {k[1]} ({k[2]}) has no baseline to gate it"
                       for k in sorted(new, key=str) if k not in paired_new]  # fmt: skip
    undeclared: set[str] = set()
    for new_key, base_key in pairs:
        new_recs, base_recs = new[new_key], base[base_key]
        new_label, base_label = _label(new_recs, new_key[0]), _label(base_recs, base_key[0])
        task = new_key[1]
        new_metrics = set().union(*(r["metrics"] for r in new_recs))
        base_metrics = set().union(*(r["metrics"] for r in base_recs))
        for metric in sorted(base_metrics - new_metrics):
            result.missing.append(f"{new_label} / {task}: baseline metric {metric!r} is missing from the new records")
        if new_metrics - base_metrics:
            result.notes.append(f"{new_label} / {task}: new metric(s) {', '.join(sorted(new_metrics - base_metrics))} "
                                "have no baseline value: not gated")  # fmt: skip
        runs = {(RunIdentity.from_record(r).task_version, RunIdentity.from_record(r).config_sha256)
                for r in new_recs + base_recs}  # fmt: skip
        if len(runs) > 1:
            result.config_changes.append(f"{new_label} / {task} ({new_key[2]}): "
                                         f"{_config_difference(new_recs, base_recs)}")  # fmt: skip
        b_seeds = {int(r.get("seed", 0)) for r in base_recs}
        n_seeds = {int(r.get("seed", 0)) for r in new_recs}
        shared = b_seeds & n_seeds
        if b_seeds != n_seeds:
            if shared:
                result.notes.append(
                    f"{new_label} / {task}: compared on seed(s) {_seeds_text(shared)}, the ones both sides have "
                    f"(baseline seeds {_seeds_text(b_seeds)}, new seeds {_seeds_text(n_seeds)})")  # fmt: skip
            else:
                result.notes.append(
                    f"{new_label} / {task}: no seed in common: the mean over baseline seeds {_seeds_text(b_seeds)} "
                    f"against the mean over new seeds {_seeds_text(n_seeds)}")  # fmt: skip
        for metric in sorted(new_metrics & base_metrics):
            b_by_seed, n_by_seed = _seed_values(base_recs, metric), _seed_values(new_recs, metric)
            common = sorted(set(b_by_seed) & set(n_by_seed))
            b_cmp = [b_by_seed[s] for s in common] if common else list(b_by_seed.values())
            n_cmp = [n_by_seed[s] for s in common] if common else list(n_by_seed.values())
            seeds = _seeds_text(common) if common else f"{_seeds_text(b_by_seed)} vs {_seeds_text(n_by_seed)}"
            baseline, value = statistics.fmean(b_cmp), statistics.fmean(n_cmp)
            direction = task_direction(task, metric)
            if direction is None:  # a task this checkout lacks: the baseline's word, never the new record's
                direction = base_recs[0]["metric_directions"].get(metric) or "higher"
                undeclared.add(task)
            stated = {r["metric_directions"].get(metric) for r in new_recs + base_recs} - {None, direction}
            if stated:  # an edited or outdated record: say so, and go by the task
                result.notes.append(f"{new_label} / {task}: records state {metric} as {'/'.join(sorted(stated))} "
                                    f"is better; compared as {direction} (the task's)")  # fmt: skip
            paired = [n_by_seed[s] - b_by_seed[s] for s in common] if len(common) >= 2 else None
            tol, source = _tolerance(tolerances, task, metric, baseline, list(b_by_seed.values()), paired)
            result.rows.append(Comparison(
                backbone=new_label if new_key == base_key else f"{new_label} vs {base_label}",
                task=task, profile=new_key[2], metric=metric, direction=direction, baseline=baseline, new=value,
                tolerance=max(tol, MIN_TOLERANCE) if math.isfinite(tol) else tol, tolerance_source=source,
                n_baseline=len(b_cmp), n_new=len(n_cmp), seeds=seeds,
            ))  # fmt: skip
    result.notes += [f"task {task} is not registered here: its metric directions come from the baseline records"
                     for task in sorted(undeclared)]  # fmt: skip
    return result


def compare(new_records: list[dict], baseline_records: list[dict], tolerances: dict | None = None):
    """Every comparable metric as a :class:`Comparison`, plus notes (including what is missing or failed)."""
    result = gate(new_records, baseline_records, tolerances)
    return result.rows, result.errors + result.missing + result.ungated + result.config_changes + result.notes


def format_comparisons(rows: list[Comparison], fmt: str = "md") -> str:
    header = ["backbone", "task", "profile", "metric", "better", "baseline", "new", "delta", "tolerance",
              "tolerance from", "status", "seeds"]  # fmt: skip
    body = [
        [c.backbone, c.task, c.profile, c.metric, c.direction, f"{c.baseline:.4f}", f"{c.new:.4f}",
         f"{c.delta:+.4f}", f"{c.tolerance:.4f}", c.tolerance_source, c.status, c.seeds]
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


def _shared_records(new: list[dict], base: list[dict]) -> str | None:
    """Why ``new`` and ``base`` are (partly) the same records: a shared file or a copied record, else None."""
    base_paths = {Path(r["_path"]).resolve() for r in base if r.get("_path")}
    same = [r["_path"] for r in new if r.get("_path") and Path(r["_path"]).resolve() in base_paths]
    if same:
        return (f"--new and --baseline share {len(same)} record file(s) (e.g. {same[0]}): the baseline would be "
                "compared with itself; give --new the new runs' folder only")  # fmt: skip
    base_ids = {r["record_id"] for r in base}
    copies = [r["_path"] for r in new if r["record_id"] in base_ids]
    if copies:
        return (f"{len(copies)} --new record(s) are copies of --baseline records (same record_id, e.g. "
                f"{copies[0]}): copied baseline records would pass as new runs")  # fmt: skip
    return None


def compare_main(new_paths, baseline_paths, tolerance_file=None, fmt: str = "md", out=print, err=None,
                 allow_config_change: bool = False) -> int:  # fmt: skip
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
        shared = _shared_records(new, base)
        if shared:
            raise CompareError(shared)
        if not any(not is_failure(r) for r in without_superseded(base)[0]):
            raise CompareError(f"the baseline gates nothing: all {len(base)} record(s) under --baseline are of "
                               "failed tasks")  # fmt: skip
        bad = conflicts(new, "new") + conflicts(base, "baseline")
        if bad:
            raise CompareError("conflicting records: " + " | ".join(bad))
        check_tolerance_names(tolerances, new + base)
        result = gate(new, base, tolerances)
        if result.config_changes and not allow_config_change:
            raise CompareError("records whose resolved config or task version differ from the baseline's are not the "
                               "same measurement (pass --allow-config-change to compare them anyway): "
                               + " | ".join(result.config_changes))  # fmt: skip
        if not result.rows and not (result.errors or result.missing):
            raise CompareError("nothing to compare: no (backbone, task) of --new has a baseline record"
                               + "".join(f"; {line}" for line in result.ungated[:5]))  # fmt: skip
    except (CompareError, RecordError) as error:
        err(f"error: {error}")
        return 2
    if result.rows:
        out(format_comparisons(result.rows, fmt))
    for note in result.notes:
        out(f"note: {note}")
    for line in result.config_changes:
        out(f"CONFIG CHANGE (allowed): {line}")
    for line in result.ungated:
        out(f"NO BASELINE: {line}")
    for line in result.missing:
        out(f"MISSING: {line}")
    for line in result.errors:
        out(f"FAILED TASK: {line}")
    bad = result.regressions
    out(f"{len(bad)} regression(s) in {len(result.rows)} metric(s)" + (": " + ", ".join(
        f"{c.task}/{c.metric}" for c in bad) if bad else "") + f"; {len(result.missing)} missing; "
        f"{len(result.errors)} failed task(s); {len(result.ungated)} without baseline")  # fmt: skip
    return result.exit_code
