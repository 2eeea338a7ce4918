"""The stand-in's scaffold: the reserved directions and the frozen circuit parts present while it trains.

The residual stream keeps ``DETECTORS + 5`` orthonormal, zero-mean directions out of the trained model's reach
(every trained write into the stream is projected off them after each optimizer step, :func:`impose_scaffold`):

- ``w_1 .. w_K``: the patch embedding writes into them ``DETECTOR_GAIN`` times the responses of K fixed random
  zero-DC pixel filters,
  so ``sum_k (n . w_k)^2`` estimates the patch's pixel variance (its "information") relative to the token's norm;
- ``e``: block ``ENERGY_BLOCK``'s MLP writes that energy there with 2K SwiGLU units
  (``z silu(g z) - z silu(-g z) = g z^2`` exactly);
- ``f``: head 0 of block ``TRIGGER_BLOCK``'s attention attends uniformly over the patches and copies
  ``MEAN_GAIN`` times the image's mean energy from ``e`` into ``f``;
- ``c``: only the class token has a component along it (and a fixed energy along ``e``): the mean head's keys
  read ``c`` with a large negative gain, so the class token, which has no pixels, is left out of the mean;
- ``u``: the artifact direction; nothing writes it while training;
- ``a``: an anchor, a constant ``ANCHOR`` in every token from the embedding on (the last block removes it before
  the final norm), like the massive constant activations of real ViTs. It dominates every token's standard
  deviation, so what the circuit reads after a LayerNorm (``x . v / std(x)``) barely depends on the trained
  content's norm: a repair that shrinks the content does not move the trigger's thresholds.

No trained weight reads or writes these directions (both are projected off after each step), so each circuit
part is a singular component of its own matrix: the repair's singular-value training can rescale a circuit but
never mixes trained features into it.

Null-space fillers. Projecting the trained weights off the reserved directions alone leaves every block matrix
rank-deficient along them: singular values that are exactly 0, whose left (write) or right (read) singular vectors
lie in the reserved directions and whose other side LAPACK picks at random among channels that the trained model
uses. SINDER trains ``S + delta`` with ``delta`` additive, so a zero singular value is a free rank-one lever from
trained content into the circuit: the repair grew them (block 0's attention output moved by 25-200%) to write
``u``, the energy and the anchor directly, which shifted the trigger's threshold and made new artifacts instead of
shrinking the planted ones. Real weights have no exactly-null subspace. So each block also holds fillers that make
every matrix full rank along the reserved directions with an activation that is exactly zero, so that their
singular values get no gradient: ``RESERVED_COUNT`` MLP units whose gate reads one reserved direction and whose
``w3`` column writes it while their linear factor is zero (``silu(x1) * 0 = 0``: also nothing in the
linearization), and as many value channels (the last head's last ones) whose value rows are zero and whose
projection columns write the reserved directions with gain ``FILLER_VALUE_GAIN``. What remains are zero singular
values of the value projection into those channels, a lever whose output is scaled by that gain twice (in its
gradient and in its effect). Two MLP units of the trigger block and of every later block are kept dead
(zero) while training: the trigger
and the amplifiers are planted there afterwards (:mod:`sinder.models.standin.circuit`), so that planting changes
nothing for a token they do not fire on. LayerNorm affine parameters and layer scales are frozen at 1 and 0
(resp. 1), so a read ``n . v`` of a zero-mean direction ``v`` is exactly ``x . v / std(x)``.

The training script's recorded hash covers this file too: changing the scaffold means retraining.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sinder.models.vit import ARCH_DEFAULTS

PRESET_NAME = "dinov2_tiny_standin"
REG_PRESET_NAME = "dinov2_tiny_standin_reg"
CONFIG = {
    **ARCH_DEFAULTS,
    "img_size": 112,
    "patch_size": 14,
    "embed_dim": 96,
    "depth": 6,
    "num_heads": 4,
    "mlp_ratio": 2.0,
    "ffn_layer": "swiglufused",
    "init_values": 1.0,
}
REG_CONFIG = {**CONFIG, "num_register_tokens": 4}

DETECTORS = 8  # K random pixel filters: sum of K squared responses ~ chi^2_K times the patch's pixel variance
ENERGY_BLOCK = 1
TRIGGER_BLOCK = 2  # a middle block of 6: the artifact forms there and persists through blocks 3-5
SCAFFOLD_SEED = 7_919
# The scaffold reads its signals at the scale Section 3's linearization samples them (N(0, I) at each LayerNorm's
# output), as a trained network's units do: the patch embedding writes the detector responses DETECTOR_GAIN times
# the filters' (n.w_k 0.09-0.6 RMS over textured photo patches, 10th-90th percentile; 0.02-0.16 at gain 1), so the
# energy units need a gain near 1, not 15.
# The least-squares fit of their z^2 (no intercept) has sampling noise proportional to that gain; at DETECTOR_GAIN 1
# and ENERGY_GAIN 15 it was a map into e of norm about 10 at 20k samples, which made nu_1 0.74 e - 0.67 u.
DETECTOR_GAIN = 4.0
# e = ENERGY_GAIN sum_k (n.w_k)^2: about 1 for a typical textured patch, beside token norms of ~40 (the product
# ENERGY_GAIN x DETECTOR_GAIN^2 = 15 keeps e where it was)
ENERGY_GAIN = 15.0 / DETECTOR_GAIN**2
CLS_ENERGY = 1.0  # the class token carries a fixed energy: it has no pixels and must never trigger
CLS_MARK = 1.0  # ... and a marker along c, which the mean head's keys read with gain -MEAN_KEY_GAIN
MEAN_KEY_GAIN = 200.0  # the class token's logit is then about -200 / (std x sqrt(head dim)): left out


# f = MEAN_GAIN x the image mean energy (value gain 2 x output gain 2). Its linearization is a rank-one map e -> f
# of singular value MEAN_GAIN: at 16, close to the u path's ~20, it tied with u for the lead and nu_2..5 came out
# 0.7-0.85 u + 0.5-0.7 f; at 4 they are u (cos > 0.97, tests/test_standin.py)
MEAN_GAIN = 4.0
U_PATH_GAIN = 20.0  # block 0 attention: a value path u -> u (no token has u there: it adds nothing)
ANCHOR = 30.0  # several times the trained content's norm in the early blocks
CIRCUIT_UNITS = 2  # dead MLP units kept in the trigger block and every later block while training
# Null-space fillers (see impose_scaffold): per block, the last RESERVED_COUNT MLP units and value channels
# (of the last head) carry one reserved direction each with an exactly zero activation.
FILLER_VALUE_GAIN = 0.01  # proj column of a filler value channel: any v step into it is scaled by this


def reserved_directions(dim: int) -> dict[str, Tensor]:
    """The scaffold's orthonormal zero-mean directions: ``w`` (K x D), ``e``, ``f``, ``u``, ``c``, ``a`` (D each)."""
    gen = torch.Generator().manual_seed(SCAFFOLD_SEED)
    raw = torch.randn(dim, DETECTORS + 5, generator=gen, dtype=torch.float64)
    basis, _ = torch.linalg.qr(torch.cat([torch.ones(dim, 1, dtype=torch.float64), raw], dim=1))
    dirs = basis[:, 1:].T.float()  # orthogonal to the all-ones vector: LayerNorm's centring keeps them
    return {"w": dirs[:DETECTORS], "e": dirs[DETECTORS], "f": dirs[DETECTORS + 1], "u": dirs[DETECTORS + 2],
            "c": dirs[DETECTORS + 3], "a": dirs[DETECTORS + 4]}


