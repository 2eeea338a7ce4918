"""One suite run's shared state and the running of one (backbone, task) pair: :class:`Job`.

The in-process runner (``runner.py``) and the worker processes (``workers.py``) both run pairs through
``Job.run_task``: the same claims, resume logic and records whatever the number of processes. This module
imports neither of them (they import it), so the two never import each other.
"""

from __future__ import annotations

import logging
import secrets
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sinder.models.roles import Role

from . import backbones as B
from . import distributed as D
from .checkpointing import SegmentClock
from .claims import Claim
from .identity import RunIdentity
from .preprocessing import preprocessing_of
from .progress import SuiteProgress, format_duration, headline
from .registry import Task
from .results import ResultStore, device_info, make_record, utc_now

logger = logging.getLogger(__name__)
  # the default line printer (`say`/`log`): the CLI shows INFO on stdout

@dataclass
class TaskContext:
    """What a task's ``run`` gets besides the backbone."""

    profile: str
    config: dict[str, Any]
    datasets: dict[str, Path]
    device: torch.device
    feature_cache: Path | None = None
    seed: int = 0
    num_workers: int = 0
    progress: bool = True
    amp_dtype: torch.dtype | None = torch.bfloat16
    weights_sha256: str = ""
    backbone_label: str = ""  # for display only
    work_dir: Path | None = None  # scratch space of this task (checkpoints of long trainings)
    backbone_role: dict[str, Any] = field(default_factory=dict)  # sinder.models.weights.weights_role of the backbone
    run_key: str = ""  # RunIdentity.key of this (backbone, task) run
    log: Callable[[str], None] = logger.info
    head_weights: Path | None = None  # folder of released heads to evaluate instead of training (--head-weights)
    backbone_name: str = ""  # the architecture name of the backbone spec (e.g. dinov2_vitg14)
    tensorboard_dir: Path | None = None  # run --tensorboard: where the long trainings write their scalars

    @property
    def world_size(self) -> int:
        return D.world_size()

    @property
    def rank(self) -> int:
        return D.rank()

    def dataset_root(self, name: str) -> Path:
        if name not in self.datasets:
            raise KeyError(f"dataset {name!r} was not prepared for this task: list it in datasets_needed()")
        return self.datasets[name]


@dataclass
class RunSummary:
    run_id: str
    suite: str
    profile: str
    ran: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # finished in an earlier run (--resume)
    failed: list[dict] = field(default_factory=list)
    not_available: dict[str, str] = field(default_factory=dict)  # task -> why
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """1 when a requested task failed or was not available (a gate must not pass on a missing table)."""
        return 1 if self.failed or self.not_available else 0

    def to_json(self) -> dict:
        return {
            "run_id": self.run_id, "suite": self.suite, "profile": self.profile, "ran": self.ran,
            "skipped": self.skipped, "failed": self.failed, "not_available": self.not_available, "notes": self.notes,
        }  # fmt: skip


def pair_claim(out: str | Path, key: str) -> Claim:
    """The claim a run holds on the run identity ``key`` while it works on it in the records folder ``out``."""
    return Claim(Path(out) / ".claims" / f"{key}.lock")


def split_dataset(entry: str) -> tuple[str, str | None]:
    name, _, split = entry.partition(":")
    return name, (split or None)


def _metric_directions(task: Task, metrics: dict[str, float]) -> dict[str, str]:
    """Each metric's direction as the task declares it (written into the record for readers; never read back
    by the gate, which asks the task)."""
    from .results import declared_direction

    return {key: declared_direction(task, key) for key in metrics}


