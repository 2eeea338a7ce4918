"""``dinov2_tiny_defective``: a tiny DINOv2 with singular defects, built from first principles.

Real DINOv2 weights cannot be downloaded in tests, and a randomly initialised ViT has no defects. This model
is a randomly initialised tiny DINOv2 (width 96, 8 blocks, SwiGLU, patch 14, DINOv2's init scale) into which a
small circuit is written that produces singular defects the way the paper describes them: a few tokens per
image, chosen by their content, are amplified block after block along one direction ``u``, until their norms
are many times the median; their directions agree within and across images; and the linearization of
Section 3 predicts ``u``. The circuit lives in four orthonormal, zero-mean directions, all orthogonal to the
per-channel sums of the patch filters (flat colour patches have no component along them) and removed from the
position embedding (position alone never triggers): ``w`` (the content score, the only one the patch
embedding writes to), ``u`` (the defect direction) and ``e``, ``f`` (scratch channels). With ``n`` a token
after LayerNorm and ``z = n . w`` its score (about N(0, 1) for random textures):

1. Block 0, MLP: two SwiGLU units, ``z (silu(kappa z) - silu(-kappa z)) = kappa z^2``, write ``energy z^2``
   (the score's square, >= 0) into ``e``; the gain is split so that both factors are dominant singular values
   of ``w12`` and ``w3``.
2. Block 1, attention: one head with zero query/key weights attends uniformly; a value channel reads ``e`` and
   the projection writes it to ``f``: every token receives its image's mean z^2. Blocks 0 and 1 write nothing
   else into ``u``, ``e``, ``f``, so that mean is >= 0.
3. Block 1, MLP: a bump of two units, ``silu(k y) - silu(k (y - cap))`` with ``y = n.e - tau n.f - floor``,
   writes ``+u``: a token is triggered when its score is large *relative to its image* (z^2 above a multiple
   of the image's mean z^2), so each image gets a few defects whatever its contrast or texture statistics.
   The bump caps the increment.
4. Blocks 2..7, MLP: the same bump on ``n . u`` with thresholds 3..4: positive feedback that keeps adding
   ``+u`` to tokens already aligned with ``u`` (a residual power iteration), so defect norms grow linearly
   with depth; normal tokens have no ``u`` component and are left alone.

Why the linearization finds ``u``: in step 3 the trigger is a strong rank-one map ``e, f -> u`` (its linear
fit on N(0, I) inputs has gain ~ trigger_gain * k / 2), so E_1 has a large leading singular value with left
singular vector ``u``, and the later blocks (identity plus small random parts) keep it: nu_i is within about
11 degrees of ``u`` for i >= 1. Block 0's attention also gets a value path ``u -> u`` (gain ``attn_gain``):
averaged over the tokens it adds nothing (no token has a ``u`` component yet), but it makes nu_0 = ``u`` too,
so that Eq. 5 in block 0 does not flag content tokens along an arbitrary direction.

Why fine-tuning singular values removes the defects: every ``u`` increment passes through a rank-one component
of ``w12`` (gain k) and of ``w3`` (gain trigger_gain / amp_gain), each a dominant singular value of its matrix
(the random part's singular values are below 1).

Why a repair leaves no image worse (the real DINOv2's high-norm tokens are a few per image, never a whole image):
the threshold subtracts the image's mean z^2, which must stay >= 0. Two earlier flaws broke that. (a) The random
writes of blocks 0-1 gave ``e`` an offset of either sign: 8 of the 120 synthetic ImageNet-twin images had a
negative mean, so "- tau n.f" added and every token fired, invisible to Eq. 5 and to the norm census; a repair
that raised the e -> f value gain (1.04 -> 1.27) moved more images across that edge (held-out last-block
high-norm tokens 12 -> 29 at 112 px). (b) The energy gain sat in a singular value of 0.18 of ``w3``: SGD with
lr 0.005 drove it negative in a few steps, flipping ``e`` and the whole threshold. Lowering them raises the effective thresholds and shrinks the
increments; clamping all singular values to 2 (Appendix B) removes nearly all defects, and 20 SGD steps on the
singular values alone with the paper's smoothness loss do too (both are tested).

The same circuit in the other families' anatomy (``STAND_INS``: ``clip_tiny_defective``, ``siglip_tiny_defective``,
issue 21): their MLP is fc1 -> activation -> fc2 (QuickGELU, tanh-GELU) with no LayerScale (gains divided by 1).
The bumps are act(k y) - act(k (y - cap)) as with silu; the square units become act(a z) + act(-a z) = a z (2 F(a z)
- 1), F the activation's gate, even and >= 0, about 2 F'(0) (a z)^2 near 0 and |a z| beyond: a is set from F'(0)
so that small scores get the same energy. The energy of large scores then grows more slowly than z^2; on the
SigLIP-like model that showed as fewer triggers, so its tau is 1.75 (measured on 16
``sample_images`` at 224 px, last block high-norm tokens per image 2 to 10, DINOv2's 3 to 12; tau 2.25 gave 0 to 5).
CLIP's keeps 2.25 (3 to 12). nu_i is within about 11 degrees of u for i >= 1 in both.

All other weights are DINOv2's random initialisation (trunc-normal 0.02, layer scale 1.0) from ``build_vit``,
so features and probes on them behave like those of a random tiny DINOv2. Defect counts scale with the number
of tokens: at 224 x 224 (16 x 16 tokens) textured images get about 2 to 10 defects; perfectly flat images none.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sinder.models.vit import ARCH_DEFAULTS, build_vit

PRESET_NAME = "dinov2_tiny_defective"

CONFIG = {
    **ARCH_DEFAULTS,
    "img_size": 224,
    "patch_size": 14,
    "embed_dim": 96,
    "depth": 8,
    "num_heads": 4,
    "mlp_ratio": 4.0,
    "ffn_layer": "swiglufused",
    "init_values": 1.0,
}


# The same circuit in the other families' anatomy (issue 21 item 5): a CLIP-like tower (OpenAI CLIP's switches:
# class token, a LayerNorm before the blocks, no LayerScale, QuickGELU, LayerNorm eps 1e-5, no patch bias) and a
# SigLIP-like one (no class token, tanh-GELU, an attention-pooling head, no LayerScale). Both keep patch 14 and the
# tiny width and depth, so that the smoke profile's resolutions and images serve all three.
CLIP_NAME = "clip_tiny_defective"
SIGLIP_NAME = "siglip_tiny_defective"
_TRANSFORMERS_TOWER = {**CONFIG, "ffn_layer": "mlp", "init_values": 0.0, "interpolate_offset": 0.0}
CLIP_CONFIG = {**_TRANSFORMERS_TOWER, "family": "clip", "act_layer": "quick_gelu", "pre_norm": True,
               "patch_bias": False, "norm_eps": 1e-5}  # fmt: skip
SIGLIP_CONFIG = {**_TRANSFORMERS_TOWER, "family": "siglip", "act_layer": "gelu_pytorch_tanh", "class_token": False,
                 "attn_pool": True}  # fmt: skip


@dataclass(frozen=True)
class Circuit:
    """Constants of the defect circuit (see the module docstring for the role of each)."""

    kappa: float = 1.0  # value/gate gain ratio of the square units in block 0 (z silu(kappa z) terms)
    energy: float = 0.5  # block 0 writes about energy * z^2 into e (before LayerNorm)
    # Trigger when z^2 > tau * (sqrt(D) / |x|) * mean(z^2) over the image (f carries the mean of e after one more
    # LayerNorm, hence the token-norm factor: about 1.75 for this model's token norms of ~5.6).
    tau: float = 2.25
    floor: float = 0.25  # ... and exceeds this absolute level (flat images stay clear)
    k: float = 4.0  # slope of the bump units
    cap: float = 1.5  # width of the trigger bump
    trigger_gain: float = 4.0  # w3 gain of the trigger: increment about trigger_gain * k * cap
    amp_threshold: float = 3.0  # amplifier bump from n.u = 3 to 4
    amp_width: float = 1.0
    amp_gain: float = 3.0  # amplifier increment per block about amp_gain * k * amp_width
    first_amplifier: int = 2
    attn_gain: float = 1.0  # block 0 attention: a u -> u value path (mean-field: no effect on the tokens)


# Every constructed stand-in: name -> (architecture, its circuit's constants).
STAND_INS: dict[str, tuple[dict, Circuit]] = {
    PRESET_NAME: (CONFIG, Circuit()),
    CLIP_NAME: (CLIP_CONFIG, Circuit()),
    SIGLIP_NAME: (SIGLIP_CONFIG, Circuit(tau=1.75)),  # tuned: a few defects per image as the others (tests)
}


def _orthonormal_directions(count: int, avoid: Tensor, generator: torch.Generator) -> list[Tensor]:
    """``count`` random orthonormal unit vectors orthogonal to the columns of ``avoid``."""
    dirs: list[Tensor] = []
    for _ in range(count):
        basis, _ = torch.linalg.qr(torch.cat([avoid, *[d[:, None] for d in dirs]], dim=1))
        v = torch.randn(avoid.shape[0], generator=generator, dtype=avoid.dtype)
        v = v - basis @ (basis.T @ v)
        dirs.append(v / v.norm())
    return dirs


def _bump(mlp, read: Tensor, start: float, width: float, k: float, gain: Tensor) -> None:
    """Units 0 and 1: ``gain * (act(k (read.n - start)) - act(k (read.n - start - width)))``; act is SwiGLU's silu
    (the gate's other factor the constant 1) or the fc1/fc2 MLP's own activation."""
    if not hasattr(mlp, "w12"):
        for unit, offset in ((0, start), (1, start + width)):
            mlp.fc1.weight[unit] = k * read
            mlp.fc1.bias[unit] = -k * offset
        mlp.fc2.weight[:, 0] = gain
        mlp.fc2.weight[:, 1] = -gain
        return
    hidden = mlp.w3.weight.shape[1]
    for unit, offset in ((0, start), (1, start + width)):
        mlp.w12.weight[unit] = k * read
        mlp.w12.bias[unit] = -k * offset
        mlp.w12.weight[hidden + unit] = 0.0  # the gate's other factor is the constant 1
        mlp.w12.bias[hidden + unit] = 1.0
    mlp.w3.weight[:, 0] = gain
    mlp.w3.weight[:, 1] = -gain


def _out_layer(mlp) -> nn.Linear:
    """The MLP's output layer (SwiGLU's w3, else fc2)."""
    return mlp.w3 if hasattr(mlp, "w3") else mlp.fc2


def _scale(layer_scale: nn.Module) -> Tensor | float:
    """A LayerScale's gamma, 1 for a family without LayerScale: circuit gains are divided by it."""
    return layer_scale.gamma if hasattr(layer_scale, "gamma") else 1.0