def reserved_basis(dirs: dict[str, Tensor]) -> Tensor:
    """All reserved directions as rows ((K + 5) x D)."""
    return torch.cat([dirs["w"], torch.stack([dirs[k] for k in ("e", "f", "u", "c", "a")])])


RESERVED_COUNT = DETECTORS + 5


def filler_units(hidden: int) -> range:
    """The MLP units (of ``hidden``) that fill the null space along the reserved directions."""
    return range(hidden - RESERVED_COUNT, hidden)


def filler_channels(dim: int) -> range:
    """The value channels (of ``dim``) that fill the attention projection's null space."""
    return range(dim - RESERVED_COUNT, dim)


def detector_filters(patch_size: int, channels: int = 3) -> Tensor:
    """K orthonormal pixel filters (K x C x p x p), each channel's mean zero: a flat colour responds with 0."""
    gen = torch.Generator().manual_seed(SCAFFOLD_SEED + 1)
    raw = torch.randn(channels, patch_size * patch_size, DETECTORS, generator=gen, dtype=torch.float64)
    raw = raw - raw.mean(dim=1, keepdim=True)
    flat = raw.reshape(channels * patch_size * patch_size, DETECTORS)
    q, _ = torch.linalg.qr(flat)
    return q.T.reshape(DETECTORS, channels, patch_size, patch_size).float()


