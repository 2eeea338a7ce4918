"""Tables 6 and 7: the repair ablations, as settings of the same SINDER code.

Each row of a table is a RepairConfig override. The task repairs the backbone it is given once per row
(resumable, in the task's work folder), then evaluates the repaired backbone with the tasks the paper uses:
ImageNet KNN (``imagenet_knn``) and ADE20k linear segmentation (``seg_ade20k_linear``), recording
``<row>/knn_top1``, ``<row>/knn_top5``, ``<row>/ade20k_miou`` and ``<row>/ade20k_aacc``. A row whose repaired
weights equal an earlier row's reports that row's evaluations (``details.same_weights_as``). The unrepaired
backbone is evaluated first, as row ``base`` (``base/knn_top1``, ...), so each row's effect over it is measured
in the same run and under the same evaluation protocol.

What each row ran is recorded in ``hparams[row]["setting"]``, the knobs that name a row in the paper (trainable,
lambda = limit_layers of ``blocks``, sigma, mu), resolved: after the smoke base and the scaling of lambda to the
backbone's depth; ``hparams[row]["paper_setting"]`` is the same row of the paper profile resolved for ViT-g/14
(40 blocks). The report labels every row from these (benchmarks.core.report.setting_label), never from the row
key, and shows the paper's label beside ours where they differ.

A profile holds ``settings`` (row -> RepairConfig overrides), ``repair`` (the settings each row starts from:
``official``, RepairConfig's defaults, or ``smoke``, sinder.repair.config.SMOKE_CONFIG), ``evaluations`` (the
tasks that evaluate each repaired backbone) and ``evaluation_overrides`` (evaluation -> changes to that task's
``overrides``). Every row is checked as ``sinder repair --config`` checks a file (RepairConfig.from_mapping)
when the config is read, so a bad row stops the run at preflight, before any repair.

Profile ``paper``: the official repair (30k ImageNet train images at 518 px) per row, the evaluations' paper
protocols. Profile ``smoke``: the short smoke repair on synthetic photographs, with lambda scaled by the
backbone's depth (the paper's 15/10/5 of 40 blocks), and the evaluations' smoke protocols, ADE20k's
shortened further by the profile's ``evaluation_overrides`` (fewer iterations, the first val images only).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from typing import Any

from benchmarks.core import distributed as D
from benchmarks.core.registry import Metric, Task, get_task, register_task
from benchmarks.core.report import BASE_ROW  # the unrepaired backbone's row, evaluated first (not a setting)

# Each task's rows (RepairConfig overrides) are its profile's ``settings``: profiles/<task>/paper.yaml.
# The evaluations a profile may name (its ``evaluations``), each with its metrics as the ablation records them.
EVALUATIONS: dict[str, dict[str, str]] = {
    "imagenet_knn": {"top1": "knn_top1", "top5": "knn_top5"},
    "seg_ade20k_linear": {"miou": "ade20k_miou", "aacc": "ade20k_aacc"},
}
# A profile's ``repair``: the RepairConfig values each row starts from, and whether lambda is scaled from the
# paper's 40 blocks to the backbone's depth (the smoke repair runs on tiny backbones).
REPAIR_BASES = ("official", "smoke")
PAPER_DEPTH = 40  # ViT-g/14, the backbone of every ablation in the paper
# Table 6's first rows damage the model (KNN 6.6% in the paper) and meet non-finite steps: every ablation
# repair skips them as the official code does (our default for a single repair is to stop), and records it.
ABLATION_POLICY: dict[str, Any] = {"on_nonfinite": "skip"}
# The RepairConfig fields that tell the rows of Tables 6 and 7 apart, recorded resolved per row (``setting``).
SETTING_FIELDS = ("trainable", "limit_layers", "sigma", "mu")


def resolved_setting(config, depth: int) -> dict[str, Any]:
    """The knobs that name a row of Tables 6-7, as ``config`` (a resolved RepairConfig) runs them on a backbone of
    ``depth`` blocks: what the report labels the row with."""
    return {**{name: getattr(config, name) for name in SETTING_FIELDS}, "blocks": int(depth)}


def ablation_config(overrides: dict[str, Any], repair: str, depth: int):
    """The RepairConfig of one ablation row: the ``repair`` base (a profile's ``repair``: ``official`` or
    ``smoke``), the row's overrides, and the official non-finite policy; checked as ``sinder repair --config``
    checks a file (a ValueError names the field)."""
    from sinder.repair.config import SMOKE_CONFIG, RepairConfig

    if repair not in REPAIR_BASES:
        raise ValueError(f"repair: {repair!r}; expected one of {', '.join(REPAIR_BASES)}")
    if not isinstance(overrides, dict):
        raise ValueError(f"{overrides!r} is not a mapping of RepairConfig fields")
    if repair == "smoke":
        return RepairConfig.from_mapping({**scaled_overrides(overrides, depth), **ABLATION_POLICY}, base=SMOKE_CONFIG)
    return RepairConfig.from_mapping({**overrides, **ABLATION_POLICY})


def check_profile(config: dict[str, Any], where: str) -> None:
    """A ValueError (naming ``where`` and the key) unless ``config`` is a valid ablation profile: its
    ``repair`` a known base, its ``evaluations`` known and distinct, its ``evaluation_overrides`` for those
    evaluations only, and every row of ``settings`` a valid repair config over that base."""
    repair = config.get("repair")
    if repair not in REPAIR_BASES:
        raise ValueError(f"{where}: repair: {repair!r}; expected one of {', '.join(REPAIR_BASES)}")
    evaluations = config.get("evaluations")
    if (not isinstance(evaluations, list) or not evaluations or len(set(evaluations)) != len(evaluations)
            or not set(evaluations) <= set(EVALUATIONS)):
        raise ValueError(f"{where}: evaluations: {evaluations!r}; expected a list of distinct names among "
                         f"{', '.join(EVALUATIONS)}")  # fmt: skip
    extra = config.get("evaluation_overrides") or {}
    if not isinstance(extra, dict) or not set(extra) <= set(evaluations):
        raise ValueError(f"{where}: evaluation_overrides: {extra!r}; expected a mapping from evaluations in "
                         f"this profile ({', '.join(evaluations)}) to their overrides")  # fmt: skip
    settings = config.get("settings")
    if not isinstance(settings, dict) or not settings:
        raise ValueError(f"{where}: settings: expected a mapping of rows to RepairConfig overrides")
    if BASE_ROW in settings:
        raise ValueError(f"{where}: settings.{BASE_ROW}: the name of the unrepaired backbone's row; rename the row")
    for row, overrides in settings.items():
        try:
            ablation_config(overrides, repair, PAPER_DEPTH)
        except ValueError as err:
            raise ValueError(f"{where}: settings.{row}: {err}") from None


def scaled_overrides(overrides: dict[str, Any], depth: int) -> dict[str, Any]:
    """Scale lambda from the paper's 40 blocks to ``depth`` (at least 1); other values unchanged."""
    out = dict(overrides)
    if out.get("limit_layers"):
        out["limit_layers"] = max(1, round(out["limit_layers"] * depth / PAPER_DEPTH))
    return out