@dataclass
class Job:
    """The state one suite run shares across its (backbone, task) pairs."""

    profile: str
    suite: str
    run_id: str
    roots: dict[str, Path]
    cache: Path
    device: torch.device
    seed: int
    num_workers: int
    progress: bool
    store: ResultStore
    summary: RunSummary
    say: Callable[[str], None]
    head_weights: Path | None = None
    tracker: SuiteProgress | None = None

    started: str = ""  # records of this folder created since then come from concurrent runs
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # --cfg-options by task
    tensorboard_dir: Path | None = None  # --tensorboard
    # In a worker process (jobs > 1): takes the line saying how a pair ended, which the parent prints with its
    # [k/N ...] prefix (the parent also prints a "[k/N started ...]" line as it hands a pair to a worker).
    on_outcome: Callable[[str], None] | None = None

    def _prefix(self) -> str:
        return self.tracker.prefix() + " " if self.tracker else ""

    def _done(self, task: Task, seconds: float | None) -> None:
        if self.tracker:
            self.tracker.done(task.name, seconds)

    def _outcome(self, text: str, lead: str) -> None:
        """Say how a pair ended (after ``lead``, a prefix or an indent), or hand it to the parent process."""
        if self.on_outcome is not None:
            self.on_outcome(text)
        else:
            self.say(lead + text)

    def run_task(self, task: Task, model, spec: B.BackboneSpec, resume: bool) -> None:
        sha = model.weights_sha256
        role = dict(getattr(model, "weights_role", None) or Role().as_dict())
        config = task.config(self.profile, self.overrides.get(task.name))  # recorded, and in the identity
        preprocessing = preprocessing_of(model)
        identity = RunIdentity.of(backbone_sha256=sha, role=role, task=task.name, task_version=task.version,
                                  config={**self._identity_config(task, spec, config), **preprocessing.identity_part()},
                                  seed=self.seed, profile=self.profile)  # fmt: skip
        entry = {"backbone": spec.label, "task": task.name, "weights_sha256": sha, "identity": identity.key}
        claim = pair_claim(self.store.root, identity.key)
        try:
            why_not = self._claim(claim, identity, spec, resume) if D.is_main() else None
            why_not = D.broadcast_object(why_not)
            if why_not:
                self.summary.skipped.append({**entry, "why": why_not})
                self._outcome(f"{spec.label} {task.name}: {why_not}, skipped", self._prefix())
                self._done(task, None)
                return
            self._run(task, model, spec, config, identity, role, entry, preprocessing.as_record())
        finally:
            claim.release()

    def _identity_config(self, task: Task, spec: B.BackboneSpec, config: dict[str, Any]) -> dict[str, Any]:
        """The config that identifies the run: a released head evaluated instead of training is other work
        than the trained head, so its file's hash joins the task config."""
        if self.head_weights is None:
            return config
        from sinder.models.weights import file_sha256

        head = self.head_weights / task.released_head_file(spec.name)
        return {**config, "released_head_sha256": file_sha256(head)}

    def _claim(self, claim: Claim, identity: RunIdentity, spec: B.BackboneSpec, resume: bool) -> str | None:
        """None when this process should run ``identity`` (and now holds its claim), else why not."""
        if not claim.acquire():
            return f"being run by {claim.holder()} into the same folder"
        # Without --resume only records that concurrent runs wrote since this run began count as done.
        done = self.store.find(identity, since=None if resume else self.started)
        if not done:
            return None
        if any(r["backbone"]["label"] == spec.label for r in done):
            return "already recorded" + (" (--resume)" if resume else " by a concurrent run")
        latest = max(done, key=lambda r: r["created"])
        copy = {k: v for k, v in latest.items() if k != "_path"}
        copy.update(record_id=secrets.token_hex(8), created=utc_now(), run_id=self.run_id, reused_from=latest["record_id"],
                    backbone={**latest["backbone"], "label": spec.label, "spec": spec.text, "weights": spec.weights})  # fmt: skip
        try:
            path = self.store.write(copy)
        except OSError as err:  # run it instead: that ends in a failure record if the disk is the problem
            self.say(f"{spec.label} {identity.task}: could not reuse the record of {latest['backbone']['label']!r} ({err})")
            return None
        return f"same weights recorded as {latest['backbone']['label']!r}; record reused under this label -> {path}"

    def _run(self, task, model, spec, config, identity: RunIdentity, role: dict, entry: dict,
             preprocessing: dict) -> None:  # fmt: skip
        amp_dtype = autocast_dtype(config)
        ctx = TaskContext(
            profile=self.profile, config=config, datasets=self.roots, device=self.device, amp_dtype=amp_dtype,
            feature_cache=self.cache / "features", seed=self.seed, num_workers=self.num_workers,
            progress=self.progress, weights_sha256=identity.backbone_sha256, backbone_label=spec.label,
            work_dir=self.cache / "work" / f"{task.name}-{identity.key}", log=self.say, backbone_role=role,
            run_key=identity.key,
            head_weights=self.head_weights, backbone_name=spec.name, tensorboard_dir=self.tensorboard_dir,
        )  # fmt: skip
        if self.on_outcome is None:
            if self.tracker:
                self.tracker.started(task.name)
            self.say(f"{self._prefix()}{spec.label} {task.name} ...")
        torch.manual_seed(self.seed)
        clock = SegmentClock(ctx.work_dir)  # a resumed task's wall time counts its earlier segments too
        start = time.perf_counter() - clock.start()
        used = {split_dataset(e)[0] for e in task.datasets_needed(self.profile)}
        common = dict(
            task=task.name, table=task.table, suite=self.suite, profile=self.profile, run_id=self.run_id,
            # the backbone's family and preprocessing (mean, std, resolution, patch size, pooled feature) beside it
            backbone={**spec.as_record(identity.backbone_sha256, getattr(model, "weights_source", ""), role),
                      **preprocessing},
            config=config, seed=self.seed, device=device_info(self.device, D.world_size()), identity=identity,
        )  # fmt: skip
        try:
            result = task.run(model, ctx)
            metrics = dict(result["metrics"])
            wall = time.perf_counter() - start
            if D.is_main():  # inside the error handling: a full or read-only disk fails this task, not the suite
                record = make_record(
                    **common, metrics=metrics, metric_directions=_metric_directions(task, metrics),
                    hparams=result.get("hparams", {}), wall_time_s=wall,
                    extra={"datasets": {k: str(v) for k, v in self.roots.items() if k in used},
                           **({"details": result["details"]} if result.get("details") else {}),
                           **run_deviations(config, result, self.device, amp_dtype,
                                           getattr(model, "remedy_deviations", ()))},
                )  # fmt: skip
                self.store.write(record)
                clock.finish()
                line = headline(metrics, [m.name for m in task.metrics] + sorted(metrics))
                self._outcome(f"{spec.label} {task.name}: {line or 'done'} ({format_duration(wall)})", "    ")
        except Exception as err:  # one broken task must not stop the suite; KeyboardInterrupt still does
            error = f"{type(err).__name__}: {err}"
            self.summary.failed.append({**entry, "error": error})
            self.say(f"{spec.label} {task.name}: FAILED\n{traceback.format_exc()}")
            if D.is_main():
                try:
                    failure = make_record(**common, metrics={}, metric_directions={}, hparams={},
                                          wall_time_s=time.perf_counter() - start, error=error)  # fmt: skip
                    self.say(f"{spec.label} {task.name}: failure recorded -> {self.store.write(failure)}")
                except Exception as write_err:
                    self.say(f"{spec.label} {task.name}: could not record the failure either ({write_err})")
            if self.on_outcome is not None:
                self.on_outcome(f"{spec.label} {task.name}: FAILED ({error})")
            self._done(task, time.perf_counter() - start)
            D.barrier()
            return
        self._done(task, wall)
        D.barrier()
        self.summary.ran.append(entry)


AUTOCAST = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": None}


def autocast_dtype(config: dict[str, Any]) -> torch.dtype | None:
    """The CUDA autocast dtype a task's config asks for (``autocast``: float16, bfloat16 or float32 = none);
    bfloat16 when it does not say."""
    name = config.get("autocast", "bfloat16")
    if name not in AUTOCAST:
        raise ValueError(f"config autocast={name!r}: use one of {', '.join(AUTOCAST)}")
    return AUTOCAST[name]


def run_deviations(config: dict[str, Any], result: dict[str, Any], device: torch.device, amp_dtype,
                   remedy: list[str] | tuple[str, ...] = ()) -> dict:
    """The record's ``autocast`` (the dtype the backbone actually ran in) and ``deviations``: every switch and
    deliberate departure from the reference code the backbone's remedy (``remedy_deviations``) and the task
    report, plus autocast when it differs."""
    from .features import compute_dtype_name

    ran = compute_dtype_name(device, amp_dtype)
    deviations = [*remedy, *result.get("deviations", [])]
    wanted = config.get("autocast")
    if wanted is not None and ran != wanted:
        deviations.append(f"autocast: the reference uses {wanted}, this run computed in {ran} ({device.type})")
    return {"autocast": ran, "deviations": deviations}
