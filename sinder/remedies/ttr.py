"""Test-time registers (Jiang, Dravid, Efros, Gandelsman 2025, "Vision Transformers Don't Need Trained Registers").

A training-free remedy for high-norm outlier tokens. A few MLP hidden units ("register neurons") fire at the
outlier positions and create them. At inference one extra token joins the sequence; in the register neurons the
extra token gets a large activation and the patch tokens get zero, so the outlier forms on the extra token instead
of on an image patch. The class token and any trained registers are left as they are.

Every family alike: the extra token is an extra prefix token, right after the model's own (class token and trained
registers, as the model adapter's ``num_prefix_tokens`` counts them; none for SigLIP), before the patches. The
reference appends it after the sequence; with no position embedding of its own that is the same token for the
blocks' attention, which does not depend on the order of the tokens, but rotary embeddings (DINOv3) rotate the
last rows x cols tokens as the patches. A SigLIP tower's attention-pooling head sees only the real tokens, as
trained registers are dropped before a pooled feature.

``protocol: reference`` (the default) is the official repository's computation (github.com/nickjiang2378/
test-time-registers); today's earlier variants stay one named option away and are recorded as deviations:

- ``init``: the extra token starts as zeros, appended after the position embeddings, without one (``zeros``,
  official ``dinov2/models/vision_transformer.py`` ``prepare_tokens_with_masks``); ``patch_mean``: the mean of the
  patch tokens.
- ``value``: at each hooked block the official hook (``dinov2/hub/hook_fn.py`` ``activate_on_registers`` with
  ``sign_max``) writes into the extra token, for every register neuron of that block, the same scalar: the value
  of largest magnitude, with its sign, over all tokens and all register neurons of the block (``layer_max``);
  ``per_unit``: each neuron's own extreme in the direction it fires at the outliers. Two units whose maxima are 8
  and 3 get [8, 8] under ``layer_max`` and [8, 3] under ``per_unit``.
- ``selection`` (``fit_register_neurons``): ``reference`` as the official ``shared/algorithms.py``
  ``find_register_neurons`` with the notebook's call (``register_neurons.ipynb``: 100 images, 224 px,
  ``apply_sparsity_filter=True``) and ``configs/dinov2_large.yaml`` (detection block -2, norm threshold 150,
  highest layer 17, top-k 50): outlier tokens are the tokens, class token included, whose norm at the detection
  block is above a fixed threshold; each hidden unit's mean |activation| at those tokens, set to zero unless the
  unit is below 0.5 on at least half of the image's tokens (the sparsity filter), is averaged over the images
  with outliers, and the top-k units of blocks ``0..highest_block`` are kept. ``robust_z``: outliers are the
  patch tokens the high-norm census flags (``sinder.defects.detect.high_norm_mask``), no sparsity filter.

Two things the official code does are kept out, and listed in docs/protocols.md: its hook edits only the first
image of a batch (``output[0]``), ours every image, each with its own value; and its ``forward_features`` slices
the patch tokens as ``[1 + num_register_tokens:]`` after setting ``num_register_tokens = 1``, which drops the
first patch and includes the register; ours returns exactly the base model's patch tokens.

- ``fit_register_neurons``: the register neurons of a model on image batches (see ``selection``).
- ``apply_test_time_registers(model, neurons, init=..., value=...)``: a wrapper around a ``DinoVisionTransformer``
  whose ``forward``, ``forward_features`` and ``get_intermediate_layers`` run with the extra token. The base model
  is not changed: its hooks exist only while a wrapper call runs. Outputs keep their shapes: the extra token
  rides beside the sequence from block to block and never reaches a pooled feature or a dense output. Without
  register neurons no token is added and the model runs unchanged.

The hidden unit is the input of the MLP's output layer: ``gelu(fc1(x))`` for the GELU MLP (ViT-S/B/L; the official
hook's ``mlp.act`` output) and the gated product ``silu(x1) * x2`` (input of ``w3``) for SwiGLU (ViT-g, which the
official hook does not cover). A SwiGLU unit can fire negatively at the outliers, so each neuron records the sign
of its mean activation there; ``per_unit`` uses it, ``layer_max`` (signed by magnitude) does not need it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sinder.defects.detect import HIGH_NORM_MIN_RATIO, HIGH_NORM_Z
from sinder.models.adapter import MLP_LAYERS, num_prefix_tokens
from sinder.utils.atomic import atomic_write_text

FORMAT = "sinder-bench test-time register neurons"
VERSION = 1
DEFAULT_TOP_K = 50  # the reference's setting for ViT-L (24 blocks x 4096 units), configs/dinov2_large.yaml
# The official recipe (register_neurons.ipynb: find_register_neurons(processed_image_cnt=100, ...), IMAGE_SIZE 224;
# configs/dinov2_large.yaml: register_norm_threshold 150 for ViT-L).
REFERENCE_IMAGES = 100
REFERENCE_RESOLUTION = 224
REFERENCE_VIT_L_THRESHOLD = 150.0
# shared/algorithms.py find_register_neurons: sparsity_frac_threshold=0.5, sparsity_activation_threshold=0.5.
SPARSITY_FRACTION = 0.5
SPARSITY_ACTIVATION = 0.5

INIT_CHOICES = ("zeros", "patch_mean")  # the first of each is the reference's
VALUE_CHOICES = ("layer_max", "per_unit")
SELECTION_CHOICES = ("reference", "robust_z")


@dataclass(frozen=True)
class RegisterNeuron:
    block: int
    unit: int
    score: float = 0.0  # mean |activation| at the outlier positions, averaged over images
    sign: int = 1  # +1: fires positively at the outliers (extra token gets the max), -1: negatively (the min)


@dataclass
class RegisterNeurons:
    """The content of a neuron file: the neurons, the backbone they were fitted on, and every setting."""

    neurons: list[RegisterNeuron]
    backbone: str | None = None
    weights_sha256: str | None = None
    architecture: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    fit: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "backbone": self.backbone,
            "weights_sha256": self.weights_sha256,
            "architecture": self.architecture,
            "settings": self.settings,
            "fit": self.fit,
            "neurons": [asdict(n) for n in self.neurons],
        }


# --------------------------------------------------------------------------------------------- model access
def hidden_layer(block: nn.Module) -> nn.Linear:
    """The MLP output layer of a block, whose input is the hidden activation (``fc2`` or SwiGLU's ``w3``: the
    model adapter's ``MLP_LAYERS``)."""
    for _, out_name in MLP_LAYERS.values():
        try:
            layer = block.get_submodule(out_name)
        except AttributeError:
            continue
        if isinstance(layer, nn.Linear):
            return layer
    mlp = getattr(block, "mlp", None)
    raise TypeError(f"{type(mlp).__name__}: not a ViT MLP (no fc2 or w3 layer); test-time registers need one")


def hidden_width(model) -> int:
    return hidden_layer(model.blocks[0]).in_features


def architecture(model) -> dict[str, Any]:
    config = getattr(model, "config", {}) or {}
    return {
        "depth": len(model.blocks),
        "embed_dim": model.embed_dim,
        "hidden_width": hidden_width(model),
        "ffn_layer": config.get("ffn_layer"),
        "num_register_tokens": model.num_register_tokens,
    }


def _resolve_block(index: int, depth: int, what: str) -> int:
    resolved = index + depth if index < 0 else index
    if not 0 <= resolved < depth:
        raise ValueError(f"{what} {index} out of range: the model has blocks 0..{depth - 1} (or -1..-{depth})")
    return resolved


def default_highest_block(depth: int) -> int:
    """Three quarters of the depth: block 17 of ViT-L's 24, the reference's setting (configs/dinov2_large.yaml
    highest_layer: 17; the reference sets no value for other depths)."""
    return max(0, round(0.75 * depth) - 1)


# --------------------------------------------------------------------------------------------- fitting
@contextlib.contextmanager
def _hooks(modules_and_hooks: Iterable[tuple[nn.Module, str, Any]]) -> Iterator[None]:
    handles = []
    try:
        for module, kind, hook in modules_and_hooks:
            register = module.register_forward_pre_hook if kind == "pre" else module.register_forward_hook
            handles.append(register(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


def outlier_mask(grid: Tensor, threshold: float | None = None, mu: float = HIGH_NORM_Z,
                 min_ratio: float = HIGH_NORM_MIN_RATIO) -> Tensor:
    """H x W mask of one image's outlier tokens: norm above ``threshold``, or the census rule without one."""
    from sinder.defects.detect import high_norm_mask

    if threshold is None:
        return high_norm_mask(grid, mu, min_ratio)
    return grid.float().norm(dim=-1) > threshold


def check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name} {value!r}: use one of {', '.join(choices)} ({choices[0]} is the reference's)")
    return value


@torch.no_grad()
def fit_register_neurons(
    model,
    batches: Iterable[Tensor],
    detection_block: int = -2,
    highest_block: int | None = None,
    top_k: int = DEFAULT_TOP_K,
    threshold: float | None = None,
    mu: float = HIGH_NORM_Z,
    min_ratio: float = HIGH_NORM_MIN_RATIO,
    selection: str = "reference",
) -> RegisterNeurons:
    """Find the register neurons of ``model`` on image batches (B x 3 x H x W, normalized).

    ``selection="reference"`` (the official ``find_register_neurons`` with ``apply_sparsity_filter=True``) needs
    ``threshold``, the token norm above which a token (class token included) is an outlier at
    ``detection_block``: the reference sets it by hand per model (150 for ViT-L). ``selection="robust_z"``
    flags the patch tokens the high-norm census flags (``threshold`` None; with one, patch tokens above it) and
    applies no sparsity filter. Two passes per batch keep memory bounded for ViT-g: the first finds the outlier
    positions at ``detection_block`` (negative: from the end), the second reads the hidden activations of blocks
    ``0..highest_block`` (default ``default_highest_block``). Per image as in the reference: a batch gives the
    same scores as its images one at a time.
    """
    check_choice("selection", selection, SELECTION_CHOICES)
    reference = selection == "reference"
    depth = len(model.blocks)
    detect = _resolve_block(detection_block, depth, "detection block")
    highest = default_highest_block(depth) if highest_block is None else _resolve_block(
        highest_block, depth, "highest block")
    if top_k < 1:
        raise ValueError(f"top_k {top_k} must be >= 1")
    if threshold is not None and not threshold > 0:
        raise ValueError(f"threshold {threshold} must be a positive token norm (or None for the robust rule)")
    if reference and threshold is None:
        raise ValueError("the reference selection needs a token norm threshold (the reference uses "
                         f"{REFERENCE_VIT_L_THRESHOLD:g} for ViT-L); or use selection robust_z")
    width = hidden_width(model)
    first_patch = num_prefix_tokens(model)
    abs_sum = torch.zeros(highest + 1, width, dtype=torch.float64)  # sum over images of per-image means
    signed_sum = torch.zeros_like(abs_sum)
    n_images = images_with_outliers = outlier_tokens = 0
    masks: Tensor | None = None  # (B, T) outlier positions of the current batch over the whole sequence
    captured: dict[int, tuple[Tensor, Tensor]] = {}

    def capture(index):
        def hook(_module, args):
            hidden = args[0].float()  # (B, T, width): every token
            weights = masks.to(hidden)  # (B, T)
            counts = weights.sum(dim=1).clamp(min=1)[:, None]
            abs_mean = torch.einsum("bt,bth->bh", weights, hidden.abs()) / counts
            if reference:  # the sparsity filter: below 0.5 on at least half of the image's tokens
                sparse = (hidden < SPARSITY_ACTIVATION).sum(dim=1) >= SPARSITY_FRACTION * hidden.shape[1]
                abs_mean = abs_mean * sparse
            captured[index] = (abs_mean, torch.einsum("bt,bth->bh", weights, hidden) / counts)

        return hook

    detected: list[Tensor] = []

    def keep_output(_module, _args, output):
        detected.append(output)

    hooks = [(hidden_layer(model.blocks[i]), "pre", capture(i)) for i in range(highest + 1)]
    for images in batches:
        detected.clear()
        with _hooks([(model.blocks[detect], "post", keep_output)]):
            model.get_intermediate_layers(images, n=[detect], norm=False)
        tokens = detected[0]  # (B, T, D) before the final norm
        if reference:  # every token, class token (and trained registers) included
            masks = tokens.float().norm(dim=-1) > threshold
        else:
            rows, cols = images.shape[-2] // model.patch_size, images.shape[-1] // model.patch_size
            grids = tokens[:, first_patch:].reshape(tokens.shape[0], rows, cols, -1)
            masks = torch.zeros(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
            masks[:, first_patch:] = torch.stack(
                [outlier_mask(g, threshold, mu, min_ratio).flatten() for g in grids])
        n_images += images.shape[0]
        has = masks.any(dim=1)
        if not has.any():
            continue
        images_with_outliers += int(has.sum())
        outlier_tokens += int(masks.sum())
        captured.clear()
        with _hooks(hooks):
            model.get_intermediate_layers(images, n=[highest], norm=False)
        for i in range(highest + 1):
            abs_mean, signed_mean = captured[i]
            abs_sum[i] += abs_mean[has].double().sum(dim=0).cpu()
            signed_sum[i] += signed_mean[has].double().sum(dim=0).cpu()
    if n_images == 0:
        raise ValueError("no images to fit test-time registers on")
    neurons: list[RegisterNeuron] = []
    if images_with_outliers:
        scores = (abs_sum / images_with_outliers).flatten()
        top = torch.topk(scores, min(top_k, scores.numel()))
        for value, flat in zip(top.values.tolist(), top.indices.tolist()):
            block, unit = divmod(flat, width)
            neurons.append(RegisterNeuron(block, unit, value, 1 if float(signed_sum[block, unit]) >= 0 else -1))
    if reference:
        rule = f"token norm > {threshold:g}, class token included (reference)"
    elif threshold is not None:
        rule = f"patch-token norm > {threshold:g}"
    else:
        rule = f"robust z-score of the patch-token norms > {mu} and >= {min_ratio} x median"
    return RegisterNeurons(
        neurons=neurons,
        backbone=getattr(model, "name", None),
        weights_sha256=getattr(model, "weights_sha256", None),
        architecture=architecture(model),
        settings={
            "selection": selection,
            "detection_block": detect,
            "highest_block": highest,
            "top_k": top_k,
            "threshold": threshold,
            "outlier_rule": rule,
            "sparsity_filter": (f"score 0 unless activation < {SPARSITY_ACTIVATION} on >= {SPARSITY_FRACTION:.0%} "
                                "of the image's tokens") if reference else None,
            "mu": mu,
            "min_ratio": min_ratio,
            "hidden_unit": "input of the MLP output layer (GELU output; SwiGLU gated product)",
        },
        fit={"n_images": n_images, "images_with_outliers": images_with_outliers,
             "outlier_tokens": outlier_tokens},
    )


# --------------------------------------------------------------------------------------------- neuron files
def save_neurons(neurons: RegisterNeurons, path: str | Path) -> None:
    atomic_write_text(path, json.dumps(neurons.to_dict(), indent=1) + "\n")


def load_neurons(path: str | Path, model=None) -> RegisterNeurons:
    """Read a neuron file; with ``model``, check it was fitted on these weights and fits the architecture."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"neuron file {path} does not exist: write one with `sinder-bench ttr fit`")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"neuron file {path} is not valid JSON ({err}): fit it again with `sinder-bench ttr fit`") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path} is not a test-time register neuron file: write one with `sinder-bench ttr fit`")
    if data.get("version") != VERSION:
        raise ValueError(f"{path}: neuron file version {data.get('version')}, this code reads {VERSION}: refit it")
    try:
        neurons = [RegisterNeuron(int(n["block"]), int(n["unit"]), float(n.get("score", 0.0)), int(n.get("sign", 1)))
                   for n in data["neurons"]]
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: malformed neuron list ({err}): fit it again with `sinder-bench ttr fit`") from None
    result = RegisterNeurons(neurons, data.get("backbone"), data.get("weights_sha256"), data.get("architecture", {}),
                             data.get("settings", {}), data.get("fit", {}))
    if model is not None:
        expected = getattr(model, "weights_sha256", None)
        if result.weights_sha256 and expected and result.weights_sha256 != expected:
            raise ValueError(
                f"{path} was fitted on weights {result.weights_sha256[:12]}, not on this backbone's "
                f"{expected[:12]}: fit the neurons on this backbone with `sinder-bench ttr fit`"
            )
        _check_neurons(model, neurons, source=str(path))
    return result


def _check_neurons(model, neurons: Sequence[RegisterNeuron], source: str = "neurons") -> None:
    depth, width = len(model.blocks), hidden_width(model)
    bad = [(n.block, n.unit) for n in neurons if not (0 <= n.block < depth and 0 <= n.unit < width)]
    if bad:
        raise ValueError(f"{source}: neurons {bad[:5]} outside this backbone's {depth} blocks x {width} hidden "
                         "units: they were fitted on another architecture")
    wrong_sign = [(n.block, n.unit) for n in neurons if n.sign not in (1, -1)]
    if wrong_sign:
        raise ValueError(f"{source}: neurons {wrong_sign[:5]} have a sign other than +1/-1")


# --------------------------------------------------------------------------------------------- inference
def _as_neurons(neurons) -> list[RegisterNeuron]:
    if isinstance(neurons, RegisterNeurons):
        return list(neurons.neurons)
    out = []
    for n in neurons:
        out.append(n if isinstance(n, RegisterNeuron) else RegisterNeuron(*(int(v) for v in n[:2]),
                                                                          sign=int(n[2]) if len(n) > 2 else 1))
    return out


class TestTimeRegisters(nn.Module):
    """A DINOv2 backbone with one test-time register; see the module docstring.

    Attributes the wrapper does not define (``blocks``, ``patch_size``, ``embed_dim``, ``weights_sha256``, ...)
    are the base model's. Only ``forward``, ``forward_features`` and ``get_intermediate_layers`` run with the
    register: code that loops over ``blocks`` itself sees the base model.
    """

    __test__ = False  # not a pytest test class despite the name

    def __init__(self, model: nn.Module, neurons, init: str = "zeros", value: str = "layer_max"):
        super().__init__()
        self.model = model
        self.init = check_choice("init", init, INIT_CHOICES)
        self.value = check_choice("value", value, VALUE_CHOICES)
        self.register_neurons = _as_neurons(neurons)
        _check_neurons(model, self.register_neurons)
        by_block: dict[int, tuple[list[int], list[int]]] = {}
        for n in self.register_neurons:
            units, signs = by_block.setdefault(n.block, ([], []))
            units.append(n.unit)
            signs.append(n.sign)
        self._by_block = {b: (torch.tensor(u), torch.tensor(s)) for b, (u, s) in by_block.items()}
        self._extra: Tensor | None = None  # the extra token between blocks during one forward pass

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["model"], name)

    # -- hooks: the extra token is put in at each block's input and split off its output, so that outside the
    # blocks the sequence (and every output built from it) is exactly the base model's. It goes right after the
    # prefix tokens (class token, trained registers; none for SigLIP), before the patches: the reference appends it
    # last, which is the same for attention (no position of its own), but RoPE (DINOv3) rotates the last
    # rows x cols tokens as the patches.
    def _block_pre(self, index: int):
        first_patch = num_prefix_tokens(self.model)

        def hook(_module, args):
            (x, *rest) = args
            if index == 0:  # the reference: zeros after the position embeddings (none of its own)
                self._extra = (x[:, first_patch:].mean(dim=1, keepdim=True) if self.init == "patch_mean"
                               else torch.zeros_like(x[:, :1]))
            return (torch.cat((x[:, :first_patch], self._extra.to(x.dtype), x[:, first_patch:]), dim=1), *rest)

        return hook

    def _block_post(self, index: int):
        first_patch = num_prefix_tokens(self.model)

        def hook(_module, _args, output: Tensor) -> Tensor:
            self._extra = output[:, first_patch : first_patch + 1]
            return torch.cat((output[:, :first_patch], output[:, first_patch + 1 :]), dim=1)

        return hook

    def _mlp_pre(self, index: int):
        first_patch = num_prefix_tokens(self.model)

        def hook(_module, args):
            (hidden, *rest) = args
            units, signs = self._by_block[index]
            units, signs = units.to(hidden.device), signs.to(hidden)
            hidden = hidden.clone()
            extra = register_values(hidden[:, :, units], signs, self.value)
            hidden[:, first_patch + 1 :, units] = 0  # the patch tokens
            hidden[:, first_patch, units] = extra
            return (hidden, *rest)

        return hook

    @property
    def num_extra_tokens(self) -> int:
        """1, or 0 without register neurons: then there is nothing to move and the model runs unchanged."""
        return 1 if self.register_neurons else 0

    @contextlib.contextmanager
    def _active(self) -> Iterator[None]:
        if not self.register_neurons:
            yield
            return
        blocks = self.model.blocks
        hooks = [(blocks[i], "pre", self._block_pre(i)) for i in range(len(blocks))]
        hooks += [(blocks[i], "post", self._block_post(i)) for i in range(len(blocks))]
        hooks += [(hidden_layer(blocks[b]), "pre", self._mlp_pre(b)) for b in sorted(self._by_block)]
        try:
            with _hooks(hooks):
                yield
        finally:
            self._extra = None

    def forward_features(self, x: Tensor, masks: Tensor | None = None):
        with self._active():
            return self.model.forward_features(x, masks)

    def get_intermediate_layers(self, x: Tensor, *args, **kwargs):
        with self._active():
            return self.model.get_intermediate_layers(x, *args, **kwargs)

    def forward(self, x: Tensor, *args, **kwargs):
        with self._active():
            return self.model(x, *args, **kwargs)

    def extra_token_output(self, x: Tensor) -> Tensor:
        """The extra token after the last block (B x D, before the final norm): where the outlier went."""
        if not self.register_neurons:
            raise ValueError("no register neurons: the model runs without an extra token")
        with self._active():
            tokens = self.model.prepare_tokens_with_masks(x)
            for block in self.model.blocks:
                tokens = block(tokens)
            return self._extra[:, 0]


def apply_test_time_registers(model: nn.Module, neurons, init: str = "zeros",
                              value: str = "layer_max") -> TestTimeRegisters:
    """``model`` with one test-time register driven by ``neurons``: a ``RegisterNeurons`` (a fitted or loaded
    neuron file), or a list of ``RegisterNeuron``s or ``(block, unit[, sign])`` tuples, blocks counted from 0.
    ``init`` and ``value`` default to the official computation (see the module docstring); ``init="patch_mean"``
    and ``value="per_unit"`` are the earlier variants. The base model is not modified."""
    return TestTimeRegisters(model, neurons, init=init, value=value)


def apply_neuron_file(model: nn.Module, path: str | Path, init: str = "zeros",
                      value: str = "layer_max") -> TestTimeRegisters:
    """``apply_test_time_registers`` with a neuron file, checked against the model's weights hash."""
    return apply_test_time_registers(model, load_neurons(path, model), init=init, value=value)


def register_values(hidden: Tensor, signs: Tensor, value: str = "layer_max") -> Tensor:
    """What the extra token gets in one block's register neurons: ``hidden`` is B x T x k (every token, the
    block's k register neurons), ``signs`` their k signs; B x k.

    ``layer_max`` (the official ``sign_max`` over ``output[0, :, neuron_indices]``): per image one scalar, the
    value of largest magnitude with its sign over all tokens and all k units (the minimum when the magnitudes
    tie), for every unit. ``per_unit``: each unit's extreme over the tokens in the direction of its sign."""
    if value == "per_unit":
        return (hidden * signs).amax(dim=1) * signs
    check_choice("value", value, VALUE_CHOICES)
    flat = hidden.flatten(1)
    high, low = flat.amax(dim=1), flat.amin(dim=1)
    extreme = torch.where(high.abs() > low.abs(), high, low)  # sign_max: pos if |pos| > |neg| else neg
    return extreme[:, None].expand(-1, hidden.shape[-1])


def deviations(settings: dict[str, Any] | None = None, init: str = "zeros", value: str = "layer_max") -> list[str]:
    """How a test-time-register model departs from the official computation (a record's ``deviations``):
    the fit's ``settings`` (a neuron file's) and the ``init``/``value`` it runs with. The two fixes of the
    official code's errors (every image of a batch edited, the patch slice) are not switches: docs/protocols.md."""
    out = []
    if init != "zeros":
        out.append(f"ttr init={init}: the extra token starts as the patch mean (reference: zeros)")
    if value != "layer_max":
        out.append(f"ttr value={value}: each register neuron gets its own extreme (reference: one value per "
                   "block, the signed largest magnitude over its neurons)")
    if settings is not None:
        selection = settings.get("selection", "robust_z")  # files written before the reference selection
        if selection != "reference":
            out.append(f"ttr selection={selection}: outliers by {settings.get('outlier_rule', 'the census rule')}, "
                       "no sparsity filter (reference: token norm > threshold, class token included, sparsity filter)")
        for key, want in (("max_images", REFERENCE_IMAGES), ("resolution", REFERENCE_RESOLUTION)):
            got = settings.get(key)
            if got is not None and got != want:
                out.append(f"ttr fit {key}={got} (reference: {want})")
    return out


def describe(neurons: RegisterNeurons) -> str:
    """A one-paragraph summary for the CLI."""
    fit, settings = neurons.fit, neurons.settings
    per_block: dict[int, int] = {}
    for n in neurons.neurons:
        per_block[n.block] = per_block.get(n.block, 0) + 1
    blocks = ", ".join(f"{b}: {c}" for b, c in sorted(per_block.items())) or "none"
    tokens = fit.get("outlier_tokens", 0) / max(fit.get("images_with_outliers", 0), 1)
    lines = [
        f"selection {settings.get('selection', 'robust_z')}: {fit.get('images_with_outliers', 0)}/"
        f"{fit.get('n_images', 0)} images have outlier tokens at block {settings.get('detection_block')} "
        f"({settings.get('outlier_rule')}), {tokens:.1f} per such image",
        f"{len(neurons.neurons)} register neurons in blocks 0..{settings.get('highest_block')} (block: count) "
        f"{blocks}",
    ]
    if neurons.neurons:
        scores = [n.score for n in neurons.neurons]
        lines.append(f"scores {max(scores):.3g} .. {min(scores):.3g}")
    else:
        lines.append("no outlier tokens found: applying this file leaves the backbone unchanged (no extra token)")
    return "\n".join(lines)
