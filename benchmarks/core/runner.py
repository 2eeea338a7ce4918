"""Run a suite of tasks on backbones and write one run record per (backbone, task).

Order of work: resolve the suite (tasks not registered in this checkout are "not available"), check every
input up front (datasets under the data root, every weights file opened against its architecture, output and
cache folders writable) and stop with ONE message listing all problems, then for each backbone load it once and
run each task, writing its record as soon as it finishes, so a crash loses at most the task in flight. With
``jobs > 1`` the pairs run that many at once in worker processes instead (``workers.py``), after the same
preparation (datasets, the smoke twin and remedies) in this process.

Each (backbone, task) is looked up by its run identity (``identity.py``): ``resume`` skips identities already
recorded (a changed seed, config or task version is new work; the same weights under another label reuse the
record, copied under the new label). Concurrent runs into one folder claim each identity first and never
repeat one another's work. A task that raises (or whose record cannot be written) gets a failure record and
the run goes on; the exit code says that something failed or was not available.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from sinder.utils.atomic import atomic_write_text, remove_stale_temps, temp_prefix, writable_problem
from sinder.utils.device import default_device
from sinder.utils.log import ensure_console, log_to_file

from . import backbones as B
from . import distributed as D
from .claims import Claim, scratch_dir
from .job import AUTOCAST, Job, RunSummary, TaskContext, autocast_dtype, run_deviations, split_dataset
from .progress import SuiteProgress, expected_durations
from .registry import PROFILES, Task, get_suite, get_task, import_errors, list_tasks
from .results import ResultStore, utc_now

logger = logging.getLogger(__name__)

_Job = Job  # moved to job.py (the runner and the workers both import it); importable from here as before
__all__ = ["AUTOCAST", "CACHE_ENV", "DATA_ENV", "Job", "PreflightError", "RunSummary", "TaskContext",
           "autocast_dtype", "default_cache_dir", "format_summary", "prepare_datasets", "released_head_problems",
           "run_deviations", "run_suite"]  # fmt: skip

DATA_ENV = "SINDER_BENCH_DATA"
CACHE_ENV = "SINDER_BENCH_CACHE"


class PreflightError(RuntimeError):
    """Inputs of a run are missing; the message lists every one of them."""


def default_cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sinder-bench"


def _dataset_dirname(name: str) -> str:
    try:
        from benchmarks.data import DATASETS

        return DATASETS[name].root_name if name in DATASETS else name
    except ImportError:
        return name


def _download_hint(name: str) -> str:
    """A ``fix:`` line saying where to get dataset ``name``, as ``sinder-bench data check`` does (empty if unknown)."""
    try:
        from benchmarks.data import DATASETS
    except ImportError:
        return ""
    return f"\n    fix: {DATASETS[name].fix_hint()}" if name in DATASETS else ""


def _check_dataset(name: str, root: Path, split: str | None) -> str | None:
    """None when ``split`` of ``name`` opens at ``root`` (layout check, no decoding), else the problem."""
    if not root.is_dir():
        return f"dataset {name}: folder {root} does not exist{_download_hint(name)}"
    if split is None:
        return None
    try:
        from benchmarks.data import open_dataset
    except ImportError:
        return None
    try:
        open_dataset(name, root, split)
    except Exception as err:  # the loaders raise DatasetLayoutError subclasses with the fix in the message
        return f"dataset {name} ({split}): {err}"
    return None


def _synthesize(task: Task, name: str, root: Path, seed: int) -> None:
    """Write the synthetic twin of ``name`` into ``root`` atomically (build in a temp dir, then rename).

    Builders of one folder take turns through a claim; staging folders of a killed build are removed.
    """
    root.parent.mkdir(parents=True, exist_ok=True)
    claim = Claim(root.parent / f".{root.name}.lock")
    while not claim.acquire():
        time.sleep(0.5)  # another process is building it
    try:
        if root.is_dir():
            return
        remove_stale_temps(root.parent, recursive=False)  # staging folders of a killed build
        tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=temp_prefix(root.name)))
        try:
            if callable(getattr(task, "synthesize", None)):  # a task with data of its own
                task.synthesize(name, tmp, seed)
            else:
                try:
                    from benchmarks.data.synth import write_synthetic
                except ImportError as err:
                    raise PreflightError(f"no synthetic twin of dataset {name!r}: benchmarks.data.synth ({err})") from err
                write_synthetic(name, tmp, seed=seed)
            os.rename(tmp, root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        claim.release()


def prepare_datasets(
    tasks: Sequence[Task], profile: str, data_root: Path | None, cache_dir: Path, seed: int
) -> tuple[dict[str, Path], list[str]]:
    """Dataset name -> folder for every dataset the tasks need, and the list of problems found."""
    problems: list[str] = []
    roots: dict[str, Path] = {}
    needed: list[tuple[Task, str, str | None]] = []
    for task in tasks:
        for entry in task.datasets_needed(profile):
            needed.append((task, *split_dataset(entry)))
    if profile == "smoke":
        for task, name, _ in needed:
            if name in roots:
                continue
            root = cache_dir / "synth" / f"{name}-seed{seed}"
            if not root.is_dir():
                if D.is_main():
                    try:
                        _synthesize(task, name, root, seed)
                    except PreflightError as err:
                        problems.append(str(err))
                D.barrier()
            roots[name] = root
        return roots, problems
    if data_root is None:
        if needed:
            names = sorted({name for _, name, _ in needed})
            problems.append(
                f"no data root: pass --data-root DIR or set {DATA_ENV}; the suite needs datasets {', '.join(names)}"
            )
        return roots, problems
    for _, name, split in needed:
        root = data_root / _dataset_dirname(name)
        roots[name] = root
        problem = _check_dataset(name, root, split)
        if problem and problem not in problems:
            problems.append(problem)
    return roots, problems


def _resolve_tasks(names: Sequence[str]) -> tuple[list[Task], dict[str, str]]:
    available, missing = [], {}
    registered = set(list_tasks())
    errors = import_errors()
    for name in names:
        if name in registered:
            available.append(get_task(name))
        else:
            why = "not registered in this checkout"
            if errors:
                why += " (task modules that failed to import: " + "; ".join(f"{m}: {e}" for m, e in errors.items()) + ")"
            missing[name] = why
    return available, missing


def _preflight_failed(suite: str, profile: str, problems: list[str]):
    if len(problems) == 1 and "\n" not in problems[0]:  # one bad input: one line
        raise PreflightError(f"cannot start suite {suite!r} (profile {profile}): {problems[0]}")
    raise PreflightError(
        f"cannot start suite {suite!r} (profile {profile}): {len(problems)} missing or invalid input(s):\n  - "
        + "\n  - ".join(problems)
    )


def run_suite(
    suite: str,
    backbones: Sequence[str] | None = None,
    *,
    profile: str = "paper",
    data_root: str | Path | None = None,
    out: str | Path = "results/runs",
    cache_dir: str | Path | None = None,
    resume: bool = False,
    device: str | None = None,
    seed: int = 0,
    num_workers: int = 0,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    head_weights: str | Path | None = None,
    cfg_options: dict[str, Any] | None = None,
    models: Mapping[str, torch.nn.Module] | None = None,
    jobs: int = 1,
    tensorboard_dir: str | Path | None = None,
    seed_pass: tuple[int, int] | None = None,
) -> RunSummary:
    """Run ``suite`` on ``backbones`` (specs; smoke default: the defective tiny model and its repaired twin).

    ``cfg_options`` (``--cfg-options``): ``{"<task>.<key>": value}`` set over the task's profile; an unknown
    task or key is a preflight error. ``models``: backbones already built, by label: any module with the
    members of ``sinder.models.backbone.Backbone`` (not necessarily our ViT), benchmarked after the specs' and
    recorded under their label. ``jobs``: run up to this many (backbone, task) pairs at once, in worker
    processes (``benchmarks/core/workers.py``); 1 runs them one after the other in this process. The workers
    are spawned: a script calling this with ``jobs > 1`` needs the ``if __name__ == "__main__":`` guard.
    ``tensorboard_dir``: the long trainings write their loss and lr scalars there (``benchmarks.core.scalars``).
    ``seed_pass``: (k, n) when this run is the k-th (from 1) of n seeds (``benchmarks.core.seeds.run_seeds``):
    its run id (log and summary names) says the seed, and the disk preflight counts room for the n - k + 1
    seeds still to run.
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; use one of {', '.join(PROFILES)}")
    if jobs < 1:
        raise ValueError(f"jobs={jobs}: give 1 or more")
    if jobs > 1 and models:
        raise ValueError("run_suite(models=...) runs the given modules in this process: use jobs=1")
    if log is None:
        ensure_console()  # a script that set up no logging still sees the run's lines, as the CLI does
    say = log or (lambda msg: logger.info(msg) if D.is_main() else None)
    from sinder.utils.device import device_problem

    if device_problem(device):  # before anything touches the device
        raise PreflightError(device_problem(device))
    device_t = torch.device(default_device(device))
    D.init_from_env(device_t)
    if jobs > 1 and D.is_distributed():
        from .workers import distributed_refusal

        raise ValueError(distributed_refusal(jobs))
    if device_t.type == "cuda" and D.is_distributed():
        device_t = torch.device("cuda", torch.cuda.current_device())
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    if D.is_main():  # temp files and folders of killed runs (ours are named by host and pid: see sinder.utils.atomic)
        for folder, recursive in ((cache, True), (Path(tempfile.gettempdir()), False)):
            remove_stale_temps(folder, recursive=recursive)
    if data_root is None and os.environ.get(DATA_ENV):
        data_root = os.environ[DATA_ENV]
    data_root = Path(data_root).expanduser() if data_root else None

    suite_obj = get_suite(suite)
    tasks, unavailable = _resolve_tasks(suite_obj.tasks)
    tag = f"-seed{seed}" if seed_pass else ""  # passes of one process can start within the same second
    run_id = D.broadcast_object(time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}{tag}")
    summary = RunSummary(run_id=run_id, suite=suite, profile=profile, not_available=unavailable)
    for name, why in unavailable.items():
        say(f"task {name}: not available ({why}); skipped")

    # ---- preflight: every missing input in one message, before any work
    problems: list[str] = []
    if backbones:
        specs = []
        for text in backbones:
            try:
                specs.append(B.parse_backbone_spec(text))
            except ValueError as err:
                problems.append(str(err))
    elif profile == "smoke" and not models:
        specs = B.smoke_specs()
    else:
        specs = []
        if not models:
            problems.append("no backbone: pass --backbone SPEC (e.g. dinov2_vitg14); only --profile smoke has defaults")
    problems += _duplicate_labels(specs)
    problems += [p for p in (B.backbone_problem(s) for s in specs) if p]
    bases = _smoke_bases(specs, bool(backbones), bool(models), profile, suite_obj)  # get the twin and remedies
    given, model_problems = B.given_models(models or {})
    problems += model_problems
    specs += list(given)
    problems += [p for p in (writable_problem(Path(out).expanduser(), "output folder (--out)"),
                             writable_problem(cache, "cache folder (--cache-dir)")) if p]  # fmt: skip
    overrides, option_problems = _task_overrides(cfg_options or {}, tasks, unavailable, suite)
    problems += option_problems
    configs: dict[str, dict[str, Any]] = {}
    for task in tasks:
        try:
            configs[task.name] = task.config(profile, overrides.get(task.name))
            autocast_dtype(configs[task.name])
        except ValueError as err:
            problems.append(str(err))
    smoke_extras = {base: ["repaired twin", *(suite_obj.meta.get("smoke_remedies") or [])] for base in bases}
    seeds_left = seed_pass[1] - seed_pass[0] + 1 if seed_pass else 1
    problems += _disk_problems(Path(out).expanduser(), cache, tasks, specs, given, configs, profile, data_root, seed,
                               smoke_extras, seeds_left)  # fmt: skip
    head_dir = Path(head_weights).expanduser() if head_weights else None
    if head_dir is not None:
        problems += released_head_problems(tasks, specs, head_dir)
    if profile == "smoke" and problems:
        _preflight_failed(suite, profile, problems)  # before synthesizing any data
    roots, data_problems = prepare_datasets(tasks, profile, data_root, cache, seed)
    problems += data_problems
    if problems:
        _preflight_failed(suite, profile, problems)
    # every line of the run (workers' included: they come back through ``say``) also goes to <out>/logs/<run>.log
    run_log = log_to_file(Path(out).expanduser() / "logs" / f"{run_id}.log") if D.is_main() else contextlib.nullcontext()
    with run_log, scratch_dir(cache / "tmp", f"{run_id}-r{D.rank()}"):  # temp files of this run; a killed run's are removed
        added = {}
        for base in bases:  # the smoke twin and remedies, made after the preflight, listed after their base
            twin = B.repaired_twin(base, cache, say) if D.is_main() else None
            D.barrier()
            twin = D.broadcast_object(twin)
            remedies = list(suite_obj.meta.get("smoke_remedies") or [])  # each remedy makes its own (Remedy.smoke_args)
            # Each remedy is made once from seed 0's data, as the SINDER twin is, so that runs of other seeds
            # evaluate the same remedy and the tables can average it over seeds.
            extra = B.smoke_remedies(base, remedies, cache, 0, say) if D.is_main() and remedies else []
            if suite_obj.meta.get("smoke_register_release"):  # the base's register release, where one is shipped
                extra += B.smoke_register_release(base)
            D.barrier()
            # a test may leave the twin out
            added[base] = [*([twin] if twin is not None else []), *D.broadcast_object(extra)]
        specs = [s for spec in specs for s in (spec, *added.get(spec, []))]

        store = ResultStore(out)
        # Tasks that repair their input (Tables 6-7) run on the first backbone only: the paper applies them to DINOv2.
        plan = [(spec, [t for t in tasks if i == 0 or not getattr(t, "first_backbone_only", False)])
                for i, spec in enumerate(specs)]  # fmt: skip
        for task in tasks:
            if getattr(task, "first_backbone_only", False) and len(specs) > 1:
                summary.notes.append(f"{task.name} ran on {specs[0].label} only (it repairs the un-repaired backbone)")
        try:
            expected = expected_durations(store.records(), profile)
        except ValueError:  # an unreadable earlier record: no estimate from the records, the run still goes on
            expected = {}
        pairs = sum(len(ts) for _, ts in plan)
        from .workers import smoke_expected  # measured smoke times scaled by cores where no record says more

        guesses = smoke_expected(expected, profile, min(jobs, pairs) or 1, torch.get_num_threads())
        tracker = SuiteProgress([t.name for _, ts in plan for t in ts], guesses, parallel=min(jobs, pairs) or 1)
        job = Job(profile, suite, run_id, roots, cache, device_t, seed, num_workers, progress, store,
                  summary, say, head_dir, tracker, started=utc_now(), overrides=overrides,
                  tensorboard_dir=Path(tensorboard_dir).expanduser() if tensorboard_dir else None)  # fmt: skip
        if jobs > 1 and pairs > 1:
            from .workers import run_in_workers

            run_in_workers(job, plan, resume, jobs, expected)
            plan = []
        for spec, spec_tasks in plan:
            model = None
            for task in spec_tasks:
                if model is None:
                    model = given[spec].to(device_t).eval() if spec in given else B.load(spec, device=device_t)
                job.run_task(task, model, spec, resume)
            del model
            if device_t.type == "cuda":
                torch.cuda.empty_cache()  # the next backbone may be as large as this one
    if D.is_main():
        try:
            _write_summary(Path(out), summary)
        except OSError as err:
            say(f"could not write the run summary into {out}: {err}")
    return summary


