"""Depth heads of the DINOv2 protocol over frozen ViT features, with the classification-regression readout.

Inputs are the backbone's ``(patch map (B, D, h, w), class token (B, D))`` pairs of the selected blocks.
Every head ends in logits over ``n_bins`` depth values spaced uniformly in [min_depth, max_depth]; the depth
is the bin values weighted by ``relu(logit) + 0.1``, normalized (DINOv2's "UD" bins, "linear" norm).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Features = Sequence[tuple[Tensor, Tensor]]


def bin_values(n_bins: int, min_depth: float, max_depth: float, device=None) -> Tensor:
    return torch.linspace(min_depth, max_depth, n_bins, device=device)


def classification_regression(logits: Tensor, bins: Tensor, eps: float = 0.1) -> Tensor:
    """(B, K, H, W) logits -> (B, 1, H, W) depth: ``sum_k w_k bins_k / sum_k w_k`` with ``w = relu(logit)+eps``."""
    weights = F.relu(logits) + eps
    weights = weights / weights.sum(dim=1, keepdim=True)
    return torch.einsum("bkhw,k->bhw", weights, bins.to(logits.dtype)).unsqueeze(1)


class _BinnedHead(nn.Module):
    def __init__(self, n_bins: int, min_depth: float, max_depth: float):
        super().__init__()
        if not 0 <= min_depth < max_depth:
            raise ValueError(f"depth range must satisfy 0 <= min_depth < max_depth, got [{min_depth}, {max_depth}]")
        self.n_bins, self.min_depth, self.max_depth = n_bins, min_depth, max_depth
        self.register_buffer("bins", bin_values(n_bins, min_depth, max_depth), persistent=False)

    def readout(self, logits: Tensor) -> Tensor:
        return classification_regression(logits, self.bins)


def cls_concat(patch: Tensor, cls: Tensor) -> Tensor:
    """(B, D, h, w) patch map and (B, D) class token -> (B, 2D, h, w): the class token at every position."""
    return torch.cat([patch, cls[:, :, None, None].expand_as(patch)], dim=1)


class LinearDepthHead(_BinnedHead):
    """BatchNorm + 1x1 conv to bin logits over ``[patch, cls]`` of each layer, upsampled x``upsample``, concatenated
    (Linear 1: one layer; Linear 4: four)."""

    def __init__(self, embed_dim: int, n_layers: int, upsample: int = 4, n_bins: int = 256,
                 min_depth: float = 1e-3, max_depth: float = 10.0):  # fmt: skip
        super().__init__(n_bins, min_depth, max_depth)
        self.n_layers, self.upsample = n_layers, upsample
        channels = 2 * embed_dim * n_layers
        self.bn = nn.BatchNorm2d(channels)
        self.conv_depth = nn.Conv2d(channels, n_bins, kernel_size=1)

    def forward(self, features: Features) -> Tensor:
        if len(features) != self.n_layers:
            raise ValueError(f"LinearDepthHead was built for {self.n_layers} layers, got {len(features)}")
        maps = []
        for patch, cls in features:
            x = cls_concat(patch, cls)
            size = (x.shape[-2] * self.upsample, x.shape[-1] * self.upsample)
            maps.append(F.interpolate(x, size=size, mode="bilinear", align_corners=False))
        return self.readout(self.conv_depth(self.bn(torch.cat(maps, dim=1))))


class _ResidualConvUnit(nn.Module):
    # Pre-activation residual unit of DPT: x + conv(relu(conv(relu(x)))).
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class _FusionBlock(nn.Module):
    # DPT's feature fusion: add the refined skip, refine, upsample x2, 1x1 projection.
    def __init__(self, channels: int, with_skip: bool = True):
        super().__init__()
        self.skip_unit = _ResidualConvUnit(channels) if with_skip else None  # the coarsest block has no skip
        self.unit = _ResidualConvUnit(channels)
        self.project = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        if skip is not None:
            if self.skip_unit is None:
                raise ValueError("this fusion block was built without a skip input")
            if skip.shape[-2:] != x.shape[-2:]:
                skip = F.interpolate(skip, size=x.shape[-2:], mode="bilinear", align_corners=False)
            x = x + self.skip_unit(skip)
        x = F.interpolate(self.unit(x), scale_factor=2, mode="bilinear", align_corners=True)
        return self.project(x)


class DPTDepthHead(_BinnedHead):
    """The DPT decoder over four layers: readout "project" (``GELU(Linear([token, cls]))``), reassembly to
    1/4, 1/8, 1/16 and 1/32 of the input via a 1x1 conv to ``post_channels`` and a (transposed) conv, 3x3 convs
    to ``channels``, four fusion blocks from coarse to fine, a 3x3 conv + ReLU and a 3x3 conv to bin logits.
    ``post_channels`` defaults to [D/8, D/4, D/2, D]."""

    def __init__(self, embed_dim: int, channels: int = 256, post_channels: Sequence[int] | None = None,
                 n_bins: int = 256, min_depth: float = 1e-3, max_depth: float = 10.0):  # fmt: skip
        super().__init__(n_bins, min_depth, max_depth)
        post = list(post_channels or [max(1, embed_dim // 2 ** (3 - i)) for i in range(4)])
        if len(post) != 4:
            raise ValueError(f"DPTDepthHead needs 4 post-process channel counts, got {post}")
        self.readout_projects = nn.ModuleList(
            nn.Sequential(nn.Linear(2 * embed_dim, embed_dim), nn.GELU()) for _ in range(4)
        )
        self.projects = nn.ModuleList(nn.Conv2d(embed_dim, c, 1) for c in post)
        self.resize = nn.ModuleList([
            nn.ConvTranspose2d(post[0], post[0], kernel_size=4, stride=4),
            nn.ConvTranspose2d(post[1], post[1], kernel_size=2, stride=2),
            nn.Identity(),
            nn.Conv2d(post[3], post[3], kernel_size=3, stride=2, padding=1),
        ])  # fmt: skip
        self.convs = nn.ModuleList(nn.Conv2d(c, channels, 3, padding=1, bias=False) for c in post)
        self.fusions = nn.ModuleList(_FusionBlock(channels, with_skip=i > 0) for i in range(4))
        self.project = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv_depth = nn.Conv2d(channels, n_bins, 3, padding=1)

    def forward(self, features: Features) -> Tensor:
        if len(features) != 4:
            raise ValueError(f"DPTDepthHead needs 4 layers, got {len(features)}")
        levels = []
        for i, (patch, cls) in enumerate(features):
            b, d, h, w = patch.shape
            tokens = patch.flatten(2).transpose(1, 2)  # (B, hw, D)
            tokens = self.readout_projects[i](torch.cat([tokens, cls[:, None, :].expand_as(tokens)], dim=-1))
            x = tokens.transpose(1, 2).reshape(b, d, h, w)
            levels.append(self.convs[i](self.resize[i](self.projects[i](x))))
        out = self.fusions[0](levels[3])
        for i, skip in zip((1, 2, 3), (levels[2], levels[1], levels[0])):
            out = self.fusions[i](out, skip)
        return self.readout(self.conv_depth(F.relu(self.project(out))))
