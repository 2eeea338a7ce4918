"""The Section 2-3 analysis of a backbone on a list of images: per-layer statistics and figures."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from sinder.defects.detect import DEFAULT_MU, DEFAULT_SIGMA
from sinder.defects.linearize import DEFAULT_N_SAMPLES
from sinder.utils.atomic import atomic_write_text
from sinder.utils.images import DEFAULT_RESOLUTION


def _nan_to_none(x: float) -> float | None:
    return None if isinstance(x, float) and math.isnan(x) else x


def _bar(iterable=None, progress: bool | None = None, **kwargs):
    """A tqdm bar on stderr; ``progress=None`` shows it only on a terminal (``sinder.utils.progress``)."""
    from sinder.utils.progress import progress as bar

    return bar(iterable, enabled=progress, **kwargs)


def directions_with_progress(model, n_samples=DEFAULT_N_SAMPLES, seed=0, method="sampled", cache_dir=None, progress=None):
    """``linearize.linearized_directions(model, ...)`` for every kind, with a progress bar over the blocks."""
    from sinder.defects.linearize import KINDS, linearized_directions

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


def backbone_label(model, default: str = "backbone") -> str:
    """What a figure title calls the analysed model: its name, and its weights file when that says more."""
    name = getattr(model, "name", None) or default
    weights = _checkpoint_label(model, name)
    return name if weights == name else f"{name} ({weights})"


def _state_dict(model_or_state) -> dict:
    return dict(model_or_state) if isinstance(model_or_state, Mapping) else model_or_state.state_dict()


def analyze(model, image_paths, out: Path, n_samples=DEFAULT_N_SAMPLES, seed=0, method="sampled", mu=DEFAULT_MU, sigma=DEFAULT_SIGMA,
            exclude_border=True, resolution=DEFAULT_RESOLUTION, cache_dir=None, log=print, compare=None, sv_top=3,
            mask_images=3, mask_layers=None, progress=None) -> dict:
    """Run the Section 2-3 analysis; returns (and writes to ``out/analysis.json``) the per-layer record.

    ``compare``: a second checkpoint (model or state dict of the same architecture); adds Figure 7, its
    ``sv_top`` leading singular values minus ``model``'s per block linear layer. ``mask_images`` first images
    get Figure 6, their Eq. 5 masks in ``mask_layers`` (default: 4 evenly spaced layers).
    """
    from sinder.defects.detect import (
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
    from sinder.defects.linearize import KINDS
    from sinder.models.adapter import patch_multiple
    from sinder.models.backbone import normalization
    from sinder.utils.images import load_image

    if not image_paths:
        raise ValueError("no images to analyze")
    at_patch = patch_multiple(resolution, model.patch_size)
    if at_patch != resolution:
        log(f"resolution {resolution} is not a multiple of the backbone's patch size {model.patch_size}: using {at_patch}")
        resolution = at_patch
    depth = len(model.blocks)
    mask_layers = default_mask_layers(depth) if mask_layers is None else sorted({int(i) for i in mask_layers})
    bad = [i for i in mask_layers if not 0 <= i < depth]
    if bad:
        raise ValueError(f"--mask-layers {bad} out of range: the backbone has layers 0..{depth - 1}")
    if mask_images < 0:
        raise ValueError(f"--mask-images {mask_images} must be >= 0")
    differences = None
    if compare is not None:  # before the long image loop: a mismatched checkpoint fails fast
        from sinder.plots.figures import singular_value_differences

        differences = singular_value_differences(_state_dict(model), _state_dict(compare), top=sv_top,
                                                 progress=progress)

    out.mkdir(parents=True, exist_ok=True)
    stats = normalization(model)  # the backbone's own mean/std
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
        image = load_image(path, resolution, model.patch_size, **stats)
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
    from sinder.defects.detect import acute_angles_to
    from sinder.defects.linearize import KINDS
    from sinder.plots.figures import (
        plot_defect_masks,
        plot_direction_angles,
        plot_norm_violins,
        plot_norm_violins_per_layer,
        plot_pca_and_norms,
        plot_singular_value_differences,
    )

    depth = len(layers)
    indices = list(range(depth))
    who = backbone_label(model)  # every figure names the backbone it shows: figures get copied out of their folder

    def empirical(kind):  # angle of each layer's empirical defect direction to a direction; NaN: no defects
        values = [a["random_angle_to_empirical"] if kind == "random" else a["angle_to_empirical"][kind]
                  for a in layers]
        return [float("nan") if v is None else v for v in values]

    nu_angles = {k: [acute_angles_to(first_maps[i], dirs.directions[k][i]) for i in indices] for k in KINDS}
    figures = {
        "pca_norm": plot_pca_and_norms(first_maps[-1], out / "pca_norm_last_layer.png", image=first_image,
                                       title=f"{who}: {image_paths[0].name}, layer {depth - 1}"),
        "angles": plot_direction_angles(indices, {k: empirical(k) for k in KINDS}, nu_angles,
                                        out / "angles_vs_layer.png",
                                        title=f"{who}: angle to the singular defect direction ({image_paths[0].name})"),
        # Figure 8 under nu_i's panel (Figure 2d) on the same image: only nu_i singles out the defect tokens.
        "angles_random_direction": plot_direction_angles(
            indices, {"cumulative": empirical("cumulative"), "random": empirical("random")},
            {"cumulative": nu_angles["cumulative"], "random": [acute_angles_to(first_maps[i], rand) for i in indices]},
            out / "angles_random_direction.png",
            title=f"{who}: singular defect direction vs a random direction ({image_paths[0].name})",
        ),
    }
    last = accs[-1]
    norm_groups = {"defective": torch.cat(last.defect_norms), "normal": torch.cat(last.normal_norms)}
    if any(v.numel() for v in norm_groups.values()):
        figures["norm_violins"] = plot_norm_violins(norm_groups, out / "norms_last_layer.png",
                                                    title=f"{who}: layer {depth - 1} token norms")
    figures["norm_violins_per_layer"] = plot_norm_violins_per_layer(
        indices, [torch.cat(a.defect_norms) for a in accs], [torch.cat(a.normal_norms) for a in accs],
        out / "norms_per_layer.png",
        title=f"{who}: token norms per layer over {len(image_paths)} images (defective: high-norm tokens)",
    )
    if mask_rows:
        figures["defect_masks"] = plot_defect_masks(
            mask_inputs, mask_rows, mask_layers, out / "defect_masks.png",
            image_names=[p.name for p in image_paths[: len(mask_rows)]],
            title=f"{who}: Eq. 5 defect masks",
        )
    if differences is not None:
        figures["singular_value_differences"] = plot_singular_value_differences(
            differences, out / "singular_value_differences.png", ylabel="second - first",
            title=f"leading singular values: {_checkpoint_label(compare, 'second')} minus "
            f"{_checkpoint_label(model, 'first')}",
        )
    return {name: str(path) for name, path in figures.items()}


# What each column of ``format_table`` holds (printed under it: the table is read away from this code).
TABLE_COLUMNS = (
    ("layer", "block index (0 = first)"),
    ("eq5/img", "Eq. 5 defects per image: tokens whose logit along nu (the singular defect direction) exceeds"
                " the map's mean + mu std, border excluded"),
    ("hn def", "high-norm patch tokens over all images (robust z-score > 4 and >= 3x the median norm)"),
    ("norm def", "mean norm of the high-norm tokens"),
    ("norm normal", "mean norm of the other patch tokens"),
    ("ang defects", "mean pairwise angle (deg) among one image's high-norm tokens, averaged over images"),
    ("ang all", "mean pairwise angle (deg) among all of one image's patch tokens, averaged over images"),
    ("ang images", "mean pairwise angle (deg) between the images' mean high-norm tokens"),
    ("G vs emp", "angle (deg) of the cumulative singular defect direction nu (G) to the empirical defect direction"),
    ("E vs emp", "angle (deg) of the block's own direction (E) to the empirical defect direction"),
    ("def-nu", "mean acute angle (deg) of the high-norm tokens to nu"),
    ("def-rand", "mean acute angle (deg) of the high-norm tokens to a random unit direction"),
)


def format_table(record: dict) -> str:
    """The per-layer table of ``analyze``'s record, a legend of its columns under it ('-': undefined, no defects)."""

    def f(x, fmt="{:.1f}"):
        return "-" if x is None else fmt.format(x)

    head = tuple(name for name, _ in TABLE_COLUMNS)
    title = f"{record.get('backbone') or 'backbone'}: {record['settings']['n_images']} images"
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
    table = ["  ".join(cell.rjust(w) for cell, w in zip(r, widths)) for r in rows]
    key_width = max(len(name) for name in head)
    legend = [f"  {name.ljust(key_width)}  {meaning}" for name, meaning in TABLE_COLUMNS]
    return "\n".join([title, *table, "columns ('-': undefined, e.g. no high-norm tokens in that layer):", *legend])
