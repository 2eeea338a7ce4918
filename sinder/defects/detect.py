"""Finding singular defects in patch-token maps (Eq. 5) and the statistics of Section 2.

Token maps are ``H x W x D`` tensors of one block's patch tokens for one image (no class or register tokens).

Two detectors:
- ``find_defects`` (Eq. 5, what the repair uses): l_t = |x_t / ||x_t|| . nu|, flagged where
  l_t > mean(l) + mu * std(l) over the whole grid (unbiased std, as ``torch.std``). The official code never
  flags tokens within ``kernel // 2`` of the grid edge (they have no full 3 x 3 neighbourhood to build a target
  from): ``exclude_border=True`` (default) does the same, ``False`` is the paper's text (flag anywhere).
- ``high_norm_mask`` (Section 2's "high-norm tokens", independent of nu so that comparing the defects with nu is
  not circular): a robust z-score of the token norms, norm > median + mu * 1.4826 * MAD, and at least
  ``min_ratio`` times the median norm.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

DEFAULT_MU = 4.0  # Eq. 5's mask threshold (paper and official code); every default of mu refers to this
DEFAULT_SIGMA = 3  # the clear-image test: an image is skipped once a layer shows sigma defects (official)
HIGH_NORM_Z = 4.0  # robust z-score of the high-norm census (Section 2); a different quantity from mu
HIGH_NORM_MIN_RATIO = 3.0  # and a high-norm token is at least this many times the median norm


def _check_map(tokens_hw: Tensor, name: str = "tokens_hw") -> Tensor:
    if tokens_hw.ndim != 3:
        raise ValueError(f"{name} must be an H x W x D token map, got shape {tuple(tokens_hw.shape)}")
    return tokens_hw.float() if tokens_hw.dtype != torch.float64 else tokens_hw


def defect_logits(tokens_hw: Tensor, nu: Tensor) -> Tensor:
    """Eq. 5: l_t = |x_t / ||x_t|| . nu / ||nu|||, an H x W map."""
    tokens = _check_map(tokens_hw)
    if nu.ndim != 1 or nu.shape[0] != tokens.shape[-1]:
        raise ValueError(f"nu has shape {tuple(nu.shape)}; expected ({tokens.shape[-1]},), the token width")
    direction = F.normalize(nu.to(tokens), dim=-1)
    return (F.normalize(tokens, dim=-1) * direction).sum(dim=-1).abs()


def border_mask(height: int, width: int, kernel: int = 3, device=None) -> Tensor:
    """True on the tokens within ``kernel // 2`` of the grid edge."""
    pad = kernel // 2
    inside = torch.zeros(height, width, dtype=torch.bool, device=device)
    inside[pad : height - pad, pad : width - pad] = True
    return ~inside


def find_defects(
    tokens_hw: Tensor, nu: Tensor, mu: float = DEFAULT_MU, exclude_border: bool = True, kernel: int = 3
) -> Tensor:
    """Boolean H x W mask of the singular defects of one token map along direction ``nu`` (Eq. 5)."""
    logits = defect_logits(tokens_hw, nu)
    mask = logits > logits.mean() + mu * logits.std()
    if exclude_border:
        mask &= ~border_mask(*mask.shape, kernel=kernel, device=mask.device)
    return mask


def high_norm_mask(tokens_hw: Tensor, mu: float = HIGH_NORM_Z, min_ratio: float = HIGH_NORM_MIN_RATIO) -> Tensor:
    """Boolean H x W mask of the high-norm tokens (robust z-score of the norms, and >= min_ratio x median)."""
    norms = _check_map(tokens_hw).norm(dim=-1)
    median = norms.median()
    mad = (norms - median).abs().median()
    return (norms > median + mu * 1.4826 * mad) & (norms >= min_ratio * median)


def count_defects(
    layer_maps: Sequence[Tensor],
    directions: Sequence[Tensor],
    mu: float = DEFAULT_MU,
    exclude_border: bool = True,
    kernel: int = 3,
) -> list[int]:
    """Eq. 5 defect count of one image in each layer (``layer_maps[i]`` with ``directions[i]``)."""
    if len(layer_maps) != len(directions):
        raise ValueError(f"{len(layer_maps)} layer maps but {len(directions)} directions: one per layer needed")
    return [int(find_defects(m, nu, mu, exclude_border, kernel).sum()) for m, nu in zip(layer_maps, directions)]


def enough_defects(count: int, sigma: int) -> bool:
    """The one "clear image" rule, per layer: a layer gives the loss when it has at least max(sigma, 1) Eq. 5
    defects (the official code moves on from a layer without any defect, so sigma = 0 behaves as 1); an image
    is clear when no layer does. The repair loop, ``is_clear`` and ``analyze`` all decide with this."""
    return count >= max(sigma, 1)


