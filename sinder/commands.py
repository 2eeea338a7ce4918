"""`sinder-bench analyze` (Sections 2-3 on a folder of images) and `sinder-bench clamp` (Appendix B)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_write_text


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
    p.add_argument("--mu", type=float, default=4.0, help="Eq. 5 mask threshold (default %(default)s)")
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
def _nan_to_none(x: float) -> float | None:
    return None if isinstance(x, float) and math.isnan(x) else x


def analyze(model, image_paths, out: Path, n_samples=100_000, seed=0, method="sampled", mu=4.0, sigma=3,
            exclude_border=True, resolution=518, cache_dir=None, log=print) -> dict:
    """Run the Section 2-3 analysis; returns (and writes to ``out/analysis.json``) the per-layer record."""
    from .defects import (
        LayerAccumulator,
        acute_angle,
        acute_angles_to,
        find_defects,
        high_norm_mask,
        patch_token_grids,
    )
    from .images import load_image
    from .linearize import KINDS, linearized_directions
    from .plots import plot_direction_angles, plot_norm_violins, plot_pca_and_norms

    out.mkdir(parents=True, exist_ok=True)
    dirs = linearized_directions(model, n_samples, seed, KINDS, method, cache_dir)
    nu = dirs.nu
    depth = len(nu)
    accs = [LayerAccumulator(keep_norms=(i == depth - 1)) for i in range(depth)]
    eq5_counts = np.zeros((len(image_paths), depth), dtype=np.int64)
    first_maps, first_image = None, None
    for j, path in enumerate(image_paths):
        image = load_image(path, resolution, model.patch_size)
        with torch.inference_mode():
            grids = patch_token_grids(model, image[None])
        for i, grid in enumerate(grids):
            tokens = grid[0].float()
            accs[i].add(tokens, high_norm_mask(tokens))
            eq5_counts[j, i] = int(find_defects(tokens, nu[i], mu, exclude_border).sum())
        if j == 0:
            first_maps, first_image = [g[0].float() for g in grids], image
    layers = []
    for i in range(depth):
        stats = accs[i].result(nu[i])
        emp = accs[i].direction()
        layers.append({
            "layer": i,
            "eq5_mean_defects": float(eq5_counts[:, i].mean()),
            "eq5_images_with_sigma_defects": int((eq5_counts[:, i] >= sigma).sum()),
            "high_norm": stats.to_dict(),
            "angle_to_empirical": {
                k: (_nan_to_none(acute_angle(emp, dirs.directions[k][i])) if emp is not None else None) for k in KINDS
            },
        })
    clear = (eq5_counts < sigma).all(axis=1)
    figures = {
        "pca_norm": str(plot_pca_and_norms(first_maps[-1], out / "pca_norm_last_layer.png", image=first_image,
                                           title=f"{image_paths[0].name}, layer {depth - 1}")),
        "angles": str(plot_direction_angles(
            list(range(depth)),
            {k: [a["angle_to_empirical"][k] if a["angle_to_empirical"][k] is not None else float("nan")
                 for a in layers] for k in KINDS},
            {k: [acute_angles_to(first_maps[i], dirs.directions[k][i]) for i in range(depth)] for k in KINDS},
            out / "angles_vs_layer.png",
        )),
    }
    last = accs[-1]
    norm_groups = {"defective": torch.cat(last.defect_norms), "normal": torch.cat(last.normal_norms)}
    if any(v.numel() for v in norm_groups.values()):
        figures["norm_violins"] = str(plot_norm_violins(norm_groups, out / "norms_last_layer.png",
                                                        title=f"layer {depth - 1} token norms"))
    record = {
        "backbone": getattr(model, "name", None),
        "weights_sha256": getattr(model, "weights_sha256", None),
        "settings": {
            "n_images": len(image_paths), "resolution": resolution, "mu": mu, "sigma": sigma,
            "exclude_border": exclude_border, "high_norm_detector": "robust z-score > 4 and >= 3x median",
        },
        "directions": {"method": dirs.method, "n_samples": dirs.n_samples, "seed": dirs.seed,
                       "fingerprint": dirs.fingerprint},
        "clear_images": int(clear.sum()),
        "eq5_counts": eq5_counts.tolist(),
        "layers": layers,
        "figures": figures,
    }
    atomic_write_text(out / "analysis.json", json.dumps(record, indent=1))
    return record


def format_table(record: dict) -> str:
    def f(x, fmt="{:.1f}"):
        return "-" if x is None else fmt.format(x)

    head = ("layer", "eq5/img", "hn def", "norm def", "norm normal", "ang defects", "ang all", "ang images",
            "G vs emp", "E vs emp")
    rows = [head]
    for layer in record["layers"]:
        hn = layer["high_norm"]
        rows.append((
            str(layer["layer"]), f(layer["eq5_mean_defects"], "{:.2f}"), str(hn["n_defects"]),
            f(hn["mean_norm_defective"]), f(hn["mean_norm_normal"]), f(hn["angle_within_defects"]),
            f(hn["angle_within_all"]), f(hn["angle_between_images"]),
            f(layer["angle_to_empirical"]["cumulative"]), f(layer["angle_to_empirical"]["block"]),
        ))
    widths = [max(len(r[c]) for r in rows) for c in range(len(head))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(r, widths)) for r in rows)


def run_analyze(args: argparse.Namespace) -> int:
    from .images import list_images
    from .weights import load_backbone

    images = list_images(args.images)[: args.max_images] if args.max_images else list_images(args.images)
    model = load_backbone(args.backbone, args.weights)
    record = analyze(model, images, args.out, args.n_samples, args.seed, args.method, args.mu, args.sigma,
                     not args.flag_border, args.resolution, args.cache_dir)
    print(format_table(record))
    print(f"{record['clear_images']}/{len(images)} images clear (every layer < {args.sigma} Eq. 5 defects)")
    print(f"wrote {args.out / 'analysis.json'} and {len(record['figures'])} figures")
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
