"""Run records: one JSON file per (backbone, task, run), with full provenance, in an append-only store.

A record says what was measured (metrics and their direction, chosen hyper-parameters), on what (backbone spec,
label, content hash and role; task and its version; profile) and how (resolved config, seed, git commit, package
versions, device, wall time), under its run identity (``identity``, see :mod:`benchmarks.core.identity`). A task
that failed leaves a record too, with ``error`` and no metrics. Files are written atomically under a fresh name
and never overwritten, so a crash leaves either a complete record or none, and ``--resume`` can trust every
record it finds.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import platform
import re
import secrets
import subprocess
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from sinder.utils.atomic import atomic_path, remove_stale_temps

from .identity import RunIdentity
from .registry import Task, get_task

SCHEMA = "sinder-bench/run-record"
SCHEMA_VERSION = 1
REQUIRED = {
    "schema": str,
    "schema_version": int,
    "record_id": str,
    "created": str,
    "task": str,
    "profile": str,
    "backbone": dict,
    "metrics": dict,
    "metric_directions": dict,
    "hparams": dict,
    "config": dict,
    "seed": int,
    "wall_time_s": (int, float),
    "git_commit": str,
    "packages": dict,
    "device": dict,
}
# Distributions whose versions change numbers; the optional ones are recorded as null when absent.
TRACKED_PACKAGES = (
    "sinder-bench", "torch", "numpy", "pillow", "safetensors", "scikit-learn", "scipy",
    "mmsegmentation", "mmengine", "mmcv", "mmcv-lite", "pydensecrf2",
)


class RecordError(ValueError):
    """A file that is not a valid run record (names the file and what is wrong)."""


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """The commit of the checkout this code runs from, with ``+dirty`` when it has local changes; else "unknown"."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True,
            timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}+dirty" if dirty else head


@functools.lru_cache(maxsize=1)
def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    out["python"] = platform.python_version()
    return out


def device_info(device: str | Any = "cpu", world_size: int = 1) -> dict[str, Any]:
    import torch

    device = torch.device(device)
    info: dict[str, Any] = {"type": device.type, "world_size": world_size, "host": platform.node()}
    if device.type == "cuda" and torch.cuda.is_available():
        info["name"] = torch.cuda.get_device_name(device)
    else:
        info["name"] = platform.processor() or platform.machine()
        info["torch_threads"] = torch.get_num_threads()
    return info


def utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def make_record(
    *,
    task: str,
    profile: str,
    backbone: Mapping[str, Any],
    metrics: Mapping[str, float],
    metric_directions: Mapping[str, str],
    hparams: Mapping[str, Any],
    config: Mapping[str, Any],
    seed: int,
    wall_time_s: float,
    device: Mapping[str, Any],
    table: str = "",
    suite: str = "",
    run_id: str = "",
    extra: Mapping[str, Any] | None = None,
    identity: RunIdentity | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    """A complete run record (validated). ``backbone`` holds at least ``label`` and ``weights_sha256``.

    ``error``: the task failed (the record keeps what it was and why; ``metrics`` is empty).
    """
    record = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "record_id": secrets.token_hex(8),
        "run_id": run_id,
        "created": utc_now(),
        "task": task,
        "table": table,
        "suite": suite,
        "profile": profile,
        "backbone": dict(backbone),
        "metrics": {k: float(v) for k, v in metrics.items()},
        "metric_directions": dict(metric_directions),
        "hparams": _jsonable(dict(hparams)),
        "config": _jsonable(dict(config)),
        "seed": int(seed),
        "wall_time_s": float(wall_time_s),
        "git_commit": git_commit(),
        "packages": package_versions(),
        "device": dict(device),
    }
    if identity is not None:
        record["identity"] = identity.as_dict()
        record["task_version"] = identity.task_version
    if error is not None:
        record["error"] = str(error)
    if extra:
        record.update(_jsonable(dict(extra)))
    validate_record(record)
    return record


def declared_direction(task: Task, metric: str) -> str:
    """``"higher"`` or ``"lower"``: the direction ``task`` declares for ``metric`` (its ``Metric.higher_is_better``,
    the one declaration). A per-setting metric (``k10_top1``, ``sigma_3/knn_top1``) follows its base metric."""
    spec = task.metric(metric)
    direction = "higher" if spec is None or spec.higher_is_better else "lower"
    lower = {m.name for m in task.metrics if not m.higher_is_better}
    last = metric.rsplit("/", 1)[-1]
    return "lower" if last.rsplit("_", 1)[-1] in lower or last in lower else direction


def task_direction(task: str, metric: str) -> str | None:
    """The direction the registered task ``task`` declares for ``metric``; None when no such task is registered
    (its module is not in this checkout or failed to import): only then may a reader fall back to a record's."""
    try:
        return declared_direction(get_task(task), metric)
    except KeyError:
        return None