def first_defective(counts: Iterable[int], sigma: int) -> int | None:
    """The first layer with ``enough_defects``, None if the image is clear."""
    return next((i for i, n in enumerate(counts) if enough_defects(n, sigma)), None)


def is_clear(
    layer_maps: Sequence[Tensor],
    directions: Sequence[Tensor],
    sigma: int = DEFAULT_SIGMA,
    mu: float = DEFAULT_MU,
    exclude_border: bool = True,
    kernel: int = 3,
) -> bool:
    """The paper's clear image: no layer has sigma (at least 1) defects."""
    return first_defective(count_defects(layer_maps, directions, mu, exclude_border, kernel), sigma) is None


# --------------------------------------------------------------------------------------------- running a model
@torch.no_grad()
def patch_token_grids(model, images: Tensor, blocks: Iterable[int] | None = None) -> list[Tensor]:
    """Per block (ascending order) the patch tokens before the final norm, as B x H x W x D tensors."""
    if images.ndim != 4:
        raise ValueError(f"images must be a B x 3 x H x W batch, got shape {tuple(images.shape)}")
    depth = len(model.blocks)
    indices = list(range(depth)) if blocks is None else sorted({int(b) for b in blocks})
    outputs = model.get_intermediate_layers(images, n=indices, reshape=False, norm=False)
    rows, cols = images.shape[-2] // model.patch_size, images.shape[-1] // model.patch_size
    return [out.reshape(out.shape[0], rows, cols, out.shape[-1]) for out in outputs]


# --------------------------------------------------------------------------------------------- statistics
def _unit(x: Tensor) -> Tensor:
    return F.normalize(x.double(), dim=-1)


def mean_pairwise_angle(vectors: Tensor) -> float:
    """Mean angle in degrees over all pairs of rows (NaN for fewer than two rows)."""
    n = vectors.shape[0]
    if n < 2:
        return math.nan
    u = _unit(vectors.reshape(n, -1))
    angles = torch.rad2deg(torch.arccos((u @ u.T).clamp(-1, 1)))
    upper = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
    return float(angles[upper].mean())


def acute_angle(a: Tensor, b: Tensor) -> float:
    """Angle in degrees between the lines spanned by ``a`` and ``b`` (sign-free, 0..90)."""
    cos = float((_unit(a.flatten()) @ _unit(b.flatten())).abs().clamp(max=1))
    return math.degrees(math.acos(cos))


def acute_angles_to(tokens: Tensor, direction: Tensor) -> Tensor:
    """Acute angle in degrees between every token (last dim) and ``direction``."""
    cos = (_unit(tokens) @ _unit(direction)).abs().clamp(max=1)
    return torch.rad2deg(torch.arccos(cos)).float()


def empirical_direction(defects: Tensor) -> Tensor | None:
    """Mean of the normalized defect tokens (rows), each first flipped onto the side of their principal axis.

    The sign alignment uses the defects' own principal axis, not nu, so that the comparison with nu is fair.
    """
    if defects.shape[0] == 0:
        return None
    u = _unit(defects)
    axis = torch.linalg.svd(u, full_matrices=False).Vh[0]
    signs = torch.where(u @ axis >= 0, 1.0, -1.0).to(u)
    return F.normalize((u * signs[:, None]).mean(dim=0), dim=0).float()


@dataclass
class LayerStatistics:
    """Section 2 statistics of one layer over a set of images (angles in degrees, NaN where undefined)."""

    n_images: int
    n_tokens: int
    n_defects: int
    images_with_defects: int
    mean_norm_defective: float
    mean_norm_normal: float
    angle_within_defects: float  # mean over images of the mean pairwise angle among that image's defects
    angle_within_all: float  # mean over images of the mean pairwise angle among all its patch tokens
    angle_between_images: float  # mean pairwise angle between the images' mean defect tokens
    angle_to_nu: float  # acute angle between nu and the empirical defect direction

    def to_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


