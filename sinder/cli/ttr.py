"""`sinder-bench ttr fit`: find the register neurons of a backbone for test-time registers (``sinder.remedies.ttr``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from sinder.cli.common import (
    UsageError,
    backbone_parent,
    check_device,
    check_writable,
    device_parent,
    force_parent,
    out_parent,
    resolve_backbone,
)
from sinder.defects.detect import HIGH_NORM_MIN_RATIO, HIGH_NORM_Z
from sinder.remedies.ttr import DEFAULT_TOP_K, REFERENCE_IMAGES, REFERENCE_RESOLUTION, SELECTION_CHOICES

EVAL_RESIZE_RATIO = 256 / 224  # DINOv2's make_classification_eval_transform: Resize(256), CenterCrop(224)


def register(subparsers) -> None:
    parser = subparsers.add_parser("ttr", help="test-time registers (Jiang et al. 2025): fit register neurons")
    verbs = parser.add_subparsers(dest="ttr_verb", metavar="ACTION", required=True)
    fit = verbs.add_parser(
        "fit",
        help="find a backbone's register neurons on a folder of images and write the neuron file",
        description="Protocol reference (the default, the official test-time-registers recipe): outlier tokens "
        "are the tokens, class token included, whose norm at the detection block is above --threshold (150 for "
        "ViT-L in the reference; required); every MLP hidden unit of blocks 0..--highest-block is scored by its "
        "mean absolute activation there, zeroed unless it is below 0.5 on at least half of the image's tokens, "
        "averaged over images; the --top-k units are written to --out (JSON, with the backbone's weights hash and "
        "every setting). --selection robust_z: the patch tokens the high-norm census flags, no sparsity filter.",
        parents=[backbone_parent(), out_parent("neuron file to write (.json)", required=True, type=Path),
                 force_parent(), device_parent()],
    )
    fit.add_argument("--images", required=True, type=Path, help="folder of images (searched recursively)")
    fit.add_argument("--selection", choices=SELECTION_CHOICES, default="reference",
                     help="reference (default): the official rule; robust_z: the census rule (a recorded deviation)")
    fit.add_argument("--max-images", type=int, default=REFERENCE_IMAGES,
                     help="use about this many images, spread over the folder (default %(default)s, the reference's)")
    fit.add_argument("--resolution", type=int, default=REFERENCE_RESOLUTION,
                     help="square centre crop, a multiple of the patch size (default %(default)s, the reference's)")
    fit.add_argument("--resize", type=int, default=None,
                     help="short side before the crop (default: resolution x 256/224, DINOv2's eval transform "
                     "Resize(256) + CenterCrop(224) that the reference uses)")
    fit.add_argument("--detection-block", type=int, default=-2,
                     help="block whose output norms define the outliers; negative: from the end (default -2)")
    fit.add_argument("--highest-block", type=int, default=None,
                     help="score the MLP units of blocks 0..this (default: 3/4 of the depth, 17 for ViT-L as in "
                     "the reference)")
    fit.add_argument("--top-k", type=int, default=DEFAULT_TOP_K,
                     help="number of register neurons (default %(default)s)")
    fit.add_argument("--threshold", type=float, default=None,
                     help="outlier token norm threshold, required with --selection reference (the reference uses "
                     "150 for ViT-L); with robust_z, optional (default: median + mu x 1.4826 MAD, and >= "
                     "min-ratio x median, of the patch tokens)")
    fit.add_argument("--mu", type=float, default=HIGH_NORM_Z,
                     help="robust_z: z-score threshold (default %(default)s)")
    fit.add_argument("--min-ratio", type=float, default=HIGH_NORM_MIN_RATIO,
                     help="robust_z: minimum norm / median (default %(default)s)")
    fit.add_argument("--batch-size", type=int, default=8)
    fit.set_defaults(func=run_fit)


def _batches(paths, resolution: int, patch_size: int, batch_size: int, device, resize: int | None = None,
             **normalization):  # fmt: skip
    import torch

    from sinder.utils.images import load_image

    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        yield torch.stack([load_image(p, resolution, patch_size, resize=resize, **normalization)
                           for p in chunk]).to(device)  # fmt: skip


def run_fit(args: argparse.Namespace) -> int:
    from sinder.models.backbone import normalization
    from sinder.models.weights import load_backbone
    from sinder.remedies.ttr import describe, fit_register_neurons, save_neurons
    from sinder.utils.device import default_device
    from sinder.utils.images import list_images, stride_subset

    if args.out.exists() and not args.force:
        raise UsageError(f"{args.out} exists; pass --force to overwrite it")
    if args.out.suffix.lower() != ".json":
        raise UsageError(f"--out {args.out} must end in .json")
    for name in ("max_images", "batch_size", "top_k"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} {getattr(args, name)} must be >= 1")
    if args.selection == "reference" and args.threshold is None:
        raise UsageError("--selection reference needs --threshold, the outlier token norm (the reference uses 150 "
                         "for ViT-L: look at the norms with `sinder-bench analyze`), or pass --selection robust_z")
    resize = round(args.resolution * EVAL_RESIZE_RATIO) if args.resize is None else args.resize
    if resize < args.resolution:
        raise UsageError(f"--resize {resize} is smaller than --resolution {args.resolution}")
    backbone, weights = resolve_backbone(args)
    check_device(args.device)
    check_writable(args.out.parent, "--out")
    device = default_device(args.device)
    # A missing folder or a bad value (FileNotFoundError, ValueError) raises through to the CLI: exit 2.
    paths = stride_subset(list_images(args.images), args.max_images)
    model = load_backbone(backbone, weights, device=device)
    if args.resolution % model.patch_size:
        raise UsageError(f"--resolution {args.resolution} is not a multiple of the patch size {model.patch_size}")
    neurons = fit_register_neurons(
        model, _batches(paths, args.resolution, model.patch_size, args.batch_size, device, resize,
                        **normalization(model)),
        detection_block=args.detection_block, highest_block=args.highest_block, top_k=args.top_k,
        threshold=args.threshold, mu=args.mu, min_ratio=args.min_ratio, selection=args.selection,
    )
    neurons.settings.update({"resolution": args.resolution, "resize": resize, "images": str(args.images),
                             "max_images": args.max_images})
    save_neurons(neurons, args.out)
    print(describe(neurons))
    print(f"wrote {args.out}")
    return 0