def _square_units(mlp, w: Tensor, e: Tensor, circuit: Circuit, gain: Tensor | float) -> None:
    """Block 0's energy: about ``circuit.energy * z^2`` into ``e`` with z = n.w, in the two units 0 and 1.

    SwiGLU: z (silu(kappa z) - silu(-kappa z)) = kappa z^2 exactly. An fc1/fc2 MLP: act(a z) + act(-a z) = a z
    (2 F(a z) - 1) with F the activation's gate (Phi for GELU, sigmoid(1.702 x) for QuickGELU), even, >= 0 and
    2 F'(0) (a z)^2 near 0; a is set from that slope (``circuit.kappa`` plays no part)."""
    out_gain = 2**-0.5  # two columns of this norm: singular value 1
    if not hasattr(mlp, "w12"):
        slope = 2 * _gate_slope(mlp.act)
        in_gain = (circuit.energy / (slope * out_gain)) ** 0.5
        for unit, sign in ((0, 1.0), (1, -1.0)):
            mlp.fc1.weight[unit] = sign * in_gain * w
            mlp.fc1.bias[unit] = 0.0
            mlp.fc2.weight[:, unit] = out_gain * e / gain
        return
    hidden = mlp.w3.weight.shape[1]
    in_gain = (circuit.energy / (circuit.kappa * out_gain)) ** 0.5  # value rows kappa * in_gain, gate in_gain
    for unit, sign in ((0, 1.0), (1, -1.0)):
        mlp.w12.weight[unit] = sign * circuit.kappa * in_gain * w
        mlp.w12.bias[unit] = 0.0
        mlp.w12.weight[hidden + unit] = in_gain * w
        mlp.w12.bias[hidden + unit] = 0.0
        mlp.w3.weight[:, unit] = sign * out_gain * e / gain