class LayerAccumulator:
    """Streams one layer's token maps (one image at a time) into the Section 2 statistics.

    Keeps per-image summaries and the normalized defect tokens only, so hundreds of ViT-g images fit in memory.
    ``keep_norms`` also keeps every token norm (for violin plots).
    """

    def __init__(self, keep_norms: bool = False):
        self.keep_norms = keep_norms
        self.n_images = self.n_tokens = 0
        self.sum_defect_norm = self.sum_normal_norm = 0.0
        self.n_defects = 0
        self.within: list[float] = []
        self.within_all: list[float] = []
        self.image_means: list[Tensor] = []
        self.unit_defects: list[Tensor] = []
        self.defect_norms: list[Tensor] = []
        self.normal_norms: list[Tensor] = []

    def add(self, tokens_hw: Tensor, mask: Tensor) -> None:
        tokens = _check_map(tokens_hw)
        if mask.shape != tokens.shape[:2]:
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match the token grid {tuple(tokens.shape[:2])}")
        flat, flat_mask = tokens.reshape(-1, tokens.shape[-1]), mask.reshape(-1).bool().to(tokens.device)
        norms = flat.norm(dim=-1)
        defects = flat[flat_mask]
        self.n_images += 1
        self.n_tokens += flat.shape[0]
        self.n_defects += defects.shape[0]
        self.sum_defect_norm += float(norms[flat_mask].double().sum())
        self.sum_normal_norm += float(norms[~flat_mask].double().sum())
        self.within_all.append(mean_pairwise_angle(flat))
        if defects.shape[0] >= 2:
            self.within.append(mean_pairwise_angle(defects))
        if defects.shape[0] >= 1:
            self.image_means.append(defects.double().mean(dim=0).cpu())
            self.unit_defects.append(_unit(defects).float().cpu())
        if self.keep_norms:
            self.defect_norms.append(norms[flat_mask].cpu())
            self.normal_norms.append(norms[~flat_mask].cpu())

    def direction(self) -> Tensor | None:
        """The empirical defect direction of the images seen so far (None without defects)."""
        return empirical_direction(torch.cat(self.unit_defects)) if self.unit_defects else None

    def result(self, nu: Tensor | None = None) -> LayerStatistics:
        direction = self.direction()
        n_normal = self.n_tokens - self.n_defects

        def mean(values) -> float:
            values = [v for v in values if not math.isnan(v)]
            return float(sum(values) / len(values)) if values else math.nan

        return LayerStatistics(
            n_images=self.n_images,
            n_tokens=self.n_tokens,
            n_defects=self.n_defects,
            images_with_defects=len(self.image_means),
            mean_norm_defective=self.sum_defect_norm / self.n_defects if self.n_defects else math.nan,
            mean_norm_normal=self.sum_normal_norm / n_normal if n_normal else math.nan,
            angle_within_defects=mean(self.within),
            angle_within_all=mean(self.within_all),
            angle_between_images=(
                mean_pairwise_angle(torch.stack(self.image_means)) if len(self.image_means) >= 2 else math.nan
            ),
            angle_to_nu=acute_angle(direction, nu) if direction is not None and nu is not None else math.nan,
        )


def layer_statistics(
    token_maps: Sequence[Tensor], masks: Sequence[Tensor], nu: Tensor | None = None
) -> tuple[LayerStatistics, Tensor | None]:
    """Statistics of one layer from per-image H x W x D maps and their defect masks; also the empirical direction."""
    if len(token_maps) != len(masks):
        raise ValueError(f"{len(token_maps)} token maps but {len(masks)} masks")
    acc = LayerAccumulator()
    for tokens, mask in zip(token_maps, masks):
        acc.add(tokens, mask)
    return acc.result(nu), acc.direction()


# --------------------------------------------------------------------------------------------- random baseline
def random_unit_direction(dim: int, seed: int = 0) -> Tensor:
    """A unit vector uniform on the sphere (normalized N(0, I)), deterministic in ``seed``: the baseline of the
    appendix's Figure 8, against which nu_i is shown to be special."""
    gen = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(dim, generator=gen, dtype=torch.float64), dim=0).float()


class TokenAngleAccumulator:
    """Streams the mean acute angle (degrees) between named directions and the defective / normal tokens of one
    layer, one image at a time."""

    def __init__(self, directions: dict[str, Tensor]):
        self.directions = directions
        self.sums = {name: {"defective": 0.0, "normal": 0.0} for name in directions}
        self.counts = {"defective": 0, "normal": 0}

    def add(self, tokens_hw: Tensor, mask: Tensor) -> None:
        tokens = _check_map(tokens_hw)
        if mask.shape != tokens.shape[:2]:
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match the token grid {tuple(tokens.shape[:2])}")
        flat, flat_mask = tokens.reshape(-1, tokens.shape[-1]), mask.reshape(-1).bool().to(tokens.device)
        self.counts["defective"] += int(flat_mask.sum())
        self.counts["normal"] += int((~flat_mask).sum())
        for name, direction in self.directions.items():
            angles = acute_angles_to(flat, direction.to(flat.device)).double()
            self.sums[name]["defective"] += float(angles[flat_mask].sum())
            self.sums[name]["normal"] += float(angles[~flat_mask].sum())

    def result(self) -> dict[str, dict[str, float | None]]:
        """``{name: {"defective": mean angle, "normal": mean angle}}``; None where a group has no tokens."""
        return {
            name: {g: (sums[g] / self.counts[g] if self.counts[g] else None) for g in ("defective", "normal")}
            for name, sums in self.sums.items()
        }