def _check_evaluation_overrides(task_name: str, profile: str, extra: Any, where: str) -> None:
    """``evaluation_overrides.<task>`` checked as that task checks its own ``overrides`` (types and ranges), so
    ``iterations=0`` stops the run at preflight; skipped where the evaluation cannot resolve its config here
    (not in this checkout, or its packages missing: run() notes it)."""
    if not isinstance(extra, dict):
        raise ValueError(f"{where}: evaluation_overrides.{task_name}: {extra!r}; expected a mapping")
    try:
        task = get_task(task_name)
    except KeyError:
        return
    try:
        task.config(profile, {f"overrides.{key}": value for key, value in extra.items()})
    except TypeError:
        return  # a task whose config takes no overrides (a stand-in): nothing to check against
    except ValueError as err:
        if "not installed" in str(err):
            return
        raise ValueError(f"{where}: evaluation_overrides.{task_name}: {err}") from None


class _AblationTask(Task):
    version = "2"  # 2: the unrepaired backbone's row (base) and each row's resolved setting in the record
    first_backbone_only = True  # each row repairs DINOv2 itself; a repaired twin would be repaired twice

    def config(self, profile: str, overrides=None) -> dict[str, Any]:
        """The profile, checked (check_profile) after ``overrides``: the runner's preflight reads it."""
        config = super().config(profile, overrides)
        where = f"task {self.name} (profile {profile})"
        check_profile(config, where)
        for task_name, extra in (config.get("evaluation_overrides") or {}).items():
            _check_evaluation_overrides(task_name, profile, extra, where)
        return config

    @property
    def settings(self) -> dict[str, dict[str, Any]]:
        return self.config("paper")["settings"]

    @property
    def metrics(self):
        return tuple(Metric(f"{row}/{metric}", True) for row in (BASE_ROW, *self.settings)
                     for task_name in self.config("paper")["evaluations"]
                     for metric in EVALUATIONS[task_name].values())  # fmt: skip

    def datasets_needed(self, profile: str) -> list[str]:
        config = self.config(profile)
        needed = ["imagenet:train"] if config["repair"] == "official" else []  # the repair's images
        for task_name in config["evaluations"]:
            try:
                needed += get_task(task_name).datasets_needed(profile)
            except KeyError:
                pass  # that evaluation is not in this checkout; run() notes it
        return list(dict.fromkeys(needed))

    def _repair(self, backbone, overrides: dict[str, Any], ctx, row: str, directions: dict | None = None):
        from sinder.models.weights import read_state_dict, save_state_dict
        from sinder.repair.run import RepairRun
        from sinder.repair.smoke import repair_for_smoke

        model = copy.deepcopy(backbone)
        config = ablation_config(overrides, ctx.config["repair"], len(model.blocks))
        work = ctx.work_dir / f"repair-{row}"
        repaired = work / "repaired.safetensors"  # under torchrun: how the other ranks get rank 0's repair

        def repair() -> dict[str, Any]:
            nu = _shared_directions(backbone, config, ctx.device, {} if directions is None else directions)
            nonfinite_steps = None
            if ctx.config["repair"] == "smoke":
                repair_for_smoke(model, config=config, seed=ctx.seed, directions=nu)  # in place
            else:
                from sinder.utils.images import list_images, load_image, stride_subset

                images = stride_subset(list_images(ctx.dataset_root("imagenet") / "train"), config.num_images)
                load = functools.partial(load_image, resolution=config.resolution, patch_size=model.patch_size)
                run = RepairRun(model, images, config, work, load, directions=nu, device=ctx.device,
                                progress=ctx.progress)  # fmt: skip
                result = run.run(resume=(work / "checkpoint.pt").is_file())
                model.load_state_dict(result.state_dict)
                nonfinite_steps = result.nonfinite_steps
            if D.is_distributed():
                save_state_dict(model.state_dict(), repaired, force=True)
            return {"nonfinite_steps": nonfinite_steps}

        # Algorithm 1 is single-image SGD: rank 0 repairs, the other ranks wait for its weights (a ViT-g repair
        # outlasts any collective's timeout, see made_by_main_rank), then every rank shards the evaluations.
        made = D.made_by_main_rank(work, repair)
        if not D.is_main():
            model.load_state_dict(read_state_dict(repaired))
        return model, config, made["nonfinite_steps"]

    def run(self, backbone, ctx) -> dict[str, Any]:
        from sinder.models.weights import state_dict_sha256

        metrics: dict[str, float] = {}
        hparams: dict[str, Any] = {}
        missing = []
        directions: dict = {}  # every row repairs the same backbone: its defect directions are computed once
        # A row whose repair ends at an earlier row's weights (e.g. a threshold that changes no step) gets that
        # row's evaluations: same weights, config and seed. (weights sha256, evaluation) -> (row, result)
        evaluated: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}
        same_weights: dict[str, str] = {}
        depth = len(backbone.blocks)
        paper_settings = self.config("paper")["settings"]

        def evaluate(row: str, model, sha: str) -> None:
            for task_name in ctx.config["evaluations"]:
                names = EVALUATIONS[task_name]
                try:
                    task = get_task(task_name)
                except KeyError:
                    missing.append(task_name)
                    continue
                sub_config = copy.deepcopy(task.config(ctx.profile))
                extra = (ctx.config.get("evaluation_overrides") or {}).get(task_name)
                if extra:
                    sub_config["overrides"] = {**(sub_config.get("overrides") or {}), **extra}
                # the row in the label: each row's training gets its own --tensorboard folder
                sub_ctx = dataclasses.replace(ctx, config=sub_config, weights_sha256=sha,
                                              work_dir=ctx.work_dir / f"{task_name}-{row}",
                                              backbone_label=f"{getattr(ctx, 'backbone_label', '')}-{row}")
                if (sha, task_name) in evaluated:
                    same_weights[row], result = evaluated[(sha, task_name)]
                else:
                    result = task.run(model, sub_ctx)
                    evaluated[(sha, task_name)] = (row, result)
                for source, target in names.items():
                    metrics[f"{row}/{target}"] = float(result["metrics"][source])

        ctx.log(f"{self.name}: evaluating the unrepaired backbone ({BASE_ROW}, {depth} blocks)")
        hparams[BASE_ROW] = {"setting": None, "blocks": depth}
        evaluate(BASE_ROW, backbone, state_dict_sha256(backbone.state_dict()))
        for row, overrides in ctx.config["settings"].items():
            # the resolved setting (smoke base, lambda scaled to this depth), not the profile's overrides
            setting = resolved_setting(ablation_config(overrides, ctx.config["repair"], depth), depth)
            ctx.log(f"{self.name}: repairing with {row}: {setting}")
            repaired, config, nonfinite_steps = self._repair(backbone, overrides, ctx, row, directions)
            hparams[row] = {**config.differences_from_official(), "on_nonfinite": config.on_nonfinite,
                            "setting": resolved_setting(config, depth)}  # fmt: skip
            if row in paper_settings:
                hparams[row]["paper_setting"] = resolved_setting(
                    ablation_config(paper_settings[row], "official", PAPER_DEPTH), PAPER_DEPTH)
            if nonfinite_steps is not None:
                hparams[row]["nonfinite_steps_skipped"] = nonfinite_steps
            evaluate(row, repaired, state_dict_sha256(repaired.state_dict()))
        out: dict[str, Any] = {"metrics": metrics, "hparams": hparams}
        details: dict[str, Any] = {}
        if missing:
            details["evaluations_not_available"] = sorted(set(missing))
        if same_weights:
            details["same_weights_as"] = same_weights  # row -> the earlier row whose evaluations it reports
        if details:
            out["details"] = details
        return out


    def disk_bytes(self, profile, config, backbone, images) -> int:
        """Each row's repair (its checkpoint and temp copy under the official schedule, the repaired weights
        shared with the other ranks) and the evaluations of the base and every row (their features and heads)."""
        from sinder.repair.job import repair_disk_bytes

        rows = len(config["settings"])
        repair = repair_disk_bytes(backbone.state_bytes)["work"] if config["repair"] == "official" else 0
        evaluations = 0
        for task_name in config["evaluations"]:
            try:
                task = get_task(task_name)
                evaluations += task.disk_bytes(profile, task.config(profile), backbone, images)
            except (KeyError, ValueError):
                continue  # not in this checkout, or its packages missing: run() notes it
        return rows * (repair + backbone.state_bytes) + (rows + 1) * evaluations


def _shared_directions(backbone, config, device, computed: dict):
    """The un-repaired backbone's singular defect directions for ``config``'s sampling (n_samples, seed):
    what RepairRun would compute for each row's copy of it, computed once per sampling in ``computed``."""
    from sinder.defects.linearize import singular_defect_directions

    key = (config.n_samples, config.direction_seed)
    if key not in computed:
        computed[key] = singular_defect_directions(backbone, n_samples=config.n_samples, seed=config.direction_seed,
                                                   device=device)  # fmt: skip
    return computed[key]


@register_task
class ConstraintAblation(_AblationTask):
    name = "ablation_constraints"
    table = "table6"
    title = "Table 6: what the repair may learn (singular values, biases, number of layers)"


@register_task
class ThresholdAblation(_AblationTask):
    name = "ablation_thresholds"
    table = "table7"
    title = "Table 7: skip threshold sigma and mask threshold mu"