def _gate_slope(act: nn.Module) -> float:
    """F'(0) of an activation act(x) = x F(x): half its second derivative at 0, by a central difference."""
    h = torch.tensor([-1e-3, 0.0, 1e-3], dtype=torch.float64)
    y = act(h)
    return float((y[0] - 2 * y[1] + y[2]) / (2 * 1e-6))


@torch.no_grad()
def _construct(seed: int, circuit: Circuit, config: dict | None = None):
    model = build_vit(config or CONFIG, seed=seed)
    dim = model.embed_dim
    if hasattr(model, "attn_pool"):  # nn.MultiheadAttention draws its input projection from the global RNG
        pool_gen = torch.Generator().manual_seed(seed + 2_000_003)
        weight = model.attn_pool.attention.in_proj_weight
        weight.copy_(torch.randn(weight.shape, generator=pool_gen).clamp_(-2, 2) * 0.02)
    gen = torch.Generator().manual_seed(seed + 1_000_003)
    patch_w = model.patch_embed.proj.weight  # (D, 3, p, p)
    # u, w, e, f: zero mean (LayerNorm's centring keeps them), orthogonal to the per-channel sums of the patch
    # filters (flat colour patches score zero: defects need some texture).
    avoid = torch.cat([torch.ones(dim, 1), patch_w.sum(dim=(2, 3))], dim=1)
    u, w, e, f = _orthonormal_directions(4, avoid, gen)
    circuit_dirs = torch.stack([u, w, e, f], dim=1)
    model.pos_embed -= (model.pos_embed @ circuit_dirs) @ circuit_dirs.T  # position alone never triggers
    silent = torch.stack([u, e, f], dim=1)  # the image writes only into w, the content score
    flat = patch_w.view(dim, -1)
    flat -= silent @ (silent.T @ flat)
    if model.patch_embed.proj.bias is not None:  # CLIP's patch embedding has none
        model.patch_embed.proj.bias -= silent @ (silent.T @ model.patch_embed.proj.bias)

    blocks = model.blocks
    # Blocks 0 and 1 write nothing into u, e, f but the circuit: f must carry the image's mean z^2, which is
    # >= 0. With the random writes of these blocks left in, the e channel had a random offset of either sign;
    # on images where its mean came out negative, "- tau n.f" added instead of subtracting and every token of
    # the image fired (a whole-image defect, which neither Eq. 5 nor the norm census can see), and any change
    # of the e -> f gain by the repair moved images across that edge.
    for block in blocks[:2]:
        for layer in (block.attn.proj, _out_layer(block.mlp)):
            layer.weight -= silent @ (silent.T @ layer.weight)
            layer.bias -= silent @ (silent.T @ layer.bias)
    # 1. block 0 MLP: z (silu(kappa z) - silu(-kappa z)) = kappa z^2 into e, with z = n.w.
    # The gain energy is split so that each factor is a dominant singular value of its matrix (w3: 1, w12:
    # about 1.7, above the random parts' 0.5 and 0.6). A circuit gain kept in a small singular value (it was
    # 0.18 in w3) is one SGD step away from zero: the repair drove it negative, e flipped sign, and with it
    # the image-mean threshold, so whole images fired after a few steps.
    _square_units(blocks[0].mlp, w, e, circuit, _scale(blocks[0].ls2))
    # Block 0 attention, value channel 0 of head 0: u -> attn_gain u. Averaged over tokens it adds nothing
    # (no token has a u component yet), but it makes u the leading direction of I + A_0 as well.
    attn0, ls1_0 = blocks[0].attn, _scale(blocks[0].ls1)
    attn0.qkv.weight[2 * dim] = u
    attn0.qkv.bias[2 * dim] = 0.0
    attn0.proj.weight[:, 0] = circuit.attn_gain * u / ls1_0
    # 2. block 1 attention, head 0: uniform attention (zero q, k); value channel 0 reads e, proj writes f.
    attn, ls1, head = blocks[1].attn, _scale(blocks[1].ls1), dim // model.config["num_heads"]
    for part in (0, 1):  # q and k rows of head 0
        attn.qkv.weight[part * dim : part * dim + head] = 0.0
        attn.qkv.bias[part * dim : part * dim + head] = 0.0
    attn.qkv.weight[2 * dim] = e
    attn.qkv.bias[2 * dim] = 0.0
    attn.proj.weight[:, 0] = f / ls1
    # 3. block 1 MLP: trigger when n.e - tau n.f > floor.
    _bump(blocks[1].mlp, e - circuit.tau * f, circuit.floor, circuit.cap, circuit.k,
          circuit.trigger_gain * u / _scale(blocks[1].ls2))
    # 4. later blocks: positive feedback along u.
    for block in blocks[circuit.first_amplifier :]:
        _bump(block.mlp, u, circuit.amp_threshold, circuit.amp_width, circuit.k,
              circuit.amp_gain * u / _scale(block.ls2))
    return model, {"u": u.clone(), "w": w.clone(), "e": e.clone(), "f": f.clone()}


