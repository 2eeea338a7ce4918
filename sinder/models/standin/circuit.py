"""The stand-in's artifacts, planted into the trained weights by their mechanism (after training).

The scaffold (:mod:`sinder.models.standin.scaffold`) gives every token, at the trigger block, its patch energy
``n . e`` (pixel variance relative to the token's norm) and ``n . f`` (``MEAN_GAIN`` times the image's mean
energy). :func:`plant_trigger` writes into units kept dead while training:

1. the trigger, block ``TRIGGER_BLOCK``'s MLP: a bump on ``n . (tau f / MEAN_GAIN - e)`` that writes
   ``first_ratio`` median token norms along ``u`` into tokens whose energy is far below their image's mean (a
   low-information patch in an image that has more informative ones);
2. the amplifiers, every later MLP: a bump on ``n . u`` (3 to 4) that adds ``growth_ratio`` token norms along
   ``u`` to tokens already aligned with it, so the artifact's norm grows with depth, as in real ViTs; normal
   tokens have no ``u`` component and are left alone.

An artifact token's norm is then many times the others', so after every later LayerNorm (and the final one)
its own content is squashed to a small fraction: a dense head reading it loses its local content (tested:
a linear readout of the patch colour errs many times more there). Trained weights never read ``u`` (scaffold),
so what later blocks compute for it comes from its squashed content: a weak query, so broader attention
(block 4, NYUd twin at 112 px: entropy 3.9 nats against 3.4 for other tokens; uniform is 4.2), whose output
is, relative to its own content, large: more global, less local information.

How SINDER sees them: block 0's ``u -> u`` value path (scaffold) and the trigger's steep rank-one map
``e, f -> u`` make ``u`` the leading left singular vector of the linearization of every block (Section 3), so
Eq. 5 looks along ``u``; every circuit's output columns form a rank-one component ``out_gain * sqrt(2)`` of its
``w3`` along ``u`` (the height sits in the units' constant factor), which singular-value training can shrink.
What the repair can reach (README, "The defective tiny model"): the scaffold's null-space fillers leave no
exactly-zero singular value that writes into or reads from the circuit directions, so the repair's gradient falls
on the singular values that carry the circuit (the trigger's and amplifiers' ``w3`` components, the mean head,
the energy reads), each of which lowers the artifacts when it shrinks. What Eq. 5 also flags: no token has a ``u``
component before the trigger and Eq. 5 is scale-free, so in block 1 the least-squares noise left in nu_1 along
``e`` (about 0.06 at 20k samples) picks the most textured patches (the energy is heavy-tailed), and a short repair
spends many of its steps there, shrinking the energy path, to which the trigger's relative threshold is blind.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sinder.models.adapter import num_prefix_tokens
from sinder.models.standin.scaffold import MEAN_GAIN, TRIGGER_BLOCK, patch_pixel_variance, reserved_directions


@dataclass(frozen=True)
class Trigger:
    """The planted trigger and amplifiers (see the module docstring). Energies are expressed as the pixel standard
    deviation (ImageNet-normalised units) of a patch that would have them, via the calibration of
    :func:`plant_trigger`."""

    # fire below a fifth of the image's mean energy (pixel std under ~0.45 of its RMS): about 2% of the twins'
    # patches (ADE20k, NYUd, ImageNet twins at 112 px), the share of high-norm tokens in DINOv2 (Darcet et al. 2024)
    tau: float = 0.2
    floor_std: float = 0.05  # ... by at least the energy of a patch with this pixel std (a flat image never fires)
    sharpness: float = 8.0  # the trigger's bump rises from 0 to full over one floor width
    first_ratio: float = 2.0  # the trigger writes this many median token norms along u ...
    growth_ratio: float = 2.5  # ... and each later block adds this many (a residual power iteration, as in ViTs)
    amp_threshold: float = 3.0  # amplifier bump on n.u from 3 to 4 (normal tokens: n.u ~ 0; artifacts: ~9)
    amp_width: float = 1.0
    amp_slope: float = 4.0
    out_gain: float = 1.5  # each circuit's w3 columns: singular value out_gain * sqrt(2); its height sits in the
    #                        constant factor of its SwiGLU units (a bias), so a repair that shrinks that singular
    #                        value by out_gain removes the artifact


@torch.no_grad()
def trigger_inputs(model: nn.Module, images: Tensor) -> tuple[Tensor, Tensor]:
    """(n . e, n . f) at the trigger block's MLP input for every token (B, T)."""
    dirs = reserved_directions(model.embed_dim)
    x = model.prepare_tokens_with_masks(images)
    for block in model.blocks[:TRIGGER_BLOCK]:
        x = block(x)
    block = model.blocks[TRIGGER_BLOCK]
    x = x + block.ls1(block.attn(block.norm1(x)))
    n = block.norm2(x)
    return n @ dirs["e"], n @ dirs["f"]


def _bump(mlp, read: Tensor, start: float, width: float, slope: float, height: float, out: Tensor,
          out_gain: float) -> None:
    """Units 0 and 1: ``height * u_hat`` times ``(silu(slope (r - start)) - silu(slope (r - start - width))) /
    (slope width)`` with ``r = read . n``: 0 below ``start``, ``height`` above ``start + width``."""
    hidden = mlp.w3.weight.shape[1]
    factor = height / (slope * width * out_gain)
    for unit, offset in ((0, start), (1, start + width)):
        mlp.w12.weight[unit] = slope * read
        mlp.w12.bias[unit] = -slope * offset
        mlp.w12.weight[hidden + unit] = 0.0
        mlp.w12.bias[hidden + unit] = factor  # the height lives in this constant factor
    mlp.w3.weight[:, 0] = out_gain * out
    mlp.w3.weight[:, 1] = -out_gain * out


@torch.no_grad()
def plant_trigger(model: nn.Module, calibration: Tensor, trigger: Trigger | None = None) -> dict[str, float]:
    """Write the trigger and the amplifiers into the trained model (in place); returns their constants.

    ``calibration``: ImageNet-normalised images whose patches relate energy to pixel variance: the median of
    ``n.e / variance`` over their textured patches converts ``floor_std`` into the trigger's units."""
    trigger = trigger or Trigger()
    dirs = reserved_directions(model.embed_dim)
    prefix = num_prefix_tokens(model)
    energy, _ = trigger_inputs(model, calibration)
    variance = patch_pixel_variance(calibration, model.patch_size)
    textured = variance > 4 * trigger.floor_std**2
    scale = float((energy[:, prefix:][textured] / variance[textured]).median())
    floor = scale * trigger.floor_std**2
    x = model.prepare_tokens_with_masks(calibration)
    for block in model.blocks[:TRIGGER_BLOCK]:
        x = block(x)
    token_norm = float(x[:, prefix:].norm(dim=-1).median())
    # fire when n.(tau f / MEAN_GAIN - e) > floor: energy under tau x the image mean, by at least the floor
    read = trigger.tau / MEAN_GAIN * dirs["f"] - dirs["e"]
    _bump(model.blocks[TRIGGER_BLOCK].mlp, read, floor, floor, trigger.sharpness / floor,
          trigger.first_ratio * token_norm, dirs["u"], trigger.out_gain)
    for block in model.blocks[TRIGGER_BLOCK + 1 :]:
        _bump(block.mlp, dirs["u"], trigger.amp_threshold, trigger.amp_width, trigger.amp_slope,
              trigger.growth_ratio * token_norm, dirs["u"], trigger.out_gain)
    return {"energy_per_variance": scale, "floor": floor, "token_norm": token_norm}