def _smoke_bases(specs: Sequence[B.BackboneSpec], named: bool, models: bool, profile: str,
                 suite_obj) -> list[B.BackboneSpec]:  # fmt: skip
    """The backbones whose SINDER twin and smoke remedies (suite key ``smoke_remedies``) the smoke profile adds:
    the default stand-in when no backbone is named; with ``--backbone``, each named one without a remedy of its own
    for a suite that lists remedies (the remedies suite: every remedy beside each base, issue 21 item 5)."""
    if profile != "smoke" or not specs:
        return []
    if not named and not models:
        return [specs[0]]
    if named and suite_obj.meta.get("smoke_remedies"):
        return [spec for spec in specs if not spec.remedy]
    return []


def _disk_problems(out: Path, cache: Path, tasks, specs, given, configs, profile: str, data_root: Path | None,
                   seed: int, smoke_extras: Mapping[Any, Sequence[str]], seeds: int = 1) -> list[str]:  # fmt: skip
    """A problem for a folder whose disk cannot take what the run will write (``benchmarks.core.disk``: each
    task's estimate per backbone, the records, a copy of the weights per remedied backbone and per smoke
    extra), checked before any work so a run never dies with ENOSPC half-way. ``seeds``: runs of this plan
    still to come (``--seeds``), each writing its own records, caches and data; the weight copies are made once."""
    from .disk import free_space_problems, run_disk_needs, size_of_model, size_of_spec

    sizes = {spec: size_of_model(given[spec]) if spec in given else size_of_spec(spec) for spec in specs}
    plan = [(spec, [t for t in tasks if i == 0 or not getattr(t, "first_backbone_only", False)])
            for i, spec in enumerate(specs)]  # fmt: skip
    copies = [spec for spec in specs if spec.remedy]
    for base, extras in smoke_extras.items():  # the smoke twin and remedies of a base: its size, every task
        for extra in extras:
            stand_in = f"{base.label}+{extra}"
            sizes[stand_in] = sizes.get(base)
            plan.append((stand_in, [t for t in tasks if not getattr(t, "first_backbone_only", False)]))
            copies.append(stand_in)
    needs = run_disk_needs(plan, sizes, configs, _image_counter(profile, data_root, cache, seed), profile=profile,
                           copies=copies, seeds=seeds)  # fmt: skip
    return free_space_problems(out, cache, needs)