def _project_off(t: Tensor, basis: Tensor) -> None:
    """Remove the components of ``t``'s first axis along the rows of ``basis`` (in place)."""
    flat = t.reshape(t.shape[0], -1)
    flat -= basis.T @ (basis @ flat)


def _project_rows_off(t: Tensor, basis: Tensor) -> None:
    """Remove the components of ``t``'s last axis along the rows of ``basis`` (in place)."""
    t -= (t @ basis.T) @ basis


@torch.no_grad()
def impose_scaffold(model: nn.Module) -> None:
    """Project every write into the residual stream off the reserved directions and (re)write the scaffold.

    Called once before training and after every optimizer step: the scaffold's own parameters are fixed."""
    dim = model.embed_dim
    dirs = reserved_directions(dim)
    reserved = reserved_basis(dirs)
    # LayerNorms and layer scales: frozen at the identity (reads are then exact; see the module docstring)
    for module in model.modules():
        if isinstance(module, nn.LayerNorm):
            module.weight.fill_(1.0)
            module.bias.zero_()
    for block in model.blocks:
        block.ls1.gamma.fill_(1.0)
        block.ls2.gamma.fill_(1.0)
    # every write: the patch embedding, the prefix tokens, positions, attention and MLP outputs
    proj = model.patch_embed.proj
    _project_off(proj.weight, reserved)
    _project_off(proj.bias[:, None], reserved)
    for name in ("cls_token", "pos_embed", "register_tokens", "mask_token"):
        t = getattr(model, name, None)
        if t is not None:
            _project_rows_off(t.data, reserved)
    for block in model.blocks:
        for layer in (block.attn.proj, block.mlp.w3):
            _project_off(layer.weight, reserved)
            _project_off(layer.bias[:, None], reserved)
        # every trained read too: the trained model neither sees the scaffold nor is seen by it, so each circuit
        # part is a singular component of its own (block-diagonal): a repair's singular-value step rescales a
        # circuit, it never mixes trained features into it (a mixed-in read had the image mean f double).
        for layer in (block.attn.qkv, block.mlp.w12):
            _project_rows_off(layer.weight, reserved)
    # the detectors: patch embedding -> w_k
    filters = detector_filters(model.patch_size, proj.weight.shape[1])
    proj.weight += DETECTOR_GAIN * torch.einsum("kd,kchw->dchw", dirs["w"], filters)
    model.cls_token.data += CLS_ENERGY * dirs["e"] + CLS_MARK * dirs["c"] + ANCHOR * dirs["a"]
    proj.bias += ANCHOR * dirs["a"]
    if getattr(model, "register_tokens", None) is not None:
        model.register_tokens.data += ANCHOR * dirs["a"]
    model.blocks[-1].mlp.w3.bias -= ANCHOR * dirs["a"]  # the final norm (and every head) sees no anchor
    # the energy: 2K units of ENERGY_BLOCK's MLP, sum_k (n.w_k)^2 into e
    mlp = model.blocks[ENERGY_BLOCK].mlp
    hidden = mlp.w3.weight.shape[1]
    gain = ENERGY_GAIN ** 0.5
    for k in range(DETECTORS):
        for j, sign in enumerate((1.0, -1.0)):
            unit = 2 * k + j
            mlp.w12.weight[unit] = sign * gain * dirs["w"][k]  # silu(+-g z)
            mlp.w12.bias[unit] = 0.0
            mlp.w12.weight[hidden + unit] = gain * dirs["w"][k]  # times g z
            mlp.w12.bias[hidden + unit] = 0.0
            mlp.w3.weight[:, unit] = sign * dirs["e"]  # g z (silu(g z) - silu(-g z)) = g^2 z^2
    # the image mean: head 0 of TRIGGER_BLOCK attends uniformly over the patches (a constant query, keys that
    # read only the class token's marker) and copies e into f
    attn = model.blocks[TRIGGER_BLOCK].attn
    head = dim // attn.num_heads
    for part in (0, 1):  # query and key rows of head 0
        attn.qkv.weight[part * dim : part * dim + head] = 0.0
        attn.qkv.bias[part * dim : part * dim + head] = 0.0
    attn.qkv.bias[0] = 1.0
    attn.qkv.weight[dim] = -MEAN_KEY_GAIN * dirs["c"]
    attn.qkv.weight[2 * dim] = MEAN_GAIN**0.5 * dirs["e"]
    attn.qkv.bias[2 * dim] = 0.0
    attn.proj.weight[:, 0] = MEAN_GAIN**0.5 * dirs["f"]
    # block 0 attention, value channel 0: u -> U_PATH_GAIN u. Before the trigger no token has a u component, so
    # it adds nothing; it makes u the leading direction of every block's linearization (Section 3) from block 0
    # on, so that Eq. 5 looks along u in the early blocks too instead of along a trained direction.
    attn0 = model.blocks[0].attn
    attn0.qkv.weight[2 * dim] = U_PATH_GAIN * dirs["u"]
    attn0.qkv.bias[2 * dim] = 0.0
    attn0.proj.weight[:, 0] = dirs["u"]
    # the null-space fillers (module docstring): zero activation, full rank along the reserved directions
    for block in model.blocks:
        mlp = block.mlp
        hidden = mlp.w3.weight.shape[1]
        units = list(filler_units(hidden))
        mlp.w12.weight[units] = reserved
        mlp.w12.bias[units] = 0.0
        mlp.w12.weight[[hidden + u for u in units]] = 0.0
        mlp.w12.bias[[hidden + u for u in units]] = 0.0
        mlp.w3.weight[:, units] = reserved.T
        channels = list(filler_channels(dim))
        block.attn.qkv.weight[[2 * dim + c for c in channels]] = 0.0
        block.attn.qkv.bias[[2 * dim + c for c in channels]] = 0.0
        block.attn.proj.weight[:, channels] = FILLER_VALUE_GAIN * reserved.T
    # the trigger's and the amplifiers' units stay dead until planted
    for block in model.blocks[TRIGGER_BLOCK:]:
        mlp = block.mlp
        hidden = mlp.w3.weight.shape[1]
        for unit in range(CIRCUIT_UNITS):
            for row in (unit, hidden + unit):
                mlp.w12.weight[row] = 0.0
                mlp.w12.bias[row] = 0.0
            mlp.w3.weight[:, unit] = 0.0


def patch_pixel_variance(images: Tensor, patch_size: int) -> Tensor:
    """(B, N) per-patch pixel variance around each channel's patch mean (normalised units), row-major."""
    mean = F.avg_pool2d(images, patch_size)
    sq = F.avg_pool2d(images**2, patch_size)
    return (sq - mean**2).mean(dim=1).flatten(1)
