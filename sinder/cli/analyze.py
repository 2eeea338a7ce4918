"""The `sinder-bench analyze` (Sections 2-3 on a folder of images) and `sinder-bench clamp` (Appendix B) verbs;
the analysis itself is in ``sinder.plots.analysis``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sinder.cli.common import (
    UsageError,
    backbone_parent,
    check_writable,
    force_parent,
    out_parent,
    resolve_backbone,
    seed_parent,
    split_backbone,
)
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
        parents=[backbone_parent(), out_parent("output folder (default %(default)s)", default=Path("results/analyze"),
                                               type=Path), seed_parent()],
    )  # fmt: skip
    p.add_argument("--images", required=True, type=Path, help="folder of images (.jpg, .png, ...; searched recursively)")
    p.add_argument("--n-samples", type=int, default=DEFAULT_N_SAMPLES,
                   help="least-squares samples per MLP (official: 100000), drawn with --seed")
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
        "--resolution", type=int, default=None,
        help="short side resize and square centre crop, a multiple of the patch size (default: the preset's scale, "
        f"as repair uses it, e.g. 112 for dinov2_tiny_defective; {DEFAULT_RESOLUTION} for the official presets)",
    )
    p.add_argument("--cache-dir", type=Path, default=None, help="cache the directions here")
    p.add_argument("--mask-images", type=int, default=3,
                   help="draw the Eq. 5 defect masks of this many images (paper Fig. 6; default %(default)s, 0: none)")
    p.add_argument("--mask-layers", type=_int_list, default=None,
                   help="comma-separated layers of the mask figure (default: 4 evenly spaced, ending at the last)")
    p.add_argument("--compare-weights", type=Path, default=None,
                   help="a second checkpoint: plot its leading singular values minus the backbone's per block "
                   "linear layer (paper Fig. 7), e.g. a repaired checkpoint against the original")
    p.add_argument("--compare-backbone", default=None, metavar="SPEC",
                   help="the second model as --backbone takes it (NAME, NAME:WEIGHTS or PATH), or the "
                   "architecture of --compare-weights (default: --backbone); alone, compares with that "
                   "backbone's own weights")
    p.add_argument("--sv-top", type=int, default=3, help="leading singular values in the comparison (default 3)")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"), default=None,
                   help="instead of the analysis: the per-image defect census of two checkpoints of --backbone "
                   "(weights files; 'own' for the backbone's own weights), each measured with its own directions; "
                   "lists the images B has made worse than A (the rule is printed with the count) and writes "
                   "census.json into --out")
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
        parents=[backbone_parent(), out_parent("output .safetensors file", required=True, type=Path), force_parent()],
    )
    c.add_argument("--gamma", type=float, required=True, help="upper bound of the singular values")
    c.set_defaults(func=run_clamp)


# --------------------------------------------------------------------------------------------- analyze
def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of layer indices, e.g. 9,19,29,39"
        ) from None


def _setup(args: argparse.Namespace, images: bool = True):
    """What analyze and clamp both start from: the --backbone spec resolved, the model built (on the CPU, where
    the analysis runs) and, for analyze, the image list (--max-images of it, sorted by name)."""
    from sinder.models.weights import load_backbone
    from sinder.utils.images import list_images

    name, weights = resolve_backbone(args)
    if getattr(args, "resolution", 0) is None:  # one preset scale for every verb: repair's (sinder.repair.config)
        from sinder.repair.config import preset_defaults

        args.resolution = int(preset_defaults(name)[0].get("resolution", DEFAULT_RESOLUTION))
    paths = None
    if images:  # listed first: an empty or missing folder fails before a large model is built
        paths = list_images(args.images)
        paths = paths[: args.max_images] if args.max_images else paths
    if images and args.compare:  # the census loads its two checkpoints itself
        return None, paths
    return load_backbone(name, weights), paths


def _compare_spec(args: argparse.Namespace) -> tuple[str, str | Path | None]:
    """(name, weights) of the model to compare with: --compare-backbone in the --backbone grammar, whose
    weights may also come from --compare-weights (not both)."""
    if args.compare_backbone is None:
        return args.backbone, args.compare_weights
    name, weights = split_backbone(args.compare_backbone)
    if not name:
        raise UsageError(f"--compare-backbone {args.compare_backbone!r}: expected NAME, NAME:WEIGHTS or PATH")
    if weights is not None and args.compare_weights is not None:
        raise UsageError(f"--compare-backbone {args.compare_backbone} already names a weights file; drop "
                         f"--compare-weights {args.compare_weights}")  # fmt: skip
    return name, weights if weights is not None else args.compare_weights


def run_analyze(args: argparse.Namespace) -> int:
    """The analyze verb; bad input (empty or unreadable folder, corrupt image, mismatched checkpoint) is a usage
    error: one line on stderr and exit 2 (``sinder.cli.common.run_verb``)."""
    from sinder.models.weights import load_backbone

    if args.sv_top < 1:
        raise UsageError(f"--sv-top {args.sv_top} must be >= 1")
    check_writable(args.out, "--out")
    if args.compare:  # both checkpoints opened against --backbone's architecture before any work
        from sinder.models.weights import check_weights_file

        name, _ = split_backbone(args.backbone)
        for weights in args.compare:
            if weights == "own":
                continue
            if not Path(weights).exists():
                raise UsageError(f"--compare {weights}: weights file does not exist (or write 'own')")
            problem = check_weights_file(name, weights)
            if problem:
                raise UsageError(f"--compare {weights}: {problem}")
    model, images = _setup(args)
    if args.compare:
        return _run_compare(args, images)
    compare = None
    if args.compare_weights is not None or args.compare_backbone is not None:
        compare = load_backbone(*_compare_spec(args))
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
    from sinder.models.weights import save_state_dict
    from sinder.remedies.clamp import clamp_singular_values, gamma_problem

    if args.out.exists() and not args.force:
        raise UsageError(f"{args.out} exists; pass --force to overwrite it")
    if args.out.suffix.lower() != ".safetensors":
        raise UsageError(f"--out {args.out} must end in .safetensors")
    if gamma_problem(args.gamma):
        raise UsageError(f"--gamma {args.gamma}: {gamma_problem(args.gamma)}")
    check_writable(args.out.parent, "--out")
    model, _ = _setup(args, images=False)
    state, report = clamp_singular_values(model, args.gamma)
    meta = {"clamp_gamma": str(args.gamma), "source_sha256": str(getattr(model, "weights_sha256", ""))}
    sha = save_state_dict(state, args.out, force=args.force, metadata=meta)
    clamped = [r for r in report if r.n_clamped]
    print(f"{len(clamped)}/{len(report)} block linear layers had singular values above {args.gamma}")
    for r in clamped:
        print(f"  {r.key}: {r.n_clamped} clamped, max {r.max_before:.3f} -> {r.max_after:.3f}")
    print(f"wrote {args.out} (sha256 {sha})")
    return 0
