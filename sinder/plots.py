"""Figures of the paper: PCA maps and norm maps (Fig. 1), angles to the predicted directions per layer with violins
(Fig. 2, 8), norm violins of defective vs normal tokens, singular value differences (Fig. 7).

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
from torch import Tensor

from .atomic import atomic_path

KIND_TITLES = {
    "attention": "I + A (attention)",
    "mlp": "I + C (MLP)",
    "block": "E (block)",
    "cumulative": "G (singular defect direction)",
}


def _save(fig: Figure, path: str | Path, dpi: int) -> Path:
    path = Path(path)
    FigureCanvasAgg(fig)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
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
    fig = Figure(figsize=figsize, dpi=dpi)
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
    fig.colorbar(norm_im, ax=axes[col + 1], fraction=0.046)
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
) -> Path:
    """Figure 2: per kind of direction, the angle to the empirical defect direction per layer (line) and the
    angles to all patch tokens of one image (violins). ``empirical_angles[kind][j]`` and
    ``token_angles[kind][j]`` belong to ``layers[j]``; NaN angles (no defects) are left out of the line."""
    kinds = list(empirical_angles)
    figsize = figsize or (8.0, 2.5 * len(kinds))
    fig = Figure(figsize=figsize, dpi=dpi)
    axes = np.atleast_1d(fig.subplots(len(kinds), 1, sharex=True))
    for ax, kind in zip(axes, kinds):
        if token_angles is not None and kind in token_angles:
            data = [t.flatten().float().cpu().numpy() for t in token_angles[kind]]
            ax.violinplot(data, positions=list(layers), widths=0.8, showextrema=False)
        ax.plot(list(layers), [float(a) for a in empirical_angles[kind]], color="tab:blue", marker="o", markersize=3)
        ax.set_ylim(0, 90)
        ax.set_ylabel("angle (deg)")
        ax.set_title(KIND_TITLES.get(kind, kind), fontsize=9)
    axes[-1].set_xlabel("layer")
    fig.tight_layout()
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
    old_state: Mapping[str, Tensor], new_state: Mapping[str, Tensor], top: int = 3
) -> dict[str, np.ndarray]:
    """Per linear layer name (``attn.qkv``, ``mlp.w3``, ...): (n_blocks, top) leading singular values, new - old."""
    from .clamp import is_block_linear
    from .weights import normalize_keys

    old, new = normalize_keys(old_state), normalize_keys(new_state)
    per_name: dict[str, dict[int, np.ndarray]] = {}
    for key, tensor in old.items():
        if not is_block_linear(key, tensor):
            continue
        if key not in new:
            raise KeyError(f"{key} is in the old state dict but not in the new one")
        _, block, *rest = key.split(".")
        name = ".".join(rest[:-1])
        s_old = torch.linalg.svdvals(tensor.double())[:top]
        s_new = torch.linalg.svdvals(new[key].double())[:top]
        per_name.setdefault(name, {})[int(block)] = (s_new - s_old).numpy()
    return {name: np.stack([rows[b] for b in sorted(rows)]) for name, rows in per_name.items()}


def plot_singular_value_differences(
    differences: Mapping[str, np.ndarray],
    path: str | Path,
    figsize: tuple[float, float] | None = None,
    dpi: int = 100,
) -> Path:
    """Figure 7: per linear layer name, new minus old of the leading singular values against the block index."""
    names = list(differences)
    figsize = figsize or (8.0, 2.2 * len(names))
    fig = Figure(figsize=figsize, dpi=dpi)
    axes = np.atleast_1d(fig.subplots(len(names), 1, sharex=True))
    for ax, name in zip(axes, names):
        diff = np.asarray(differences[name])
        for j in range(diff.shape[1]):
            ax.plot(np.arange(diff.shape[0]), diff[:, j], marker="o", markersize=3, label=f"sigma_{j + 1}")
        ax.axhline(0.0, color="grey", linewidth=0.5)
        ax.set_title(name, fontsize=9)
        ax.set_ylabel("new - old")
    axes[0].legend(fontsize=7)
    axes[-1].set_xlabel("layer")
    fig.tight_layout()
    return _save(fig, path, dpi)
