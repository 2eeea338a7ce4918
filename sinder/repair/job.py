"""A whole repair as a user runs it: backbone + image folder in, repaired checkpoint + report out."""

from __future__ import annotations

import functools
import json
import logging
import warnings
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from sinder.defects.census import census, compare, resize_views, worse_warning
from sinder.models.adapter import patch_multiple
from sinder.models.backbone import normalization
from sinder.models.formats import CheckpointFormat, check_save_format, save_checkpoint
from sinder.models.state_io import state_bytes
from sinder.models.weights import load_backbone
from sinder.plots.figures import plot_singular_value_differences, singular_value_differences
from sinder.repair.config import RepairConfig
from sinder.repair.report import write_report
from sinder.repair.run import RepairRun
from sinder.utils.device import default_device
from sinder.utils.images import list_images, load_image, stride_subset

logger = logging.getLogger(__name__)


def split_images(files: list[Path], num_train: int, num_holdout: int) -> tuple[list[Path], list[Path]]:
    """Held-out images first (every k-th from the end), then the training subset from the rest."""
    if len(files) < 2 and num_holdout:
        raise ValueError("need at least 2 images: some to train on and some held out to count defects")
    num_holdout = min(num_holdout, len(files) // 2)
    holdout = files[::-1][:: max(1, len(files) // max(num_holdout, 1))][:num_holdout] if num_holdout else []
    held = set(holdout)
    train = stride_subset([f for f in files if f not in held], num_train)
    return train, sorted(holdout)


def check_writable(folder: Path, what: str) -> None:
    """Fail before any work when ``folder`` cannot take new files (a read-only --out used to fail after the
    whole repair); nothing is created here."""
    from sinder.utils.atomic import writable_problem

    problem = writable_problem(folder, what)
    if problem:
        raise PermissionError(problem)


def repair_disk_bytes(weights_bytes: int) -> dict[str, int]:
    """What a repair of weights of ``weights_bytes`` (``sinder.models.state_io.state_bytes``) writes: the output
    (``out``) and, in its work folder (``work``), the checkpoint (parameters, Adam moments and the original
    singular values: at most four times the weights) and its temp copy. The run preflight counts a repair it
    makes with this too."""
    return {"out": weights_bytes, "work": 8 * weights_bytes}


def check_free_space(folders: dict[str, Path], weights_bytes: int) -> None:
    """Fail before any work when the disk cannot take what the repair writes (:func:`repair_disk_bytes`)."""
    from sinder.utils.atomic import free_space_problem

    sizes = repair_disk_bytes(weights_bytes)
    need = {"--out's folder": sizes["out"], "the work folder": sizes["work"]}
    for what, folder in folders.items():
        problem = free_space_problem(folder, need[what], what)
        if problem:
            raise ValueError(problem)  # bad input the user fixes: one line, exit 2


def _checkpoint_of(work_dir: Path) -> Path:
    """Where RepairRun keeps the checkpoint of a run in ``work_dir`` (its own property, read without a model)."""
    from types import SimpleNamespace

    return RepairRun.checkpoint_path.fget(SimpleNamespace(work_dir=work_dir))


def trained_steps(log_path: Path) -> int:
    """Iterations of the run's JSONL log that read their image (not skipped as unreadable)."""
    if not log_path.is_file():
        return 0
    entries = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    return sum(1 for e in entries if not e.get("skipped"))


def readable(images: list[Path], load) -> tuple[list[Path], list[str]]:
    """(the images that load, the names of those that do not, each warned about)."""
    good, bad = [], []
    for path in images:
        try:
            load(path)
            good.append(path)
        except (ValueError, OSError) as err:
            warnings.warn(f"skipping unreadable held-out image {path}: {err}", stacklevel=2)
            bad.append(str(path))
    return good, bad


def at_patch_size(config: RepairConfig, patch_size: int) -> RepairConfig:
    """``config`` with its resolution at a multiple of the backbone's patch size (``patch_multiple``: the paper's
    518 px, 37 patches of DINOv2's 14, is 528 px, 33 patches, at patch 16). Logged; the report's config holds the
    resolution that ran."""
    resolution = patch_multiple(config.resolution, patch_size)
    if resolution == config.resolution:
        return config
    logger.warning("resolution %d is not a multiple of the backbone's patch size %d: the repair uses %d",
                   config.resolution, patch_size, resolution)  # fmt: skip
    return replace(config, resolution=resolution)


def repair_checkpoint(
    backbone: str,
    images: str | Path,
    out: str | Path,
    config: RepairConfig | None = None,
    weights: str | Path | None = None,
    work_dir: str | Path | None = None,
    resume: bool = False,
    force: bool = False,
    device: str | None = None,
    progress: bool = True,
    directions_cache: str | Path | None = None,
    save_format: str = "official",
    defaults: str = "official",
) -> dict[str, Any]:
    """Run SINDER on ``backbone`` with the images under ``images``; write ``out`` and its report.

    Returns the report dict. ``out`` is written atomically and never replaces an existing file without
    ``force``; the run's checkpoint and JSONL log live in ``work_dir`` (default ``<out>.work/``).
    ``save_format``: ``official`` (DINOv2's keys) or ``source`` (the format the backbone was read in).
    """
    config = config or RepairConfig()
    config.validate()
    out = Path(out)
    work_dir = Path(work_dir) if work_dir else out.with_name(out.name + ".work")
    # --resume after the output was written but before the report: the checkpoint is the finished run, and
    # resuming it rewrites the same output and writes the report
    finishing = resume and out.exists() and _checkpoint_of(work_dir).is_file()
    if out.exists() and not force and not finishing:
        raise FileExistsError(f"{out} exists; pass --force to overwrite it")
    check_writable(out.parent, "--out's folder")
    check_writable(work_dir, "the work folder")
    device = default_device(device)

    model = load_backbone(backbone, weights=weights)
    config = at_patch_size(config, int(model.patch_size))
    check_free_space({"--out's folder": out.parent, "the work folder": work_dir}, state_bytes(model.state_dict()))
    source_format = getattr(model, "checkpoint_format", CheckpointFormat())
    out_format = check_save_format(save_format, source_format, out)
    files = list_images(images)
    train, holdout = split_images(files, config.num_images, config.holdout_images)
    stats = normalization(model)  # the backbone's own mean/std (its family's when the checkpoint says none)
    load = functools.partial(load_image, resolution=config.resolution, patch_size=model.patch_size, **stats)
    holdout, unreadable_holdout = readable(holdout, load)

    from sinder.defects.linearize import singular_defect_directions

    cache = directions_cache or work_dir / "directions"
    directions = singular_defect_directions(model, n_samples=config.n_samples, seed=config.direction_seed,
                                            cache_dir=cache)
    model.to(device)
    measure = functools.partial(census, images=holdout, load=resize_views(config.resolution, model.patch_size, **stats),
                                mu=config.mu, exclude_border=config.exclude_border, kernel=config.kernel)
    before = measure(model, directions=directions) if holdout else None

    run = RepairRun(model, train, config, work_dir, load, directions=directions, device=device,
                    progress=progress)
    result = run.run(resume=resume)
    if result.iterations == 0:
        raise ValueError(f"the repair ran no iteration (max_iters={config.max_iters}): nothing was written to --out")
    if trained_steps(run.log_path) == 0:
        raise ValueError(f"the repair could not train: none of the {len(train)} training images under {images} "
                         f"could be read ({len(result.bad_images)} unreadable, e.g. {result.bad_images[:1]}); "
                         "nothing was written to --out")  # fmt: skip

    metadata = {"sinder_config": json.dumps(asdict(config)), "base_sha256": str(model.weights_sha256)}
    out_sha = save_checkpoint(result.state_dict, out, out_format, config=model.config, source=source_format,
                              force=force or finishing, metadata=metadata)
    repaired = load_backbone(backbone, weights=out)  # proves the output loads into a plain DINOv2
    repaired.to(device)
    after = comparison = None
    if holdout:
        # Eq. 5 after the repair along the repaired model's own directions: the old ones would count the
        # defects that were repaired and miss any new ones.
        after_directions = singular_defect_directions(repaired, n_samples=config.n_samples,
                                                      seed=config.direction_seed, cache_dir=work_dir / "directions")
        after = measure(repaired, directions=after_directions)
        comparison = compare(before, after)

    figure = plot_singular_value_differences(
        singular_value_differences(load_backbone(backbone, weights=weights).state_dict(), result.state_dict),
        out.with_name(out.stem + ".sv_changes.png"), ylabel="repaired - original",
        title="SINDER: change of the leading singular values per block linear layer")
    report = {
        "backbone": backbone,
        "base_weights_sha256": model.weights_sha256,
        "output": str(out),
        "output_sha256": out_sha,
        "output_format": out_format,
        "behaviour": config.behaviour(),
        "defaults": defaults,
        "config": asdict(config),
        "differences_from_official": config.differences_from_official(),
        "images_folder": str(images),
        "images_available": len(files),
        "train_images": len(train),
        "holdout_images": [str(p) for p in holdout],
        "iterations": result.iterations,
        "iterations_with_loss": result.iterations_with_loss,
        "nonfinite_steps": result.nonfinite_steps,
        "bad_images": len(result.bad_images) + len(unreadable_holdout),
        "bad_image_files": result.bad_images + unreadable_holdout,
        "segments": result.segments,
        "stop_reason": result.stop_reason,
        "final_clear_fraction": result.clear_fraction,
        "wall_time_s": round(result.wall_time_s, 2),
        "device": str(device),
        "peak_memory_bytes": result.peak_memory_bytes,
        "defects_before": before,
        "defects_after": after,
        "eq5_directions": "each model's own (recomputed on the repaired model)",
        "eq5_defects_removed_fraction": comparison["eq5_removed_fraction"] if comparison else None,
        "high_norm_removed_fraction": comparison["high_norm_removed_fraction"] if comparison else None,
        "high_norm_last_block": comparison["high_norm_last_block"] if comparison else None,
        "high_norm_removed_fraction_last_block": (comparison["high_norm_removed_fraction_last_block"]
                                                  if comparison else None),
        "made_worse_rule": comparison["made_worse_rule"] if comparison else None,
        "images_made_worse": comparison["images_made_worse"] if comparison else None,
        "worse_images": comparison["worse_images"] if comparison else None,
        "worse_in_some_views_only": comparison["worse_in_some_views_only"] if comparison else None,
        "eq5_increases": comparison["eq5_increases"] if comparison else None,  # shown, not counted (census.py)
        "warning": worse_warning(comparison) if comparison else None,
        "singular_value_changes": {k: {"min": float(v.min()), "max": float(v.max()), "mean_abs": float(v.abs().mean())}
                                   for k, v in result.sv_changes.items()},
        "figure_sv_changes": str(figure),
        "work_dir": str(work_dir),
        "log": str(run.log_path),
    }
    write_report(out.with_name(out.stem + ".report.json"), report)
    return report
