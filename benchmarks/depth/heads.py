"""DINOv2's NYU depth heads over frozen ViT features: Linear 1, Linear 4 (its ``BNHead``) and DPT (its ``DPTHead``).

Inputs are the backbone's ``(patch map (B, D, h, w), class token (B, D))`` pairs of the selected blocks. Module
and parameter names follow DINOv2's head code, so a state dict here has the keys of DINOv2's released head
checkpoints without their ``decode_head.`` prefix and ``load_state_dict(strict=True)`` takes them as they are.

- Linear heads: ``[patch, cls]`` maps, each resized (bilinear) to ``upsample`` x the first map's size and
  concatenated, then one 1x1 conv to ``n_bins`` logits and the classification-regression readout: depth =
  bins weighted by ``relu(logit) + 0.1``, normalized (DINOv2's "UD" bins, "linear" norm). No BatchNorm: DINOv2
  named the head ``BNHead`` but left its BatchNorm commented out, and its released checkpoints hold none.
- DPT: reassemble (readout "project"), 3x3 convs to ``channels``, four fusion blocks from coarse to fine, a 3x3
  conv + ReLU, then ``HeadDepth`` (3x3 conv, bilinear x2, 3x3 conv to 32, ReLU, 1x1 conv to 1) and the
  regression readout ``relu(x) + min_depth`` (no bins).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Features = Sequence[tuple[Tensor, Tensor]]
KINDS = ("linear1", "linear4", "dpt")
HEAD_LAYERS = {"linear1": 1, "linear4": 4, "dpt": 4}


def bin_values(n_bins: int, min_depth: float, max_depth: float, device=None) -> Tensor:
    return torch.linspace(min_depth, max_depth, n_bins, device=device)


def classification_regression(logits: Tensor, bins: Tensor, eps: float = 0.1) -> Tensor:
    """(B, K, H, W) logits -> (B, 1, H, W) depth: ``sum_k w_k bins_k / sum_k w_k`` with ``w = relu(logit)+eps``."""
    weights = F.relu(logits) + eps
    weights = weights / weights.sum(dim=1, keepdim=True)
    return torch.einsum("bkhw,k->bhw", weights, bins.to(logits.dtype)).unsqueeze(1)


def _check_range(min_depth: float, max_depth: float) -> None:
    if not 0 <= min_depth < max_depth:
        raise ValueError(f"depth range must satisfy 0 <= min_depth < max_depth, got [{min_depth}, {max_depth}]")


def cls_concat(patch: Tensor, cls: Tensor) -> Tensor:
    """(B, D, h, w) patch map and (B, D) class token -> (B, 2D, h, w): the class token at every position."""
    return torch.cat([patch, cls[:, :, None, None].expand_as(patch)], dim=1)


class LinearDepthHead(nn.Module):
    """One 1x1 conv to bin logits over the upsampled, concatenated ``[patch, cls]`` maps of ``n_layers`` blocks
    (Linear 1: one block; Linear 4: four)."""

    def __init__(self, embed_dim: int, n_layers: int, *, min_depth: float, max_depth: float, n_bins: int = 256,
                 upsample: int = 4):  # fmt: skip
        super().__init__()
        _check_range(min_depth, max_depth)
        self.n_layers, self.upsample = n_layers, upsample
        self.n_bins, self.min_depth, self.max_depth = n_bins, min_depth, max_depth
        self.conv_depth = nn.Conv2d(2 * embed_dim * n_layers, n_bins, kernel_size=1)
        self.register_buffer("bins", bin_values(n_bins, min_depth, max_depth), persistent=False)

    def forward(self, features: Features) -> Tensor:
        if len(features) != self.n_layers:
            raise ValueError(f"LinearDepthHead was built for {self.n_layers} layers, got {len(features)}")
        maps = [cls_concat(patch, cls) for patch, cls in features]
        size = [s * self.upsample for s in maps[0].shape[-2:]]  # every map to the first's size x upsample
        maps = [F.interpolate(x, size=size, mode="bilinear", align_corners=False) for x in maps]
        return classification_regression(self.conv_depth(torch.cat(maps, dim=1)), self.bins)


class _Conv(nn.Module):
    # Holds its conv as ``.conv`` so parameter names match DINOv2's ConvModule (``...conv.weight``).
    def __init__(self, cin: int, cout: int, kernel: int, bias: bool = True, relu: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=bias)
        self.relu = relu

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        return F.relu(x) if self.relu else x


class _PreActResidual(nn.Module):
    # x + conv2(relu(conv1(relu(x)))), bias-free 3x3 convs.
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = _Conv(channels, channels, 3, bias=False)
        self.conv2 = _Conv(channels, channels, 3, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class _Fusion(nn.Module):
    # Add the refined skip (resized to x), refine, upsample x2 (align_corners), 1x1 projection.
    def __init__(self, channels: int, with_skip: bool):
        super().__init__()
        self.project = _Conv(channels, channels, 1)
        self.res_conv_unit1 = _PreActResidual(channels) if with_skip else None  # the coarsest block has no skip
        self.res_conv_unit2 = _PreActResidual(channels)

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        if skip is not None:
            if skip.shape != x.shape:
                skip = F.interpolate(skip, size=x.shape[-2:], mode="bilinear", align_corners=False)
            x = x + self.res_conv_unit1(skip)
        x = F.interpolate(self.res_conv_unit2(x), scale_factor=2, mode="bilinear", align_corners=True)
        return self.project(x)


class _Reassemble(nn.Module):
    # Readout "project" (GELU(Linear([token, cls]))), 1x1 conv to the level's channels, resize x4, x2, x1, /2.
    def __init__(self, embed_dim: int, post: Sequence[int]):
        super().__init__()
        self.projects = nn.ModuleList(_Conv(embed_dim, c, 1) for c in post)
        self.resize_layers = nn.ModuleList([
            nn.ConvTranspose2d(post[0], post[0], kernel_size=4, stride=4),
            nn.ConvTranspose2d(post[1], post[1], kernel_size=2, stride=2),
            nn.Identity(),
            nn.Conv2d(post[3], post[3], kernel_size=3, stride=2, padding=1),
        ])  # fmt: skip
        self.readout_projects = nn.ModuleList(
            nn.Sequential(nn.Linear(2 * embed_dim, embed_dim), nn.GELU()) for _ in post
        )

    def forward(self, features: Features) -> list[Tensor]:
        out = []
        for i, (patch, cls) in enumerate(features):
            tokens = patch.flatten(2).transpose(1, 2)  # (B, hw, D)
            tokens = self.readout_projects[i](torch.cat([tokens, cls[:, None, :].expand_as(tokens)], dim=-1))
            x = tokens.transpose(1, 2).reshape(patch.shape)
            out.append(self.resize_layers[i](self.projects[i](x)))
        return out


class _Upsample2(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


class _HeadDepth(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.head = nn.Sequential(
            nn.Conv2d(channels, channels // 2, 3, padding=1), _Upsample2(),
            nn.Conv2d(channels // 2, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 1, 1),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        return self.head(x)


class DPTDepthHead(nn.Module):
    """DINOv2's DPT head over four blocks; ``post_channels`` defaults to [D/8, D/4, D/2, D]."""

    def __init__(self, embed_dim: int, *, min_depth: float, max_depth: float, channels: int = 256,
                 post_channels: Sequence[int] | None = None):  # fmt: skip
        super().__init__()
        _check_range(min_depth, max_depth)
        self.min_depth, self.max_depth = min_depth, max_depth
        post = list(post_channels or [max(1, embed_dim // 2 ** (3 - i)) for i in range(4)])
        if len(post) != 4:
            raise ValueError(f"DPTDepthHead needs 4 post-process channel counts, got {post}")
        self.reassemble_blocks = _Reassemble(embed_dim, post)
        self.convs = nn.ModuleList(_Conv(c, channels, 3, bias=False) for c in post)
        self.fusion_blocks = nn.ModuleList(_Fusion(channels, with_skip=i > 0) for i in range(4))
        self.project = _Conv(channels, channels, 3, relu=True)
        self.conv_depth = _HeadDepth(channels)

    def forward(self, features: Features) -> Tensor:
        if len(features) != 4:
            raise ValueError(f"DPTDepthHead needs 4 layers, got {len(features)}")
        levels = [conv(x) for conv, x in zip(self.convs, self.reassemble_blocks(features))]
        out = self.fusion_blocks[0](levels[3])
        for i in (1, 2, 3):
            out = self.fusion_blocks[i](out, levels[3 - i])
        return F.relu(self.conv_depth(self.project(out))) + self.min_depth


def build_head(kind: str, embed_dim: int, *, min_depth: float, max_depth: float, channels: int = 256,
               n_bins: int = 256, upsample: int = 4) -> nn.Module:  # fmt: skip
    """A fresh head of ``kind`` (linear1, linear4 or dpt) for a backbone of width ``embed_dim``."""
    if kind in ("linear1", "linear4"):
        return LinearDepthHead(embed_dim, HEAD_LAYERS[kind], min_depth=min_depth, max_depth=max_depth,
                               n_bins=n_bins, upsample=upsample)  # fmt: skip
    if kind == "dpt":
        return DPTDepthHead(embed_dim, min_depth=min_depth, max_depth=max_depth, channels=channels)
    raise ValueError(f"unknown depth head {kind!r}; use one of {', '.join(KINDS)}")
