"""`sinder-bench repair`: Algorithm 1 on a backbone and an image folder, writing the repaired checkpoint."""

from __future__ import annotations

import json
from pathlib import Path


def run(args) -> int:
    from .repair import NonFiniteLossError, RepairConfig
    from .repair_job import repair_checkpoint

    config = RepairConfig.from_file(args.config) if args.config else RepairConfig()
    overrides = {k: v for k, v in {"max_iters": args.max_iters, "num_images": args.num_images,
                                   "resolution": args.resolution}.items() if v is not None}
    if args.paper:
        config = RepairConfig.paper(**{**config.differences_from_official(), **overrides})
    elif overrides:
        config = RepairConfig.from_mapping({**config.differences_from_official(), **overrides})
    try:
        report = repair_checkpoint(args.backbone, args.images, args.out, config=config, weights=args.weights,
                                   work_dir=args.work_dir, resume=args.resume, force=args.force,
                                   device=args.device, progress=not args.no_progress)
    except NonFiniteLossError as err:
        print(f"repair stopped: {err}")
        return 3
    except (FileExistsError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}")
        return 2
    summary = {k: report[k] for k in ("output", "iterations", "iterations_with_loss", "stop_reason",
                                      "eq5_defects_removed_fraction", "high_norm_removed_fraction", "wall_time_s")}
    print(json.dumps(summary, indent=2))
    print(f"report: {Path(args.out).with_name(Path(args.out).stem + '.report.json')}")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "repair", help="repair singular defects (SINDER, Algorithm 1)",
        description="Fine-tune the singular values of a DINOv2-style backbone with SINDER's smoothness loss "
        "(Algorithm 1; the official code's defaults) and write the repaired checkpoint, a report and Figure 7.",
    )  # fmt: skip
    parser.add_argument("--backbone", required=True, help="preset, constructed backbone or config file")
    parser.add_argument("--weights", help="weights file (default: the official file in the torch hub cache)")
    parser.add_argument("--images", required=True, help="folder of training images (e.g. ImageNet train)")
    parser.add_argument("--out", required=True, help="repaired checkpoint (.safetensors or .pth)")
    parser.add_argument("--config", help="YAML of RepairConfig fields (behaviour: official|paper, sigma, mu, ...)")
    parser.add_argument("--paper", action="store_true", help="the paper's text where the official code differs")
    parser.add_argument("--max-iters", type=int, help="iteration budget, one image each (default 30000)")
    parser.add_argument("--num-images", type=int, help="images strided over --images (default 30000)")
    parser.add_argument("--resolution", type=int, help="image side in pixels (default 518)")
    parser.add_argument("--work-dir", help="checkpoints and JSONL log (default: <out>.work)")
    parser.add_argument("--resume", action="store_true", help="continue a killed run from its checkpoint")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --out")
    parser.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)