def _image_counter(profile: str, data_root: Path | None, cache: Path, seed: int) -> Callable[[str], int]:
    """``count("name:split")``: the images of a split, from its folder when it is there (the paper's data, a
    smoke twin already written), else the smoke twin's defaults; 0 when unknown (its problem is reported)."""
    import functools

    @functools.cache
    def count(entry: str) -> int:
        name, split = split_dataset(entry)
        if profile == "smoke":
            root = cache / "synth" / f"{name}-seed{seed}"
        else:
            root = data_root / _dataset_dirname(name) if data_root is not None else None
        if root is not None and root.is_dir() and split:
            try:
                from benchmarks.data import open_dataset

                return len(open_dataset(name, root, split))
            except Exception:  # a bad layout is the dataset check's to report
                pass
        if profile == "smoke":
            try:
                from benchmarks.data.specs import REGISTRY

                defaults = REGISTRY.get(name).twin_module().DEFAULTS  # n_train / n_val: per class where it has classes
                return int(defaults["n_train" if split == "train" else "n_val"]) * int(defaults.get("n_classes", 1))
            except Exception:  # a task's own data (Task.synthesize): not counted
                return 0
        return 0

    return count


def _duplicate_labels(specs) -> list[str]:
    """A problem for each label given to two different backbones: records and tables would mix them."""
    seen: dict[str, Any] = {}
    problems = []
    for spec in specs:
        other = seen.setdefault(spec.label, spec)
        if other is not spec and (other.name, other.weights, other.remedy, other.remedy_args) != (
                spec.name, spec.weights, spec.remedy, spec.remedy_args):  # fmt: skip
            problems.append(f"backbone label {spec.label!r} names two backbones ({other.text!r} and {spec.text!r}): "
                            "give each its own label, LABEL=SPEC")  # fmt: skip
    return problems


