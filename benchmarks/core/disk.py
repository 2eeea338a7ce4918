"""What a run will write, estimated before any work: the free-space preflight of ``sinder-bench run``.

Each task says what it writes for one backbone (:meth:`benchmarks.core.registry.Task.disk_bytes`: feature
caches, head checkpoints, repairs) from its resolved config, the backbone's size (:class:`BackboneSize`, read
from the architecture without loading the weights) and the number of images of each dataset split it reads.
The runner adds what it writes itself: a record per (backbone, task), the run's log and summary into the output
folder; a copy of the weights for each remedied backbone and the smoke profile's repaired twin into the cache.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

# One run record with its claim (the linear probe's keeps all 52 heads' accuracies; a few KiB each usually).
RECORD_BYTES = 256 * 2**10
# The run's log and summary (a line per progress step and pair).
LOG_BYTES = 2**20
# Synthetic twins, defect directions and the work folders' small files a smoke run writes besides the above.
SMOKE_DATA_BYTES = 32 * 2**20
FLOAT32 = 4
LABEL_BYTES = 8  # an int64 label per image, cached with the features (benchmarks.core.features)


@dataclass(frozen=True)
class BackboneSize:
    """What the disk estimates need of a backbone: token width, depth, patch size, and its weights' bytes."""

    embed_dim: int
    depth: int
    patch_size: int
    state_bytes: int  # the weights as loaded (float32): what a checkpoint of the backbone takes


def size_of_model(model: torch.nn.Module) -> BackboneSize:
    """The size of a built backbone."""
    from sinder.models.state_io import state_bytes

    return BackboneSize(
        int(model.embed_dim), len(model.blocks), int(model.patch_size), state_bytes(model.state_dict())
    )


def size_of_spec(spec) -> BackboneSize | None:
    """The size of a backbone spec's architecture, built on the meta device (no weights read where the
    architecture is named or has a config); None when it cannot be told (its problem is reported apart)."""
    from sinder.models import weights as W
    from sinder.models.formats import is_checkpoint_path
    from sinder.models.vit import DinoVisionTransformer

    base = spec.base
    try:
        if base.name not in W.PRESETS and is_checkpoint_path(base.name):
            config = W.checkpoint_config(base.name)
        else:
            config = W.architecture_config(base.name)
        with torch.device("meta"):
            return size_of_model(DinoVisionTransformer(config))
    except (OSError, ValueError, KeyError, TypeError) as err:
        logger.debug("no size for backbone %s: %s", spec.text, err)
        return None


def feature_bytes(n_images: int, values_per_image: int) -> int:
    """A feature cache of ``n_images`` rows of ``values_per_image`` float32 values, with their labels."""
    return int(n_images) * (int(values_per_image) * FLOAT32 + LABEL_BYTES)


def checkpoint_bytes(n_params: int, slots: int = 3) -> int:
    """A training checkpoint of ``n_params`` float32 parameters with ``slots - 1`` optimizer states each (Adam:
    3 slots), written through a temp copy beside it (atomic): twice that at the moment of the rename."""
    return 2 * int(n_params) * FLOAT32 * int(slots)


def module_params(build: Callable[[], torch.nn.Module]) -> int:
    """Parameters of the module ``build()`` makes, built on the meta device (no memory, no init)."""
    with torch.device("meta"):
        return sum(p.numel() for p in build().parameters())


@dataclass(frozen=True)
class DiskNeeds:
    """Bytes a run writes into its output folder and its cache folder, and what each is made of."""

    out: int
    cache: int
    parts: Mapping[str, int]


def run_disk_needs(plan: Sequence[tuple[object, Sequence[object]]], sizes: Mapping[object, BackboneSize | None],
                   configs: Mapping[str, dict], images: Callable[[str], int], *, profile: str,
                   copies: Sequence[object] = (), seeds: int = 1) -> DiskNeeds:  # fmt: skip
    """The estimate for ``plan`` ((spec, tasks) pairs): each task's :meth:`disk_bytes` per backbone (resolved
    ``configs`` by task name), a copy of the weights for each spec in ``copies`` (remedied backbones, the smoke
    twin), a record per pair and the run's log. ``seeds``: how many times the plan runs (``run --seeds``): what
    a task, the records, the log and the smoke data take counts once per seed (an upper bound: a smoke seed's
    synthetic twins, features and heads are its own); the weight copies once (remedies are made once)."""
    if seeds < 1:
        raise ValueError(f"seeds={seeds}: give 1 or more")
    parts: dict[str, int] = {}
    pairs = 0
    for spec, tasks in plan:
        size = sizes.get(spec)
        for task in tasks:
            pairs += 1
            if size is not None and task.name in configs:
                key = f"{task.name} ({getattr(spec, 'label', spec)})"
                parts[key] = seeds * int(task.disk_bytes(profile, configs[task.name], size, images))
    for spec in copies:
        size = sizes.get(spec)
        if size is not None:
            parts[f"weights of {getattr(spec, 'label', spec)}"] = size.state_bytes
    if profile == "smoke":
        parts["synthetic data and directions"] = seeds * SMOKE_DATA_BYTES
    out = seeds * (pairs * RECORD_BYTES + LOG_BYTES)
    return DiskNeeds(out=out, cache=sum(parts.values()), parts=parts)


def free_space_problems(out: Path, cache: Path, needs: DiskNeeds) -> list[str]:
    """One line per disk that cannot take its share of ``needs`` (the folder, the estimate, what is free),
    checked before any work so a run never dies with ENOSPC half-way. One disk holding both folders must
    take both shares."""
    from sinder.utils.atomic import free_space_problem

    if _device(out) is not None and _device(out) == _device(cache):
        problem = free_space_problem(cache, needs.out + needs.cache,
                                     f"output folder (--out) {out} and cache folder (--cache-dir)")  # fmt: skip
        return [problem] if problem else []
    return [p for p in (free_space_problem(out, needs.out, "output folder (--out)"),
                        free_space_problem(cache, needs.cache, "cache folder (--cache-dir)")) if p]  # fmt: skip


def _device(folder: Path) -> int | None:
    probe = Path(folder).expanduser()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return probe.stat().st_dev
    except OSError:
        return None
