"""The `sinder-bench analyze` (Sections 2-3 on a folder of images) and `sinder-bench clamp` (Appendix B) verbs;
the analysis itself is in ``sinder.plots.analysis``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sinder.defects.detect import DEFAULT_MU, DEFAULT_SIGMA
from sinder.defects.linearize import DEFAULT_N_SAMPLES
from sinder.plots.analysis import analyze, format_table
from sinder.utils.atomic import atomic_write_text
from sinder.utils.images import DEFAULT_RESOLUTION


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "analyze",
        help="singular defect statistics and figures of a backbone on a folder of images (paper Sections 2-3)",
        description="Compute the singular defect directions of a backbone, run it on a folder of images and write "
        "the Section 2 statistics per layer (JSON) and the figures into --out.",
    )
    p.add_argument("--backbone", required=True, help="preset name, constructed backbone or JSON/YAML config")
    p.add_argument("--weights", help="weights file (.safetensors or .pth); default: the preset's own")
    p.add_argument("--images", required=True, type=Path, help="folder of images (.jpg, .png, ...; searched recursively)")
    p.add_argument("--out", type=Path, default=Path("results/analyze"), help="output folder (default %(default)s)")
    p.add_argument("--n-samples", type=int, default=DEFAULT_N_SAMPLES, help="least-squares samples per MLP (official: 100000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the least-squares samples")
    p.add_argument(
        "--method", choices=("sampled", "expectation"), default="sampled",
        help="MLP linearization: sampled least squares (official) or its exact Gaussian expectation (fast)",
    )
    p.add_argument("--mu", type=float, default=DEFAULT_MU, help="Eq. 5 mask threshold (default %(default)s)")
    p.add_argument("--sigma", type=int, default=DEFAULT_SIGMA, help="an image is clear if every layer has fewer defects")
    p.add_argument(
        "--flag-border", action="store_true",
        help="let Eq. 5 flag tokens on the grid border (the paper's text; the official code never does)",
    )
    p.add_argument("--max-images", type=int, default=None, help="use at most this many images (sorted by name)")
    p.add_argument(
        "--resolution", type=int, default=DEFAULT_RESOLUTION,
        help="short side resize and square centre crop, a multiple of the patch size (default 518)",
    )
    p.add_argument("--cache-dir", type=Path, default=None, help="cache the directions here")
    p.add_argument("--mask-images", type=int, default=3,
                   help="draw the Eq. 5 defect masks of this many images (paper Fig. 6; default %(default)s, 0: none)")
    p.add_argument("--mask-layers", type=_int_list, default=None,
                   help="comma-separated layers of the mask figure (default: 4 evenly spaced, ending at the last)")
    p.add_argument("--compare-weights", type=Path, default=None,
                   help="a second checkpoint: plot its leading singular values minus the backbone's per block "
                   "linear layer (paper Fig. 7), e.g. a repaired checkpoint against the original")
    p.add_argument("--compare-backbone", default=None,
                   help="architecture of --compare-weights (default: --backbone); alone, compares with that "
                   "backbone's own weights")
    p.add_argument("--sv-top", type=int, default=3, help="leading singular values in the comparison (default 3)")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"), default=None,
                   help="instead of the analysis: the per-image defect census of two checkpoints of --backbone "
                   "(weights files; 'own' for the backbone's own weights), each measured with its own directions; "
                   "lists the images B has made worse than A and writes census.json into --out")
    p.add_argument("--fail-on-regression", action="store_true",
                   help="with --compare: exit 4 when B made any image worse than A")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars on stderr (default: only on a terminal)")
    p.set_defaults(func=run_analyze)

    c = subparsers.add_parser(
        "clamp",
        help="clamp the singular values of every block linear layer to gamma (paper Appendix B)",
        description="Write a copy of the backbone's weights with every block linear layer's singular values "
        "clamped to at most --gamma (singular vectors kept).",
    )
    c.add_argument("--backbone", required=True, help="preset name, constructed backbone or JSON/YAML config")
    c.add_argument("--weights", help="weights file (.safetensors or .pth); default: the preset's own")
    c.add_argument("--gamma", type=float, required=True, help="upper bound of the singular values")
    c.add_argument("--out", type=Path, required=True, help="output .safetensors file")
    c.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    c.set_defaults(func=run_clamp)


# --------------------------------------------------------------------------------------------- analyze
def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of layer indices, e.g. 9,19,29,39"
        ) from None


def run_analyze(args: argparse.Namespace) -> int:
    """The analyze verb; bad input (empty or unreadable folder, corrupt image, mismatched checkpoint) is one
    line on stderr and exit 2."""
    try:
        return _run_analyze(args)
    except (ValueError, FileNotFoundError, KeyError, PermissionError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {message}", file=sys.stderr)
        return 2


def _run_analyze(args: argparse.Namespace) -> int:
    from sinder.models.weights import load_backbone
    from sinder.utils.images import list_images

    if args.sv_top < 1:
        raise ValueError(f"--sv-top {args.sv_top} must be >= 1")
    images = list_images(args.images)[: args.max_images] if args.max_images else list_images(args.images)
    if args.compare:
        return _run_compare(args, images)
    model = load_backbone(args.backbone, args.weights)
    compare = None
    if args.compare_weights is not None or args.compare_backbone is not None:
        compare = load_backbone(args.compare_backbone or args.backbone, args.compare_weights)
    record = analyze(model, images, args.out, args.n_samples, args.seed, args.method, args.mu, args.sigma,
                     not args.flag_border, args.resolution, args.cache_dir, compare=compare, sv_top=args.sv_top,
                     mask_images=args.mask_images, mask_layers=args.mask_layers, progress=args.progress)
    print(format_table(record))
    print(f"{record['clear_images']}/{len(images)} images clear (every layer < max(sigma, 1) = {max(args.sigma, 1)} Eq. 5 defects)")
    print(f"wrote {args.out / 'analysis.json'} and {len(record['figures'])} figures")
    return 0


def _run_compare(args: argparse.Namespace, images) -> int:
    from sinder.defects.census import compare_checkpoints, format_comparison, worse_warning

    first, second = (None if w == "own" else w for w in args.compare)
    record = compare_checkpoints(args.backbone, first, second, images, args.resolution, mu=args.mu,
                                 exclude_border=not args.flag_border, n_samples=args.n_samples, seed=args.seed,
                                 cache_dir=args.cache_dir, method=args.method)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "census.json", json.dumps(record, indent=1))
    print(format_comparison(record["first"], record["second"], record["comparison"]))
    print(f"wrote {args.out / 'census.json'}")
    warning = worse_warning(record["comparison"])
    if warning:
        print(warning.replace("by the repair", f"by {args.compare[1]}"), file=sys.stderr)
        if args.fail_on_regression:
            return 4
    return 0


# --------------------------------------------------------------------------------------------- clamp
def run_clamp(args: argparse.Namespace) -> int:
    from sinder.models.weights import load_backbone, save_state_dict
    from sinder.remedies.clamp import clamp_singular_values

    if args.out.exists() and not args.force:
        print(f"error: {args.out} exists; pass --force to overwrite it", file=sys.stderr)
        return 2
    if args.out.suffix.lower() != ".safetensors":
        print(f"error: --out {args.out} must end in .safetensors", file=sys.stderr)
        return 2
    model = load_backbone(args.backbone, args.weights)
    state, report = clamp_singular_values(model, args.gamma)
    meta = {"clamp_gamma": str(args.gamma), "source_sha256": str(getattr(model, "weights_sha256", ""))}
    sha = save_state_dict(state, args.out, force=args.force, metadata=meta)
    clamped = [r for r in report if r.n_clamped]
    print(f"{len(clamped)}/{len(report)} block linear layers had singular values above {args.gamma}")
    for r in clamped:
        print(f"  {r.key}: {r.n_clamped} clamped, max {r.max_before:.3f} -> {r.max_after:.3f}")
    print(f"wrote {args.out} (sha256 {sha})")
    return 0