def _task_overrides(options: dict[str, Any], tasks: Sequence[Task], unavailable: dict[str, str],
                    suite: str) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """``--cfg-options`` split by task, and a problem for each option naming no task of the suite."""
    from .task_config import split_by_task

    try:
        by_task = split_by_task(options)
    except ValueError as err:
        return {}, [str(err)]
    names = [t.name for t in tasks] + list(unavailable)
    problems = [f"--cfg-options {name}.{', '.join(keys)}: suite {suite} has no task {name!r}; its tasks: "
                f"{', '.join(names)}" for name, keys in by_task.items() if name not in names]  # fmt: skip
    return by_task, problems


def released_head_problems(tasks: Sequence[Task], specs, head_dir: Path) -> list[str]:
    """What is missing to evaluate released heads from ``head_dir``: the folder, a task without released heads,
    or a head file (named with where the release lives)."""
    if not head_dir.is_dir():
        return [f"--head-weights {head_dir}: folder does not exist"]
    problems = []
    for task in tasks:
        name_of = getattr(task, "released_head_file", None)
        if name_of is None:
            problems.append(f"task {task.name}: no released head to evaluate; run it without --head-weights")
            continue
        for spec in specs:
            path = head_dir / name_of(spec.name)
            if not path.is_file():
                problems.append(f"released head {path} is missing: DINOv2 publishes it as "
                                f"https://dl.fbaipublicfiles.com/dinov2/{spec.name}/{path.name}")  # fmt: skip
    return problems


def _write_summary(out: Path, summary: RunSummary) -> Path:
    path = out / "summaries" / f"{summary.run_id}.json"
    atomic_write_text(path, json.dumps({**summary.to_json(), "finished": utc_now()}, indent=2))
    return path


def format_summary(summary: RunSummary) -> str:
    lines = [
        f"suite {summary.suite} (profile {summary.profile}): {len(summary.ran)} ran, "
        f"{len(summary.skipped)} already recorded, {len(summary.failed)} failed, "
        f"{len(summary.not_available)} not available"
    ]
    lines += [f"  failed: [{f['backbone']}] {f['task']}: {f['error']}" for f in summary.failed]
    lines += [f"  not available: {name} ({why})" for name, why in summary.not_available.items()]
    lines += [f"  skipped: [{s['backbone']}] {s['task']}: {s['why']}" for s in summary.skipped
              if s.get("why", "").startswith("being run")]  # fmt: skip
    lines += [f"  note: {note}" for note in summary.notes]
    return "\n".join(lines)
