"""`sinder-bench repair`: Algorithm 1 on a backbone and an image folder, writing the repaired checkpoint."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path

from sinder.cli.common import (
    UsageError,
    backbone_parent,
    device_parent,
    force_parent,
    out_parent,
    resolve_backbone,
)


def build_config(args):
    """(config, which defaults applied): the backbone's preset defaults (official ones for the real presets),
    then the --config file, then --paper and the command-line flags, then --cfg-options (any RepairConfig field,
    typed and checked by RepairConfig.from_mapping like the file's)."""
    from sinder.repair.config import RepairConfig, preset_defaults

    base, defaults = preset_defaults(args.backbone)
    data = RepairConfig.read_file(args.config) if args.config else {}
    overrides = {k: v for k, v in {"max_iters": args.max_iters, "num_images": args.num_images,
                                   "resolution": args.resolution}.items() if v is not None}
    if args.paper:
        data = {**data, "behaviour": "paper"}
    try:
        config = RepairConfig.from_mapping({**data, **overrides}, base=base)
    except ValueError as err:
        raise ValueError(f"{args.config}: {err}" if args.config else str(err)) from None
    options = dict(getattr(args, "cfg_options", None) or {})
    if options:  # applied last; checked again as a whole so the message names the option
        try:
            config = RepairConfig.from_mapping({**data, **overrides, **options}, base=base)
        except ValueError as err:
            raise ValueError(f"--cfg-options: {err}") from None
    return config, defaults


def run(args) -> int:
    # Bad input (a missing folder, an existing --out, a bad config value) raises through to the CLI: exit 2.
    from sinder.cli.common import check_device
    from sinder.repair.job import repair_checkpoint
    from sinder.repair.step import NonFiniteLossError

    name, weights = resolve_backbone(args)
    config, defaults = build_config(args)
    check_device(args.device)
    if args.fail_on_regression and not config.holdout_images:
        raise UsageError(f"--fail-on-regression with holdout_images={config.holdout_images}: without held-out "
                         "images there is no defect census to find a regression in; hold some out")  # fmt: skip
    try:
        report = repair_checkpoint(name, args.images, args.out, config=config, weights=weights,
                                   work_dir=args.work_dir, resume=args.resume, force=args.force,
                                   device=args.device, progress=False if args.no_progress else None,
                                   save_format=args.save_format, defaults=defaults)
    except NonFiniteLossError as err:
        print(f"repair stopped: {err}")
        return 3
    print(summary_text(report, Path(args.out).with_name(Path(args.out).stem + ".report.json")))
    if report.get("warning"):
        print(report["warning"], file=sys.stderr)
        if args.fail_on_regression:
            return 4
    if args.fail_on_regression and report.get("images_made_worse") is None:
        print("error: --fail-on-regression: no held-out image could be read, so no census says whether the "
              "repair made images worse", file=sys.stderr)  # fmt: skip
        return 2
    return 0


def summary_text(report: dict, report_path: Path) -> str:
    """What the repair prints: the report's headline fields (the census pair named before/after), then one line
    each for the held-out census, the Figure 7 file and the report file."""
    summary = {k: report.get(k) for k in ("output", "iterations", "iterations_with_loss", "stop_reason",
                                          "high_norm_last_block", "high_norm_removed_fraction_last_block",
                                          "eq5_defects_removed_fraction", "made_worse_rule", "images_made_worse",
                                          "wall_time_s")}  # fmt: skip
    pair = summary.pop("high_norm_last_block")
    lines = []
    if pair is not None:
        before, after = pair
        summary = {**{k: v for k, v in summary.items() if k != "high_norm_removed_fraction_last_block"},
                   "high_norm_last_block": {"before": before, "after": after}}  # fmt: skip
        removed = report.get("high_norm_removed_fraction_last_block")
        share = f" ({removed:.0%} removed)" if isinstance(removed, (int, float)) else ""
        lines.append(f"high-norm tokens in the last block, held-out images: {before} before the repair, "
                     f"{after} after{share}")  # fmt: skip
    text = json.dumps(summary, indent=2)
    if report.get("figure_sv_changes"):
        lines.append(f"figure:  {report['figure_sv_changes']}  (Figure 7: change of the leading singular values)")
    lines.append(f"report:  {report_path}")
    return "\n".join([text, *lines])


REPAIR_EPILOG = """images: any folder of photographs (searched recursively), e.g. ImageNet's train folder for the official
presets. For the tiny test model, synthetic ones do:
  sinder-bench data synth --dataset imagenet --out data/imagenet
  sinder-bench repair --backbone dinov2_tiny_defective --images data/imagenet/train --out tiny_sinder.safetensors"""


def register(subparsers) -> None:
    from sinder.cli.cfg_options import CfgOptionsAction

    parser = subparsers.add_parser(
        "repair", help="repair singular defects (SINDER, Algorithm 1)",
        description=textwrap.fill("Fine-tune the singular values of a DINOv2-style backbone with SINDER's smoothness "
        "loss (Algorithm 1; the official code's defaults) and write the repaired checkpoint, a report and Figure 7.",
                                  79),  # the raw formatter (for the epilog's commands) keeps the lines as given
        parents=[backbone_parent(), out_parent("repaired checkpoint (.safetensors or .pth)", required=True),
                 force_parent(), device_parent()],
        epilog=REPAIR_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--images", required=True,
                        help="folder of training images (e.g. ImageNet train; for dinov2_tiny_defective: "
                             "`sinder-bench data synth --dataset imagenet --out DIR`, then DIR/train)")  # fmt: skip
    parser.add_argument("--save-format", choices=("official", "source"), default="official",
                        help="keys of --out: official DINOv2 (default) or the format the backbone came in "
                             "(a Hugging Face folder, timm keys)")
    parser.add_argument("--config", help="YAML of RepairConfig fields (behaviour: official|paper, sigma, mu, ...)")
    parser.add_argument("--paper", action="store_true", help="the paper's text where the official code differs")
    parser.add_argument("--max-iters", type=int, help="iteration budget, one image each (default: the preset's; 30000 for the official presets)")
    parser.add_argument("--num-images", type=int, help="images strided over --images (default: the preset's; 30000 for the official presets)")
    parser.add_argument("--resolution", type=int, help="image side in pixels (default: the preset's; 518 for the official presets)")
    parser.add_argument("--cfg-options", nargs="+", action=CfgOptionsAction, default={}, metavar="KEY=VALUE",
                        help="set any RepairConfig field, e.g. max_iters=100 mu=3.5 trainable=singular_values_and_biases "
                             "(values typed as YAML; applied last; an unknown field or a bad value exits 2)")
    parser.add_argument("--work-dir", help="checkpoints and JSONL log (default: <out>.work)")
    parser.add_argument("--resume", action="store_true", help="continue a killed run from its checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (it shows only on a terminal)")
    parser.add_argument("--fail-on-regression", action="store_true",
                        help="exit 4 when any held-out image is made worse by the repair (the rule the report "
                        "states as made_worse_rule: more high-norm tokens in some block, or a doubled median norm)")
    parser.set_defaults(func=run)