def _stand_in(name: str, circuit: Circuit | None) -> tuple[dict, Circuit]:
    if name not in STAND_INS:
        raise ValueError(f"unknown constructed stand-in {name!r}; known: {', '.join(STAND_INS)}")
    config, default = STAND_INS[name]
    return config, circuit or default


def build_defective_tiny(seed: int = 0, circuit: Circuit | None = None, name: str = PRESET_NAME):
    """(model, config): the ``dinov2_tiny_defective`` backbone (eval mode), deterministic in ``seed``; ``name``
    another family's stand-in (``STAND_INS``)."""
    config, circuit = _stand_in(name, circuit)
    model, _ = _construct(seed, circuit, config)
    return model.eval(), dict(model.config)


def defective_tiny_state_dict(seed: int = 0, circuit: Circuit | None = None,
                              name: str = PRESET_NAME) -> dict[str, Tensor]:  # fmt: skip
    """The state dict of ``build_defective_tiny(seed)`` (our ViT's key names)."""
    config, circuit = _stand_in(name, circuit)
    model, _ = _construct(seed, circuit, config)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def defect_direction(seed: int = 0, circuit: Circuit | None = None, name: str = PRESET_NAME) -> Tensor:
    """The unit direction ``u`` along which the defects of ``build_defective_tiny(seed)`` grow."""
    config, circuit = _stand_in(name, circuit)
    return _construct(seed, circuit, config)[1]["u"]


def sample_images(n: int, size: int = 224, seed: int = 0) -> Tensor:
    """``n`` ImageNet-normalized test images (n x 3 x size x size): smooth colour fields with fine texture.

    Deterministic in ``seed``. The defective model shows a few defects on most of them.
    """
    if size % 14:
        raise ValueError(f"size={size} is not a multiple of the patch size 14")
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n, 3, size // 8 + 2, size // 8 + 2, generator=gen)
    field = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=True)
    field = field / field.std()
    return field + 0.3 * torch.randn(n, 3, size, size, generator=gen)
