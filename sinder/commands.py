"""`sinder-bench analyze` (Sections 2-3 on a folder of images) and `sinder-bench clamp` (Appendix B)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_write_text
from .defects import DEFAULT_MU


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
    p.add_argument("--n-samples", type=int, default=100_000, help="least-squares samples per MLP (official: 100000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the least-squares samples")
    p.add_argument(
        "--method", choices=("sampled", "expectation"), default="sampled",
        help="MLP linearization: sampled least squares (official) or its exact Gaussian expectation (fast)",
    )
    p.add_argument("--mu", type=float, default=DEFAULT_MU, help="Eq. 5 mask threshold (default %(default)s)")
    p.add_argument("--sigma", type=int, default=3, help="an image is clear if every layer has fewer defects")
    p.add_argument(
        "--flag-border", action="store_true",
        help="let Eq. 5 flag tokens on the grid border (the paper's text; the official code never does)",
    )
    p.add_argument("--max-images", type=int, default=None, help="use at most this many images (sorted by name)")
    p.add_argument(
        "--resolution", type=int, default=518,
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


def _nan_to_none(x: float) -> float | None:
    return None if isinstance(x, float) and math.isnan(x) else x


def _bar(iterable=None, progress: bool | None = None, **kwargs):
    """A tqdm bar on stderr; ``progress=None`` shows it only on a terminal (no bar noise in logs)."""
    from tqdm import tqdm

    return tqdm(iterable, disable=None if progress is None else not progress, leave=False, **kwargs)


def directions_with_progress(model, n_samples=100_000, seed=0, method="sampled", cache_dir=None, progress=None):
    """``linearize.linearized_directions(model, ...)`` for every kind, with a progress bar over the blocks."""
    from .linearize import KINDS, linearized_directions

    return linearized_directions(model, n_samples, seed, KINDS, method, cache_dir, progress=progress)


def default_mask_layers(depth: int, count: int = 4) -> list[int]:
    """``count`` evenly spaced layers ending at the last, as the appendix's 9, 19, 29, 39 of ViT-g's 40."""
    count = min(count, depth)
    return sorted({round((k + 1) * depth / count) - 1 for k in range(count)})


def _checkpoint_label(model, default: str) -> str:
    """The weights file's name, or the backbone's name for constructed / preset weights."""
    source = str(getattr(model, "weights_source", "") or "")
    if source and not source.startswith("constructed:"):
        return Path(source).name
    return getattr(model, "name", None) or default


def _state_dict(model_or_state) -> dict:
    return dict(model_or_state) if isinstance(model_or_state, Mapping) else model_or_state.state_dict()


def analyze(model, image_paths, out: Path, n_samples=100_000, seed=0, method="sampled", mu=DEFAULT_MU, sigma=3,
            exclude_border=True, resolution=518, cache_dir=None, log=print, compare=None, sv_top=3,
            mask_images=3, mask_layers=None, progress=None) -> dict:
    """Run the Section 2-3 analysis; returns (and writes to ``out/analysis.json``) the per-layer record.

    ``compare``: a second checkpoint (model or state dict of the same architecture); adds Figure 7, its
    ``sv_top`` leading singular values minus ``model``'s per block linear layer. ``mask_images`` first images
    get Figure 6, their Eq. 5 masks in ``mask_layers`` (default: 4 evenly spaced layers).
    """
    from .defects import (
        LayerAccumulator,
        TokenAngleAccumulator,
        acute_angle,
        enough_defects,
        find_defects,
        first_defective,
        high_norm_mask,
        patch_token_grids,
        random_unit_direction,
    )
    from .images import load_image
    from .linearize import KINDS

    if not image_paths:
        raise ValueError("no images to analyze")
    depth = len(model.blocks)
    mask_layers = default_mask_layers(depth) if mask_layers is None else sorted({int(i) for i in mask_layers})
    bad = [i for i in mask_layers if not 0 <= i < depth]
    if bad:
        raise ValueError(f"--mask-layers {bad} out of range: the backbone has layers 0..{depth - 1}")
    if mask_images < 0:
        raise ValueError(f"--mask-images {mask_images} must be >= 0")
    differences = None
    if compare is not None:  # before the long image loop: a mismatched checkpoint fails fast
        from .plots import singular_value_differences

        differences = singular_value_differences(_state_dict(model), _state_dict(compare), top=sv_top,
                                                 progress=progress)

    out.mkdir(parents=True, exist_ok=True)
    dirs = directions_with_progress(model, n_samples, seed, method, cache_dir, progress)
    nu = dirs.nu
    rand = random_unit_direction(model.embed_dim, seed)
    accs = [LayerAccumulator(keep_norms=True) for _ in range(depth)]
    token_angles = [TokenAngleAccumulator({"nu": nu[i], "random": rand}) for i in range(depth)]
    eq5_counts = np.zeros((len(image_paths), depth), dtype=np.int64)
    mask_column = {layer: c for c, layer in enumerate(mask_layers)}
    mask_rows, mask_inputs = [], []
    first_maps, first_image = None, None
    for j, path in enumerate(_bar(image_paths, progress, desc="images", unit="img")):
        image = load_image(path, resolution, model.patch_size)
        with torch.inference_mode():
            grids = patch_token_grids(model, image[None])
        row = [None] * len(mask_layers)
        for i, grid in enumerate(grids):
            tokens = grid[0].float()
            high_norm = high_norm_mask(tokens)  # nu-independent defects: fair for the angle statistics
            accs[i].add(tokens, high_norm)
            token_angles[i].add(tokens, high_norm)
            eq5 = find_defects(tokens, nu[i], mu, exclude_border)
            eq5_counts[j, i] = int(eq5.sum())
            if j < mask_images and i in mask_column:
                row[mask_column[i]] = eq5
        if j < mask_images and mask_layers:
            mask_rows.append(row)
            mask_inputs.append(image)
        if j == 0:
            first_maps, first_image = [g[0].float() for g in grids], image
    layers = []
    for i in range(depth):
        stats = accs[i].result(nu[i])
        emp = accs[i].direction()
        layers.append({
            "layer": i,
            "eq5_mean_defects": float(eq5_counts[:, i].mean()),
            "eq5_images_with_sigma_defects": int(sum(enough_defects(int(n), sigma) for n in eq5_counts[:, i])),
            "high_norm": stats.to_dict(),
            "angle_to_empirical": {
                k: (_nan_to_none(acute_angle(emp, dirs.directions[k][i])) if emp is not None else None) for k in KINDS
            },
            "random_angle_to_empirical": _nan_to_none(acute_angle(emp, rand)) if emp is not None else None,
            "token_angles": token_angles[i].result(),
        })
    clear = np.array([first_defective(row, sigma) is None for row in eq5_counts], dtype=bool)
    figures = _write_figures(out, model, image_paths, dirs, rand, layers, accs, first_maps, first_image,
                             mask_inputs, mask_rows, mask_layers, differences, compare)
    record = {
        "backbone": getattr(model, "name", None),
        "weights_sha256": getattr(model, "weights_sha256", None),
        "settings": {
            "n_images": len(image_paths), "resolution": resolution, "mu": mu, "sigma": sigma,
            "exclude_border": exclude_border, "high_norm_detector": "robust z-score > 4 and >= 3x median",
            "random_direction": f"normalized N(0, I), seed {seed}", "mask_images": len(mask_rows),
            "mask_layers": mask_layers,
        },
        "directions": {"method": dirs.method, "n_samples": dirs.n_samples, "seed": dirs.seed,
                       "fingerprint": dirs.fingerprint},
        "clear_images": int(clear.sum()),
        "eq5_counts": eq5_counts.tolist(),
        "layers": layers,
        "figures": figures,
    }
    if differences is not None:
        record["singular_value_differences"] = {
            "first": {"backbone": getattr(model, "name", None), "weights": _checkpoint_label(model, "first"),
                      "weights_sha256": getattr(model, "weights_sha256", None)},
            "second": {"backbone": getattr(compare, "name", None), "weights": _checkpoint_label(compare, "second"),
                       "weights_sha256": getattr(compare, "weights_sha256", None)},
            "top": sv_top,
            "second_minus_first": {name: diff.tolist() for name, diff in differences.items()},
        }
    atomic_write_text(out / "analysis.json", json.dumps(record, indent=1))
    return record


def _write_figures(out, model, image_paths, dirs, rand, layers, accs, first_maps, first_image, mask_inputs,
                   mask_rows, mask_layers, differences, compare) -> dict[str, str]:
    from .defects import acute_angles_to
    from .linearize import KINDS
    from .plots import (
        plot_defect_masks,
        plot_direction_angles,
        plot_norm_violins,
        plot_norm_violins_per_layer,
        plot_pca_and_norms,
        plot_singular_value_differences,
    )

    depth = len(layers)
    indices = list(range(depth))

    def empirical(kind):  # angle of each layer's empirical defect direction to a direction; NaN: no defects
        values = [a["random_angle_to_empirical"] if kind == "random" else a["angle_to_empirical"][kind]
                  for a in layers]
        return [float("nan") if v is None else v for v in values]

    nu_angles = {k: [acute_angles_to(first_maps[i], dirs.directions[k][i]) for i in indices] for k in KINDS}
    figures = {
        "pca_norm": plot_pca_and_norms(first_maps[-1], out / "pca_norm_last_layer.png", image=first_image,
                                       title=f"{image_paths[0].name}, layer {depth - 1}"),
        "angles": plot_direction_angles(indices, {k: empirical(k) for k in KINDS}, nu_angles,
                                        out / "angles_vs_layer.png"),
        # Figure 8 under nu_i's panel (Figure 2d) on the same image: only nu_i singles out the defect tokens.
        "angles_random_direction": plot_direction_angles(
            indices, {"cumulative": empirical("cumulative"), "random": empirical("random")},
            {"cumulative": nu_angles["cumulative"], "random": [acute_angles_to(first_maps[i], rand) for i in indices]},
            out / "angles_random_direction.png",
        ),
    }
    last = accs[-1]
    norm_groups = {"defective": torch.cat(last.defect_norms), "normal": torch.cat(last.normal_norms)}
    if any(v.numel() for v in norm_groups.values()):
        figures["norm_violins"] = plot_norm_violins(norm_groups, out / "norms_last_layer.png",
                                                    title=f"layer {depth - 1} token norms")
    figures["norm_violins_per_layer"] = plot_norm_violins_per_layer(
        indices, [torch.cat(a.defect_norms) for a in accs], [torch.cat(a.normal_norms) for a in accs],
        out / "norms_per_layer.png",
        title=f"token norms per layer over {len(image_paths)} images (defective: high-norm tokens)",
    )
    if mask_rows:
        figures["defect_masks"] = plot_defect_masks(
            mask_inputs, mask_rows, mask_layers, out / "defect_masks.png",
            image_names=[p.name for p in image_paths[: len(mask_rows)]],
        )
    if differences is not None:
        figures["singular_value_differences"] = plot_singular_value_differences(
            differences, out / "singular_value_differences.png", ylabel="second - first",
            title=f"leading singular values: {_checkpoint_label(compare, 'second')} minus "
            f"{_checkpoint_label(model, 'first')}",
        )
    return {name: str(path) for name, path in figures.items()}


def format_table(record: dict) -> str:
    def f(x, fmt="{:.1f}"):
        return "-" if x is None else fmt.format(x)

    head = ("layer", "eq5/img", "hn def", "norm def", "norm normal", "ang defects", "ang all", "ang images",
            "G vs emp", "E vs emp", "def-nu", "def-rand")
    rows = [head]
    for layer in record["layers"]:
        hn = layer["high_norm"]
        rows.append((
            str(layer["layer"]), f(layer["eq5_mean_defects"], "{:.2f}"), str(hn["n_defects"]),
            f(hn["mean_norm_defective"]), f(hn["mean_norm_normal"]), f(hn["angle_within_defects"]),
            f(hn["angle_within_all"]), f(hn["angle_between_images"]),
            f(layer["angle_to_empirical"]["cumulative"]), f(layer["angle_to_empirical"]["block"]),
            f(layer["token_angles"]["nu"]["defective"]), f(layer["token_angles"]["random"]["defective"]),
        ))
    widths = [max(len(r[c]) for r in rows) for c in range(len(head))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(r, widths)) for r in rows)


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
    from .images import list_images
    from .weights import load_backbone

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
    print("def-nu / def-rand: mean angle of the high-norm tokens to nu_i / to a random direction")
    print(f"{record['clear_images']}/{len(images)} images clear (every layer < max(sigma, 1) = {max(args.sigma, 1)} Eq. 5 defects)")
    print(f"wrote {args.out / 'analysis.json'} and {len(record['figures'])} figures")
    return 0


def _run_compare(args: argparse.Namespace, images) -> int:
    from .census import compare_checkpoints, format_comparison, worse_warning

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
    from .clamp import clamp_singular_values
    from .weights import load_backbone, save_state_dict

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
