"""Figures of the paper: PCA maps and norm maps (Fig. 1), angles to the predicted directions per layer with violins
(Fig. 2, 8), norm violins of defective vs normal tokens (one layer, or every layer), Eq. 5 defect masks over the
images (Fig. 6) and singular value differences (Fig. 7).

Figures are drawn on ``matplotlib.figure.Figure`` with the Agg canvas (no pyplot, no global backend state) and
saved atomically; each function returns the PNG path. A PNG is exactly ``figsize * dpi`` pixels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter
from torch import Tensor

from sinder.plots.layout import fit_text
from sinder.utils.atomic import atomic_path

KIND_TITLES = {
    "attention": "I + A (attention)",
    "mlp": "I + C (MLP)",
    "block": "E (block)",
    "cumulative": "G (singular defect direction)",
    "random": "random unit direction",
}
DEFECTIVE_COLOR, NORMAL_COLOR = "tab:red", "tab:blue"


def _save(fig: Figure, path: str | Path, dpi: int) -> Path:
    """Write ``fig`` as PNG atomically, its text fitted to the canvas, its title also in the file's Title field
    (readable without the pixels)."""
    path = Path(path)
    FigureCanvasAgg(fig)
    titled = [ax.get_title() for ax in fig.axes if ax.get_title()]
    title = fig.get_suptitle() or (titled[0] if len(titled) == 1 else "")
    fit_text(fig, grow=False)  # a long title wraps rather than leaving the canvas (sinder.plots.layout)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, format="png", metadata={"Title": title} if title else None)
    return path


def pca_rgb(tokens_hw: Tensor) -> np.ndarray:
    """Appendix A: the 3 leading principal components of the tokens, each min-max scaled to [0, 1], as H x W x 3."""
    if tokens_hw.ndim != 3:
        raise ValueError(f"tokens_hw must be H x W x D, got shape {tuple(tokens_hw.shape)}")
    height, width, dim = tokens_hw.shape
    x = tokens_hw.reshape(-1, dim).double()
    x = x - x.mean(dim=0)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    k = min(3, vh.shape[0])
    proj = x @ vh[:k].T
    lo, hi = proj.min(dim=0).values, proj.max(dim=0).values
    scaled = (proj - lo) / (hi - lo).clamp_min(1e-12)
    if k < 3:
        scaled = torch.cat([scaled, torch.zeros(scaled.shape[0], 3 - k, dtype=scaled.dtype)], dim=1)
    return scaled.reshape(height, width, 3).numpy()


def _image_for_display(image: Tensor | np.ndarray) -> np.ndarray:
    arr = image.detach().cpu().float().numpy() if isinstance(image, Tensor) else np.asarray(image, dtype=float)
    if arr.ndim == 3 and arr.shape[0] == 3:
        arr = arr.transpose(1, 2, 0)
    lo, hi = arr.min(), arr.max()
    return (arr - lo) / max(hi - lo, 1e-12)


def _violins(ax, data: Sequence[np.ndarray], positions: Sequence[float], width: float, color: str) -> None:
    """Violins where a group has a spread; a group of one value (or all equal) is drawn as points instead, as a
    kernel density estimate of it is undefined."""
    spread = [j for j, d in enumerate(data) if len(d) >= 2 and np.ptp(d) > 0]
    if spread:
        parts = ax.violinplot([data[j] for j in spread], positions=[positions[j] for j in spread], widths=width,
                              showextrema=False)
        for body in parts["bodies"]:
            body.set_facecolor(color)
            body.set_edgecolor(color)
            body.set_alpha(0.4)
    for j, d in enumerate(data):
        if j not in spread and len(d):
            ax.scatter(np.full(len(d), positions[j]), d, s=12, color=color, marker="_")


def _layer_ticks(ax, layers: Sequence[int], max_labels: int = 25) -> None:
    """Every layer ticked, every k-th labelled so that 40 layers (ViT-g) stay legible."""
    layers = list(layers)
    step = max(1, -(-len(layers) // max_labels))
    ax.set_xticks(layers)
    ax.set_xticklabels([str(x) if j % step == 0 else "" for j, x in enumerate(layers)])


def _log_ticks(ax) -> None:
    """Ticks at 1, 2, 5 x 10^k on an axis that shows log10 values, labelled with the values themselves."""
    lo, hi = ax.get_ylim()
    values = [m * 10.0**k for k in range(int(np.floor(lo)) - 1, int(np.ceil(hi)) + 1) for m in (1, 2, 5)]
    ticks = [np.log10(v) for v in values if lo <= np.log10(v) <= hi]
    if len(ticks) > 9:  # a wide range: decades only
        ticks = [t for t in ticks if abs(t - round(t)) < 1e-9]
    ax.set_yticks(ticks)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{10**v:g}"))


def plot_pca_and_norms(
    tokens_hw: Tensor,
    path: str | Path,
    image: Tensor | np.ndarray | None = None,
    title: str | None = None,
    figsize: tuple[float, float] = (9.0, 3.0),
    dpi: int = 100,
) -> Path:
    """Figure 1: (the image,) the PCA map of the patch tokens and their norm map."""
    panels = 3 if image is not None else 2
    fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    axes = fig.subplots(1, panels)
    col = 0
    if image is not None:
        axes[0].imshow(_image_for_display(image))
        axes[0].set_title("image")
        col = 1
    axes[col].imshow(pca_rgb(tokens_hw), interpolation="nearest")
    axes[col].set_title("PCA of patch tokens")
    norm_im = axes[col + 1].imshow(tokens_hw.float().norm(dim=-1).cpu().numpy(), cmap="viridis", interpolation="nearest")
    axes[col + 1].set_title("token norm")
    fig.colorbar(norm_im, ax=axes[col + 1], shrink=0.9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title)
    return _save(fig, path, dpi)


def plot_direction_angles(
    layers: Sequence[int],
    empirical_angles: Mapping[str, Sequence[float]],
    token_angles: Mapping[str, Sequence[Tensor]] | None,
    path: str | Path,
    figsize: tuple[float, float] | None = None,
    dpi: int = 100,
    title: str | None = None,
) -> Path:
    """Figure 2 (and 8): per kind of direction, the angle to the empirical defect direction per layer (line) and
    the angles to all patch tokens of one image (violins, with every token as a dot so that the few defect tokens
    stay visible). ``empirical_angles[kind][j]`` and ``token_angles[kind][j]`` belong to ``layers[j]``; NaN
    angles (no defects) are left out of the line."""
    kinds = list(empirical_angles)
    figsize = figsize or (8.0, 0.5 + 2.5 * len(kinds))
    fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    axes = np.atleast_1d(fig.subplots(len(kinds), 1, sharex=True))
    for ax, kind in zip(axes, kinds):
        if token_angles is not None and kind in token_angles:
            data = [t.flatten().float().cpu().numpy() for t in token_angles[kind]]
            _violins(ax, data, list(layers), 0.8, "tab:blue")
            rng = np.random.default_rng(0)  # fixed jitter: the same data draw the same figure
            for x, values in zip(layers, data):
                ax.scatter(x + rng.uniform(-0.15, 0.15, len(values)), values, s=2, color="black", alpha=0.35,
                           linewidths=0)
        ax.plot(list(layers), [float(a) for a in empirical_angles[kind]], color="tab:orange", marker="o",
                markersize=3)
        ax.set_ylim(0, 95)  # room above 90 for the violins' smoothed tops
        ax.set_yticks([0, 30, 60, 90])
        ax.set_ylabel("angle (deg)")
        ax.set_title(KIND_TITLES.get(kind, kind), fontsize=9)
    handles = [Line2D([], [], color="tab:orange", marker="o", markersize=3, label="empirical defect direction")]
    if token_angles is not None:
        handles.insert(0, Patch(color="tab:blue", alpha=0.4, label="patch tokens of one image (dots: each token)"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8, frameon=False)
    axes[-1].set_xlabel("layer")
    _layer_ticks(axes[-1], layers)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path, dpi)


def plot_norm_violins(
    groups: Mapping[str, Tensor],
    path: str | Path,
    title: str | None = None,
    figsize: tuple[float, float] = (5.0, 4.0),
    dpi: int = 100,
) -> Path:
    """Violins of token norms per named group (e.g. ``{"defective": ..., "normal": ...}``); empty groups skipped."""
    names = [k for k, v in groups.items() if v.numel()]
    if not names:
        raise ValueError("every group of norms is empty: nothing to plot")
    fig = Figure(figsize=figsize, dpi=dpi)
    ax = fig.subplots()
    ax.violinplot([groups[k].flatten().float().cpu().numpy() for k in names], showmedians=True)
    ax.set_xticks(range(1, len(names) + 1), labels=names)
    ax.set_ylabel("token norm")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path, dpi)


def singular_value_differences(
    old_state: Mapping[str, Tensor], new_state: Mapping[str, Tensor], top: int = 3, progress: bool | None = False
) -> dict[str, np.ndarray]:
    """Per linear layer name (``attn.qkv``, ``mlp.w3``, ...): (n_blocks, top) leading singular values, new - old.

    ``progress``: a tqdm bar over the layers (None: only on a terminal); ViT-g has 160 SVDs to do.
    """
    from sinder.models.weights import normalize_keys
    from sinder.remedies.clamp import is_block_linear
    from sinder.utils.progress import progress as bar

    old, new = normalize_keys(old_state), normalize_keys(new_state)
    per_name: dict[str, dict[int, np.ndarray]] = {}
    keys = [key for key, tensor in old.items() if is_block_linear(key, tensor)]
    for key in bar(keys, enabled=progress, desc="singular values", unit="layer"):
        tensor = old[key]
        if key not in new:
            raise KeyError(f"{key} is in the old state dict but not in the new one")
        if new[key].shape != tensor.shape:
            raise ValueError(
                f"{key} has shape {tuple(tensor.shape)} in the old state dict but {tuple(new[key].shape)} in the "
                "new one: compare two checkpoints of the same architecture"
            )
        _, block, *rest = key.split(".")
        name = ".".join(rest[:-1])
        s_old = torch.linalg.svdvals(tensor.double())[:top]
        s_new = torch.linalg.svdvals(new[key].double())[:top]
        per_name.setdefault(name, {})[int(block)] = (s_new - s_old).numpy()
    extra = sorted(k for k, t in new.items() if is_block_linear(k, t) and k not in old)
    if extra:
        raise KeyError(f"{extra[0]} (and {len(extra) - 1} more) is in the new state dict but not in the old one")
    return {name: np.stack([rows[b] for b in sorted(rows)]) for name, rows in per_name.items()}


def plot_singular_value_differences(
    differences: Mapping[str, np.ndarray],
    path: str | Path,
    figsize: tuple[float, float] | None = None,
    dpi: int = 100,
    ylabel: str = "new - old",
    title: str | None = None,
) -> Path:
    """Figure 7: per linear layer name, new minus old of the leading singular values against the block index."""
    names = list(differences)
    if not names:
        raise ValueError("no singular value differences to plot (no block linear layers)")
    figsize = figsize or (8.0, 1.2 + 2.0 * len(names))
    fig = Figure(figsize=figsize, dpi=dpi)
    axes = np.atleast_1d(fig.subplots(len(names), 1, sharex=True))
    for ax, name in zip(axes, names):
        diff = np.asarray(differences[name])
        for j in range(diff.shape[1]):
            ax.plot(np.arange(diff.shape[0]), diff[:, j], marker="o", markersize=3, label=rf"$\sigma_{{{j + 1}}}$")
        ax.axhline(0.0, color="grey", linewidth=0.5)
        ax.set_title(name, fontsize=9)
        ax.set_ylabel(ylabel, fontsize=8)
    axes[0].legend(fontsize=7, ncols=min(diff.shape[1], 5), loc="best")
    axes[-1].set_xlabel("layer")
    _layer_ticks(axes[-1], list(range(np.asarray(differences[names[0]]).shape[0])))
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path, dpi)


def plot_norm_violins_per_layer(
    layers: Sequence[int],
    defective: Sequence[Tensor],
    normal: Sequence[Tensor],
    path: str | Path,
    title: str | None = None,
    figsize: tuple[float, float] | None = None,
    dpi: int = 100,
) -> Path:
    """Token norms of every layer, defective (red) beside normal (blue) violins, on a log scale: defect norms are
    tens of times the normal ones. ``defective[j]`` and ``normal[j]`` belong to ``layers[j]``; empty groups are
    left out."""
    if not (len(layers) == len(defective) == len(normal)):
        raise ValueError(f"{len(layers)} layers but {len(defective)} defective and {len(normal)} normal norm groups")
    if not any(t.numel() for t in (*defective, *normal)):
        raise ValueError("every group of norms is empty: nothing to plot")
    figsize = figsize or (max(6.0, 1.5 + 0.45 * len(layers)), 4.0)
    fig = Figure(figsize=figsize, dpi=dpi)
    ax = fig.subplots()
    # KDEs of the log norms: a violin of linear norms drawn on a log axis would be distorted.
    for groups, offset, color in ((defective, -0.2, DEFECTIVE_COLOR), (normal, 0.2, NORMAL_COLOR)):
        data = [np.log10(g.flatten().double().clamp_min(1e-12).cpu().numpy()) for g in groups]
        _violins(ax, data, [x + offset for x in layers], 0.38, color)
    _log_ticks(ax)
    ax.set_ylabel("token norm (log scale)")
    ax.set_xlabel("layer")
    _layer_ticks(ax, layers)
    ax.set_xlim(min(layers) - 0.7, max(layers) + 0.7)
    ax.legend(handles=[Patch(color=DEFECTIVE_COLOR, alpha=0.5, label="defective"),
                       Patch(color=NORMAL_COLOR, alpha=0.5, label="normal")], fontsize=8, loc="upper left")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path, dpi)


def plot_defect_masks(
    images: Sequence[Tensor | np.ndarray],
    masks: Sequence[Sequence[Tensor]],
    layers: Sequence[int],
    path: str | Path,
    image_names: Sequence[str] | None = None,
    cell: float = 2.0,
    dpi: int = 100,
    title: str | None = None,
) -> Path:
    """Figure 6: one row per image, the image and then its Eq. 5 defect mask of each of ``layers`` over it
    (defects in red). ``masks[r][c]`` is the H x W boolean mask of ``images[r]`` in ``layers[c]``; the figure
    is ``cell * (1 + len(layers))`` by ``cell * len(images) + 0.4`` inches."""
    if not images:
        raise ValueError("no images to draw defect masks for")
    if len(masks) != len(images) or any(len(row) != len(layers) for row in masks):
        raise ValueError(f"masks must be {len(images)} rows (images) of {len(layers)} masks (layers)")
    rows, cols = len(images), 1 + len(layers)
    fig = Figure(figsize=(cell * cols, cell * rows + 0.4), dpi=dpi, layout="constrained")
    axes = np.asarray(fig.subplots(rows, cols, squeeze=False))
    for r, image in enumerate(images):
        rgb = _image_for_display(image)
        height, width = rgb.shape[:2]
        axes[r, 0].imshow(rgb)
        name = image_names[r] if image_names is not None else f"image {r}"
        axes[r, 0].set_ylabel(name if len(name) <= 22 else name[:19] + "...", fontsize=8)
        if r == 0:
            axes[r, 0].set_title("image", fontsize=9)
        for c, layer in enumerate(layers):
            mask = masks[r][c].cpu().numpy().astype(bool)
            overlay = np.zeros((*mask.shape, 4))
            overlay[mask] = (1.0, 0.0, 0.0, 0.85)
            ax = axes[r, c + 1]
            ax.imshow(rgb * 0.5 + 0.25)  # dimmed, so that the red defects stand out
            ax.imshow(overlay, extent=(0, width, height, 0), interpolation="nearest")
            ax.set_title((f"layer {layer}: " if r == 0 else "") + f"{int(mask.sum())} defects", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path, dpi)