def is_failure(record: Mapping[str, Any]) -> bool:
    """A record of a task that raised (it has ``error`` and no metrics to trust)."""
    return bool(record.get("error"))


def _jsonable(value):
    """Round-trip through JSON so tuples, paths and numpy scalars become plain JSON values."""
    return json.loads(json.dumps(value, default=_json_default))


def _json_default(obj):
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def validate_record(record: Any, source: str = "record") -> None:
    """Raise :class:`RecordError` naming every problem of ``record``."""
    if not isinstance(record, dict):
        raise RecordError(f"{source}: a run record must be a JSON object, got {type(record).__name__}")
    problems = []
    if record.get("schema") != SCHEMA:
        problems.append(f"schema is {record.get('schema')!r}, expected {SCHEMA!r}")
    for key, kind in REQUIRED.items():
        if key not in record:
            problems.append(f"missing {key!r}")
        elif not isinstance(record[key], kind) or isinstance(record[key], bool) and kind is int:
            problems.append(f"{key!r} has type {type(record[key]).__name__}")
    if isinstance(record.get("schema_version"), int) and record["schema_version"] > SCHEMA_VERSION:
        problems.append(f"schema_version {record['schema_version']} is newer than this code ({SCHEMA_VERSION})")
    backbone = record.get("backbone")
    if isinstance(backbone, dict):
        for key in ("label", "weights_sha256"):
            if not isinstance(backbone.get(key), str) or not backbone.get(key):
                problems.append(f"backbone.{key} missing")
    metrics = record.get("metrics")
    if isinstance(metrics, dict):
        bad = [k for k, v in metrics.items() if not isinstance(v, (int, float)) or isinstance(v, bool)]
        if bad:
            problems.append(f"non-numeric metrics {bad}")
        directions = record.get("metric_directions") or {}
        odd = [k for k, v in directions.items() if v not in ("higher", "lower")]
        if odd:
            problems.append(f"metric_directions must be 'higher' or 'lower' (bad: {odd})")
    if "error" in record and not isinstance(record["error"], str):
        problems.append("'error' must be text")
    if problems:
        raise RecordError(f"{source}: not a valid run record: " + "; ".join(problems))


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:80] or "x"


def _write_new(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically; fail if ``path`` exists (a hard link never replaces a file)."""
    with atomic_path(path, replace=False) as tmp:
        Path(tmp).write_text(text)


class ResultStore:
    """Append-only run records under ``root/<task>/``: one JSON file each, never overwritten."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path_for(self, record: Mapping[str, Any]) -> Path:
        backbone = record["backbone"]
        stamp = record["created"].replace(":", "").replace("-", "").replace(".", "")
        key = RunIdentity.from_record(record).key
        name = (
            f"{_safe(backbone['label'])}__{key}__{_safe(record['profile'])}"
            f"__{stamp}__{record['record_id']}.json"
        )
        return self.root / _safe(record["task"]) / name

    def write(self, record: Mapping[str, Any]) -> Path:
        validate_record(dict(record))
        path = self.path_for(record)
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path.parent, recursive=False)  # left by writes that were killed
        _write_new(path, json.dumps(record, indent=2, sort_keys=True) + "\n")
        return path

    def records(self) -> list[dict[str, Any]]:
        return load_records(self.root, missing_ok=True)

    def find(self, identity: RunIdentity, since: str | None = None) -> list[dict[str, Any]]:
        """Successful records of ``identity`` (created at or after ``since``, an ISO time, when given)."""
        folder = self.root / _safe(identity.task)
        return [
            r for r in load_records(folder, missing_ok=True)
            if not is_failure(r) and RunIdentity.from_record(r) == identity and (since is None or r["created"] >= since)
        ]  # fmt: skip

    def is_done(self, identity: RunIdentity) -> bool:
        return bool(self.find(identity))


def record_files(root: str | Path) -> list[Path]:
    """Every record file under ``root`` (or ``root`` itself when it is a file); temp files are skipped."""
    root = Path(root)
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*.json") if not p.name.startswith("."))


def load_records(paths: str | Path | Iterable[str | Path], missing_ok: bool = False) -> list[dict[str, Any]]:
    """Read and validate every run record under the given files or folders (summaries are not records)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    records = []
    for root in paths:
        root = Path(root)
        if not root.exists():
            if missing_ok:
                continue
            raise RecordError(f"{root}: no such file or folder of run records")
        for path in record_files(root):
            if path.parent.name == "summaries":
                continue
            try:
                data = json.loads(path.read_bytes().decode("utf-8"))
            except UnicodeDecodeError as err:
                raise RecordError(f"{path}: not a run record: not UTF-8 text ({err.reason} at byte {err.start})") from err
            except (OSError, json.JSONDecodeError, RecursionError) as err:
                raise RecordError(f"{path}: cannot read JSON ({err})") from err
            validate_record(data, source=str(path))
            data["_path"] = str(path)
            records.append(data)
    return records
