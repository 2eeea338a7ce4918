"""A DINOv2-compatible Vision Transformer.

Module names, parameter names and shapes follow the official ``DinoVisionTransformer`` key for key, so the
official ``dinov2_vit*14*_pretrain.pth`` files load with ``strict=True``. Numerics follow the reference too:
LayerNorm eps 1e-6, exact GELU, SwiGLU hidden width rounded as the fused reference does, bicubic positional
embedding interpolation with the 0.1 offset. Attention goes through ``scaled_dot_product_attention``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sinder.models.adapter import FAMILIES, num_prefix_tokens, pooling_of

# Constructor arguments of the reference, with the values its hub backbones use where it has one.
ARCH_DEFAULTS: dict[str, Any] = {
    "img_size": 518,
    "patch_size": 14,
    "in_chans": 3,
    "embed_dim": 768,
    "depth": 12,
    "num_heads": 12,
    "mlp_ratio": 4.0,
    "qkv_bias": True,
    "ffn_bias": True,
    "proj_bias": True,
    "init_values": 1.0,
    "ffn_layer": "mlp",
    "num_register_tokens": 0,
    "interpolate_antialias": False,
    "interpolate_offset": 0.1,
    # Family switches (sinder.models.adapter describes the families); the defaults are DINOv2's.
    "family": "dinov2",
    "act_layer": "gelu",  # the MLP activation: see ACTIVATIONS
    "norm_eps": 1e-6,  # every LayerNorm's eps
    "pre_norm": False,  # a LayerNorm on the tokens before the first block (CLIP's pre_layrnorm, timm's norm_pre)
    "patch_bias": True,  # the patch-embedding convolution has a bias (CLIP's has none)
    "class_token": True,  # a class token before the patches (SigLIP has none)
    "attn_pool": False,  # an attention-pooling head gives the pooled feature (SigLIP's ``head``)
    "avg_pool": False,  # the mean of the patch tokens is the pooled feature (timm's ``global_pool='avg'``)
    "fc_norm": False,  # the final norm follows that mean (timm's ``fc_norm``): ``norm`` is then an identity
    "pos_embed": True,  # learned absolute position embeddings (DINOv3 has none: RoPE instead)
    "interpolate_mode": "bicubic",  # how position embeddings resize to another grid (SigLIP 2: bilinear)
    "rope": False,  # 2-D axial rotary embedding on the patch tokens' q/k (DINOv3): see Rope2D
    "rope_theta": 100.0,  # its base (transformers' DINOv3ViTConfig.rope_theta)
}
# Accepted for compatibility with reference configs; they do not change the inference graph.
IGNORED_KEYS = {"block_chunks", "drop_path_rate", "drop_path_uniform"}

_SIZES = {
    "s": {"embed_dim": 384, "depth": 12, "num_heads": 6},
    "b": {"embed_dim": 768, "depth": 12, "num_heads": 12},
    "l": {"embed_dim": 1024, "depth": 24, "num_heads": 16},
    "g": {"embed_dim": 1536, "depth": 40, "num_heads": 24, "ffn_layer": "swiglufused"},
}


def _official_presets() -> dict[str, dict[str, Any]]:
    presets = {}
    for size, arch in _SIZES.items():
        base = {**ARCH_DEFAULTS, **arch}
        presets[f"dinov2_vit{size}14"] = dict(base)
        # The register releases were trained with antialiased interpolation and no offset (DINOv2 hub).
        presets[f"dinov2_vit{size}14_reg"] = {
            **base,
            "num_register_tokens": 4,
            "interpolate_antialias": True,
            "interpolate_offset": 0.0,
        }
    return presets


PRESETS: dict[str, dict[str, Any]] = _official_presets()
# Small architectures for tests and smoke runs (randomly initialised unless a weights file is given).
PRESETS["dinov2_tiny"] = {**ARCH_DEFAULTS, "embed_dim": 96, "depth": 6, "num_heads": 4}
PRESETS["dinov2_tiny_swiglu"] = {**PRESETS["dinov2_tiny"], "ffn_layer": "swiglufused"}
PRESETS["dinov2_tiny_reg"] = {**PRESETS["dinov2_tiny"], "num_register_tokens": 4}


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, bias: bool = True):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        _, _, height, width = x.shape
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"input {height}x{width} is not a multiple of the patch size {self.patch_size}: "
                "resize, crop or pad it first"
            )
        return self.proj(x).flatten(2).transpose(1, 2)


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Rope2D(nn.Module):
    """DINOv3's rotary position embedding (transformers ``DINOv3ViTRopePositionEmbedding``, eval mode): each patch
    centre's (row, col) normalised to [-1, 1] per axis on the input's own grid, ``head_dim / 4`` frequencies
    ``theta ** -(4 i / head_dim)`` per axis, angles ``2 pi coord freq`` laid out (rows, cols) then tiled twice,
    applied to the last ``rows * cols`` tokens (the patches; class and register tokens are not rotated).

    The training-time coordinate augmentation (``pos_embed_shift/jitter/rescale``) is off at inference, as in
    transformers' eval mode. The model sets :attr:`grid` from each input in ``prepare_tokens_with_masks``.
    """

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        if head_dim % 4:
            raise ValueError(f"rope: head dimension {head_dim} is not a multiple of 4")
        self.head_dim, self.theta = head_dim, float(theta)
        self.grid: tuple[int, int] | None = None
        self._cache: tuple[tuple, tuple[Tensor, Tensor]] | None = None

    def cos_sin(self, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        if self.grid is None:
            raise RuntimeError("rope: no token grid set; run prepare_tokens_with_masks before the blocks")
        key = (self.grid, device, dtype)
        if self._cache is None or self._cache[0] != key:
            rows, cols = self.grid
            f32 = {"dtype": torch.float32, "device": device}
            # Same operations in the same order as transformers (float32), for bit-level parity.
            inv_freq = 1 / self.theta ** torch.arange(0, 1, 4 / self.head_dim, **f32)
            coords_h = torch.arange(0.5, rows, **f32) / rows
            coords_w = torch.arange(0.5, cols, **f32) / cols
            coords = torch.stack(torch.meshgrid(coords_h, coords_w, indexing="ij"), dim=-1).flatten(0, 1)
            coords = 2.0 * coords - 1.0
            angles = (2 * math.pi * coords[:, :, None] * inv_freq[None, None, :]).flatten(1, 2).tile(2)
            self._cache = (key, (torch.cos(angles).to(dtype), torch.sin(angles).to(dtype)))
        return self._cache[1]

    def forward(self, x: Tensor) -> Tensor:
        """``x`` (batch, heads, tokens, head_dim) with the patch tokens last."""
        cos, sin = self.cos_sin(x.device, x.dtype)
        n = cos.shape[0]
        if x.shape[-2] < n:
            raise RuntimeError(f"rope: {x.shape[-2]} tokens but the grid {self.grid} has {n} patches")
        prefix, patches = x.split((x.shape[-2] - n, n), dim=-2)
        return torch.cat((prefix, patches * cos + _rotate_half(patches) * sin), dim=-2)


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_values: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, proj_bias: bool, rope: Rope2D | None = None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.rope = rope  # shared by every block; no parameters, so the state dict is unchanged

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        if self.rope is not None:  # rotates q and k only: the value path is what it is without RoPE
            q, k = self.rope(q), self.rope(k)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class QuickGELU(nn.Module):
    """OpenAI CLIP's activation: ``x * sigmoid(1.702 x)`` (transformers' ``quick_gelu``)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


