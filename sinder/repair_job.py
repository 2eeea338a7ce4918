"""A whole repair as a user runs it: backbone + image folder in, repaired checkpoint + report out."""

from __future__ import annotations

import functools
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from .checkpoint_formats import CheckpointFormat, check_save_format, save_checkpoint
from .images import list_images, load_image, stride_subset
from .repair import RepairConfig, RepairRun
from .repair_report import defect_census, plot_singular_value_changes, removed_fraction, write_report
from .weights import load_backbone


def split_images(files: list[Path], num_train: int, num_holdout: int) -> tuple[list[Path], list[Path]]:
    """Held-out images first (every k-th from the end), then the training subset from the rest."""
    if len(files) < 2 and num_holdout:
        raise ValueError("need at least 2 images: some to train on and some held out to count defects")
    num_holdout = min(num_holdout, len(files) // 2)
    holdout = files[::-1][:: max(1, len(files) // max(num_holdout, 1))][:num_holdout] if num_holdout else []
    held = set(holdout)
    train = stride_subset([f for f in files if f not in held], num_train)
    return train, sorted(holdout)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


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
    crash_at: int | None = None,
    save_format: str = "official",
) -> dict[str, Any]:
    """Run SINDER on ``backbone`` with the images under ``images``; write ``out`` and its report.

    Returns the report dict. ``out`` is written atomically and never replaces an existing file without
    ``force``; the run's checkpoint and JSONL log live in ``work_dir`` (default ``<out>.work/``).
    ``save_format``: ``official`` (DINOv2's keys) or ``source`` (the format the backbone was read in).
    """
    config = config or RepairConfig()
    config.validate()
    out = Path(out)
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; pass --force to overwrite it")
    work_dir = Path(work_dir) if work_dir else out.with_name(out.name + ".work")
    device = device or default_device()

    model = load_backbone(backbone, weights=weights)
    source_format = getattr(model, "checkpoint_format", CheckpointFormat())
    out_format = check_save_format(save_format, source_format, out)
    files = list_images(images)
    train, holdout = split_images(files, config.num_images, config.holdout_images)
    load = functools.partial(load_image, resolution=config.resolution, patch_size=model.patch_size)

    from .linearize import singular_defect_directions

    cache = directions_cache or work_dir / "directions"
    directions = singular_defect_directions(model, n_samples=config.n_samples, seed=config.direction_seed,
                                            cache_dir=cache)
    model.to(device)
    before = defect_census(model, holdout, load, directions, config.mu, config.exclude_border) if holdout else None

    run = RepairRun(model, train, config, work_dir, load, directions=directions, device=device,
                    progress=progress, crash_at=crash_at)
    result = run.run(resume=resume)

    metadata = {"sinder_config": json.dumps(asdict(config)), "base_sha256": str(model.weights_sha256)}
    out_sha = save_checkpoint(result.state_dict, out, out_format, config=model.config, source=source_format,
                              force=force, metadata=metadata)
    repaired = load_backbone(backbone, weights=out)  # proves the output loads into a plain DINOv2
    repaired.to(device)
    after = defect_census(repaired, holdout, load, directions, config.mu, config.exclude_border) if holdout else None

    figure = plot_singular_value_changes(result.sv_changes, out.with_name(out.stem + ".sv_changes.png"))
    report = {
        "backbone": backbone,
        "base_weights_sha256": model.weights_sha256,
        "output": str(out),
        "output_sha256": out_sha,
        "output_format": out_format,
        "behaviour": config.behaviour(),
        "config": asdict(config),
        "differences_from_official": config.differences_from_official(),
        "images_folder": str(images),
        "images_available": len(files),
        "train_images": len(train),
        "holdout_images": [str(p) for p in holdout],
        "iterations": result.iterations,
        "iterations_with_loss": result.iterations_with_loss,
        "nonfinite_steps": result.nonfinite_steps,
        "stop_reason": result.stop_reason,
        "final_clear_fraction": result.clear_fraction,
        "wall_time_s": round(result.wall_time_s, 2),
        "device": str(device),
        "peak_memory_bytes": result.peak_memory_bytes,
        "defects_before": before,
        "defects_after": after,
        "eq5_defects_removed_fraction": removed_fraction(before, after, "eq5_defects_per_layer") if before else None,
        "high_norm_removed_fraction": removed_fraction(before, after, "high_norm_tokens_per_layer") if before else None,
        "singular_value_changes": {k: {"min": float(v.min()), "max": float(v.max()), "mean_abs": float(v.abs().mean())}
                                   for k, v in result.sv_changes.items()},
        "figure_sv_changes": str(figure),
        "work_dir": str(work_dir),
        "log": str(run.log_path),
    }
    write_report(out.with_name(out.stem + ".report.json"), report)
    return report