# The MLP activations by their transformers ``hidden_act`` names.
ACTIVATIONS = {"gelu": nn.GELU, "quick_gelu": QuickGELU, "gelu_pytorch_tanh": partial(nn.GELU, approximate="tanh")}


class Mlp(nn.Module):
    """The MLP of ViT-S/B/L (keys ``fc1``/``fc2``): exact GELU for DINOv2, the family's activation otherwise."""

    def __init__(self, dim: int, hidden: int, bias: bool, act_layer: str = "gelu"):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.act = ACTIVATIONS[act_layer]()
        self.fc2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwiGLUFFN(nn.Module):
    """The SwiGLU MLP of ViT-g (keys ``w12``/``w3``): ``w3(silu(x1) * x2)`` with ``x1, x2 = w12(x).chunk(2)``."""

    def __init__(self, dim: int, hidden: int, bias: bool, exact: bool = False):
        super().__init__()
        if not exact:  # The fused reference shrinks the hidden width to 2/3 and rounds up to a multiple of 8.
            hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
        self.w12 = nn.Linear(dim, 2 * hidden, bias=bias)
        self.w3 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


# swiglu_exact: the hidden width as given (DINOv3's gated MLP: gate_proj/up_proj of intermediate_size each).
FFN_LAYERS = {"mlp": Mlp, "swiglu": SwiGLUFFN, "swiglufused": SwiGLUFFN, "swiglu_exact": partial(SwiGLUFFN, exact=True)}


class AttentionPool(nn.Module):
    """SigLIP's pooling head (transformers ``SiglipMultiheadAttentionPoolingHead``, same parameter names): a learned
    probe attends over the tokens, then ``x + mlp(layernorm(x))``."""

    def __init__(self, cfg: Mapping[str, Any]):
        super().__init__()
        dim = cfg["embed_dim"]
        self.probe = nn.Parameter(torch.zeros(1, 1, dim))
        self.attention = nn.MultiheadAttention(dim, cfg["num_heads"], batch_first=True)
        self.layernorm = nn.LayerNorm(dim, eps=cfg["norm_eps"])
        self.mlp = Mlp(dim, int(dim * cfg["mlp_ratio"]), True, cfg["act_layer"])

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.attention(self.probe.expand(x.shape[0], -1, -1), x, x, need_weights=False)[0]
        return (pooled + self.mlp(self.layernorm(pooled)))[:, 0]


class Block(nn.Module):
    def __init__(self, cfg: Mapping[str, Any], rope: Rope2D | None = None):
        super().__init__()
        dim = cfg["embed_dim"]
        norm = partial(nn.LayerNorm, eps=cfg["norm_eps"])
        self.norm1 = norm(dim)
        self.attn = Attention(dim, cfg["num_heads"], cfg["qkv_bias"], cfg["proj_bias"], rope)
        self.ls1 = LayerScale(dim, cfg["init_values"]) if cfg["init_values"] else nn.Identity()
        self.norm2 = norm(dim)
        ffn = FFN_LAYERS[cfg["ffn_layer"]]
        hidden = int(dim * cfg["mlp_ratio"])
        self.mlp = ffn(dim, hidden, cfg["ffn_bias"], cfg["act_layer"]) if ffn is Mlp else ffn(dim, hidden, cfg["ffn_bias"])
        self.ls2 = LayerScale(dim, cfg["init_values"]) if cfg["init_values"] else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class DinoVisionTransformer(nn.Module):
    def __init__(self, config: Mapping[str, Any]):
        super().__init__()
        cfg = resolve_config(config)
        self.config = cfg
        self.embed_dim = dim = cfg["embed_dim"]
        self.patch_size = cfg["patch_size"]
        self.num_register_tokens = cfg["num_register_tokens"]
        self.interpolate_offset = cfg["interpolate_offset"]
        self.interpolate_antialias = cfg["interpolate_antialias"]
        self.n_blocks = cfg["depth"]
        num_patches = (cfg["img_size"] // self.patch_size) ** 2

        self.patch_embed = PatchEmbed(self.patch_size, cfg["in_chans"], dim, bias=cfg["patch_bias"])
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if cfg["class_token"] else None
        n_pos = num_patches + int(cfg["class_token"])
        self.pos_embed = nn.Parameter(torch.zeros(1, n_pos, dim)) if cfg["pos_embed"] else None
        self.register_tokens = (
            nn.Parameter(torch.zeros(1, self.num_register_tokens, dim)) if self.num_register_tokens else None
        )
        if cfg["pre_norm"]:  # registered only when used: DINOv2 state dicts keep their keys
            self.norm_pre = nn.LayerNorm(dim, eps=cfg["norm_eps"])
        self.rope = Rope2D(dim // cfg["num_heads"], cfg["rope_theta"]) if cfg["rope"] else None
        self.blocks = nn.ModuleList(Block(cfg, self.rope) for _ in range(cfg["depth"]))
        # timm's fc_norm: the tokens leave the blocks un-normed, the pooled mean is normed
        self.norm = nn.Identity() if cfg["fc_norm"] else nn.LayerNorm(dim, eps=cfg["norm_eps"])
        if cfg["fc_norm"]:
            self.fc_norm = nn.LayerNorm(dim, eps=cfg["norm_eps"])
        if cfg["attn_pool"]:
            self.attn_pool = AttentionPool(cfg)
        self.head = nn.Identity()
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Random initialisation at DINOv2's scale (trunc-normal 0.02), for models without weights."""

        def trunc_normal(t: Tensor, std: float) -> None:
            t.copy_(torch.randn(t.shape, generator=generator).clamp_(-2, 2) * std)

        if self.pos_embed is not None:
            trunc_normal(self.pos_embed, 0.02)
        if self.cls_token is not None:
            self.cls_token.copy_(torch.randn(self.cls_token.shape, generator=generator) * 1e-6)
        if self.register_tokens is not None:
            self.register_tokens.copy_(torch.randn(self.register_tokens.shape, generator=generator) * 1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal(module.weight, 0.02)
                if module.bias is not None:
                    module.bias.zero_()
        conv = self.patch_embed.proj
        bound = 1 / math.sqrt(conv.weight[0].numel())
        conv.weight.copy_((torch.rand(conv.weight.shape, generator=generator) * 2 - 1) * bound)
        if conv.bias is not None:
            conv.bias.zero_()

    # ---------------------------------------------------------------- tokens
    def interpolate_pos_encoding(self, x: Tensor, height: int, width: int) -> Tensor:
        n_cls = int(self.cls_token is not None)
        npatch = x.shape[1] - n_cls
        n_pos = self.pos_embed.shape[1] - n_cls
        if npatch == n_pos and height == width:
            return self.pos_embed
        pos_embed = self.pos_embed.float()
        class_pos, patch_pos = pos_embed[:, :n_cls], pos_embed[:, n_cls:]
        rows, cols = height // self.patch_size, width // self.patch_size
        side = int(math.sqrt(n_pos))
        grid = patch_pos.reshape(1, side, side, -1).permute(0, 3, 1, 2)
        mode = self.config["interpolate_mode"]
        if self.interpolate_offset:
            # The reference passes scale factors with a small offset rather than a size, so that
            # floating point rounding in interpolate lands on the requested grid.
            scale = ((rows + self.interpolate_offset) / side, (cols + self.interpolate_offset) / side)
            grid = F.interpolate(grid, scale_factor=scale, mode=mode, antialias=self.interpolate_antialias)
        else:
            grid = F.interpolate(grid, size=(rows, cols), mode=mode, antialias=self.interpolate_antialias)
        if grid.shape[-2:] != (rows, cols):
            raise RuntimeError(f"positional embedding interpolated to {tuple(grid.shape[-2:])}, wanted {(rows, cols)}")
        patch_pos = grid.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)
        return torch.cat((class_pos, patch_pos), dim=1).to(x.dtype)

    def prepare_tokens_with_masks(self, x: Tensor, masks: Tensor | None = None) -> Tensor:
        _, _, height, width = x.shape
        x = self.patch_embed(x)
        if masks is not None:
            x = torch.where(masks.unsqueeze(-1), self.mask_token.to(x.dtype).unsqueeze(0), x)
        if self.cls_token is not None:
            x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        if self.pos_embed is not None:
            x = x + self.interpolate_pos_encoding(x, height, width)
        if self.rope is not None:  # the blocks rotate q/k on this input's grid
            self.rope.grid = (height // self.patch_size, width // self.patch_size)
        if self.register_tokens is not None:
            n_cls = int(self.cls_token is not None)
            x = torch.cat((x[:, :n_cls], self.register_tokens.expand(x.shape[0], -1, -1), x[:, n_cls:]), dim=1)
        if self.config["pre_norm"]:
            x = self.norm_pre(x)
        return x

    # ---------------------------------------------------------------- outputs
    def forward_features(self, x: Tensor, masks: Tensor | None = None) -> dict[str, Tensor | None]:
        x = self.prepare_tokens_with_masks(x, masks)
        for block in self.blocks:
            x = block(x)
        x_norm = self.norm(x)
        first_patch = num_prefix_tokens(self)
        n_cls = int(self.cls_token is not None)
        return {
            # the pooled feature: the class token, the attention pool's output (SigLIP) or the patch tokens' mean
            "x_norm_clstoken": self.pool(x_norm),
            "x_norm_regtokens": x_norm[:, n_cls:first_patch],
            "x_norm_patchtokens": x_norm[:, first_patch:],
            "x_prenorm": x,
            "masks": masks,
        }

    def pool(self, x_norm: Tensor) -> Tensor:
        """The pooled feature of a token sequence after :attr:`norm` (prefix tokens first): the class token, the
        attention pool's output, or (timm's ``global_pool='avg'``) the mean of the patch tokens only, class and
        register tokens left out as timm's ``global_pool_nlc`` does, then ``fc_norm`` where the model has one."""
        pooling = pooling_of(self.config)
        if pooling == "attention":
            return self.attn_pool(x_norm)
        if pooling == "cls":
            return x_norm[:, 0]
        return self.mean_pool(x_norm[:, num_prefix_tokens(self) :])

    def mean_pool(self, patches: Tensor) -> Tensor:
        """timm's ``global_pool='avg'`` head on the patch tokens alone (after :attr:`norm`): their mean, then
        ``fc_norm`` where the model has one (timm's ``forward_head``: ``pool`` then ``fc_norm``)."""
        mean = patches.mean(dim=1)
        return self.fc_norm(mean) if self.config["fc_norm"] else mean

    def _block_indices(self, n: int | Iterable[int]) -> set[int]:
        depth = len(self.blocks)
        if isinstance(n, int):
            if not 1 <= n <= depth:
                raise ValueError(f"n={n}: the model has {depth} blocks")
            return set(range(depth - n, depth))
        indices = {int(i) for i in n}
        bad = sorted(i for i in indices if not 0 <= i < depth)
        if bad:
            raise ValueError(f"block indices {bad} out of range: the model has {depth} blocks (0..{depth - 1})")
        return indices

    def get_intermediate_layers(
        self,
        x: Tensor,
        n: int | Iterable[int] = 1,
        reshape: bool = False,
        return_class_token: bool = False,
        norm: bool = True,
    ):
        """Outputs of the selected blocks, in block order (as the reference), without cls/register tokens."""
        if return_class_token and self.cls_token is None:
            raise ValueError(f"return_class_token: a {self.config['family']} model has no class token")
        take = self._block_indices(n)
        batch, _, height, width = x.shape
        tokens = self.prepare_tokens_with_masks(x)
        outputs = []
        for i, block in enumerate(self.blocks[: max(take) + 1]):  # later blocks cannot change the result
            tokens = block(tokens)
            if i in take:
                outputs.append(tokens)
        if norm:
            outputs = [self.norm(out) for out in outputs]
        class_tokens = [out[:, 0] for out in outputs]
        first_patch = num_prefix_tokens(self)
        outputs = [out[:, first_patch:] for out in outputs]
        if reshape:
            rows, cols = height // self.patch_size, width // self.patch_size
            outputs = [out.reshape(batch, rows, cols, -1).permute(0, 3, 1, 2).contiguous() for out in outputs]
        if return_class_token:
            return tuple(zip(outputs, class_tokens))
        return tuple(outputs)

    def forward(self, x: Tensor, is_training: bool = False):
        features = self.forward_features(x)
        return features if is_training else self.head(features["x_norm_clstoken"])


def _read_config_file(path: Path) -> dict[str, Any]:
    text = path.read_text()
    if path.suffix.lower() in {".yaml", ".yml"}:
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a backbone config must be a mapping of constructor arguments")
    return data


def resolve_config(config: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """A complete architecture dict from a preset name, a JSON/YAML file, or a (partial) dict."""
    if isinstance(config, (str, Path)):
        if str(config) in PRESETS:
            return dict(PRESETS[str(config)])
        path = Path(config)
        if not path.is_file():
            raise ValueError(
                f"unknown backbone {str(config)!r}: not a preset ({', '.join(sorted(PRESETS))}) "
                "and not a JSON/YAML config file"
            )
        config = _read_config_file(path)
    unknown = sorted(set(config) - set(ARCH_DEFAULTS) - IGNORED_KEYS)
    if unknown:
        raise ValueError(f"unknown backbone config keys {unknown}; known: {sorted(ARCH_DEFAULTS)}")
    cfg = {**ARCH_DEFAULTS, **{k: v for k, v in config.items() if k in ARCH_DEFAULTS}}
    if cfg["ffn_layer"] not in FFN_LAYERS:
        raise ValueError(f"ffn_layer {cfg['ffn_layer']!r} not supported; use one of {sorted(FFN_LAYERS)}")
    if cfg["act_layer"] not in ACTIVATIONS:
        raise ValueError(f"act_layer {cfg['act_layer']!r} not supported; use one of {sorted(ACTIVATIONS)}")
    if cfg["interpolate_mode"] not in ("bicubic", "bilinear"):
        raise ValueError(f"interpolate_mode {cfg['interpolate_mode']!r} not supported; use 'bicubic' or 'bilinear'")
    if cfg["fc_norm"] and not cfg["avg_pool"]:
        raise ValueError("fc_norm: the final norm after the pool needs avg_pool (timm's global_pool='avg')")
    if cfg["avg_pool"] and cfg["attn_pool"]:
        raise ValueError("avg_pool and attn_pool: a model has one pooled feature; switch one of them off")
    if cfg["family"] not in FAMILIES:
        raise ValueError(f"family {cfg['family']!r} not supported; use one of {list(FAMILIES)}")
    return cfg


def build_vit(config: str | Path | Mapping[str, Any], seed: int | None = None) -> DinoVisionTransformer:
    """Build a randomly initialised DINOv2 ViT from a preset name, a JSON/YAML file or a dict.

    With ``seed`` the initialisation is deterministic (independent of the global RNG).
    """
    model = DinoVisionTransformer(config)
    if seed is not None:
        model.reset_parameters(torch.Generator().manual_seed(seed))
    return model.eval()
