"""Resolve, load, fingerprint and save backbone weights.

Loading is safe by construction: safetensors first, ``.pth``/``.pt`` only through ``torch.load(weights_only=True)``.
Every loaded model carries ``weights_sha256``, a content hash of its tensors (names, dtypes, shapes, values; the
same for the same tensors whatever the file, format or key order), so results and caches can be keyed by it, and
``weights_role``: what the weights are (an official release, a register release, a repair of base X with config
Y as the checkpoint's metadata says, a constructed test model, or any other checkpoint).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sinder.models.backbone import pretrained_config, read_preprocessor_config
from sinder.models.constructed import SYNTHETIC_BACKBONES
from sinder.models.formats import (
    HF_CONFIG,
    checkpoint_architecture,
    config_from_hf,
    detect_format,
    is_checkpoint_path,
    read_checkpoint,
    read_hf_folder_config,
)
from sinder.models.roles import Role
from sinder.models.state_io import (  # noqa: F401  (re-exported: these lived here before the split)
    WeightsError,
    content_sha256,
    file_metadata,
    file_sha256,
    normalize_keys,
    read_state_dict,
    save_state_dict,
    state_dict_sha256,
    tensor_shapes,
    write_safetensors,
)
from sinder.models.vit import PRESETS, DinoVisionTransformer, resolve_config


def official_filename(preset: str) -> str | None:
    """File name the DINOv2 hub gives an official release (``dinov2_vitg14_reg4_pretrain.pth``), else None."""
    cfg = pretrained_config(preset)
    return cfg.file if cfg else None


def official_url(preset: str) -> str | None:
    cfg = pretrained_config(preset)
    return cfg.url if cfg else None


def hub_checkpoint_dir() -> Path:
    """Where ``torch.hub`` stores downloaded checkpoints: ``$TORCH_HOME/hub/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _format_keys(keys: list[str], limit: int = 20) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def _mismatches(found: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]],
                limits: tuple[int, int, int]) -> list[str]:  # fmt: skip
    """The missing, unexpected and wrong-shape keys of a file's ``found`` shapes against the model's, one
    line each (at most ``limits`` keys shown per line); empty when they fit."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(f"{k}: file {tuple(found[k])} vs model {tuple(expected[k])}"
                   for k in set(found) & set(expected) if tuple(found[k]) != tuple(expected[k]))  # fmt: skip
    lines = [(what, keys, limit) for what, keys, limit in
             (("missing keys", missing, limits[0]), ("unexpected keys", unexpected, limits[1]),
              ("wrong shapes", wrong, limits[2])) if keys]  # fmt: skip
    return [f"{what} ({len(keys)}): {_format_keys(keys, limit)}" for what, keys, limit in lines]


def load_state_dict_strict(
    model: DinoVisionTransformer, state_dict: Mapping[str, Tensor], source: str, assign: bool = False
) -> None:
    """Load with ``strict=True``, turning any mismatch into one error listing every offending key."""
    state = normalize_keys(state_dict)
    expected = model.state_dict()
    mismatches = _mismatches({k: v.shape for k, v in state.items()}, {k: v.shape for k, v in expected.items()},
                             limits=(20, 20, 8))  # fmt: skip
    if mismatches:
        raise WeightsError(f"weights {source} do not fit the backbone architecture {_describe(model.config)}: "
                           + "; ".join(mismatches)
                           + "; check that --backbone names the architecture these weights were trained with")
    if assign:  # the model lives on the meta device: take the file's tensors as the parameters
        state = {k: v.to(expected[k].dtype if expected[k].is_floating_point() else v.dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=assign)


def _describe(cfg: Mapping[str, Any]) -> str:
    return (
        f"(embed_dim={cfg['embed_dim']}, depth={cfg['depth']}, ffn_layer={cfg['ffn_layer']}, "
        f"num_register_tokens={cfg['num_register_tokens']}, img_size={cfg['img_size']})"
    )


# How each verb takes an explicit weights file (.safetensors or .pth): quoted by every message that asks for one.
WEIGHTS_HINT = "`--backbone NAME:WEIGHTS` for run, `--weights PATH` for repair, analyze and clamp"


def resolve_weights_path(name: str) -> Path:
    """The torch-hub cache path of an official release, or a FileNotFoundError that says where to get it."""
    file = official_filename(name)
    if file is None:
        raise FileNotFoundError(
            f"backbone {name!r} has no official weights file: give one (.safetensors or .pth), {WEIGHTS_HINT}"
        )
    path = hub_checkpoint_dir() / file
    if not path.is_file():
        raise FileNotFoundError(
            f"weights for {name} not found: looked for {file} in {path.parent} (the torch hub cache, "
            f"$TORCH_HOME/hub/checkpoints). Download the official file from {official_url(name)} into that "
            f"folder, or give a weights file: {WEIGHTS_HINT}."
        )
    return path


def load_backbone(
    name_or_config: str | Path | Mapping[str, Any],
    weights: str | Path | None = None,
    device: str | torch.device = "cpu",
) -> DinoVisionTransformer:
    """Build a backbone and load its weights; the model comes back in eval mode.

    ``name_or_config``: a preset (``dinov2_vitg14``), a constructed backbone (``dinov2_tiny_defective``),
    a JSON/YAML config file, a dict, or a checkpoint that says its own architecture: a transformers folder
    (``config.json`` + ``model.safetensors``: DINOv2, CLIP, SigLIP, SigLIP 2, DINOv3), a timm folder (CLIP,
    SigLIP, DeiT-III, DINOv2, DINOv3), an OpenCLIP file or folder, or a weights file in official or timm keys
    (``sinder.models.formats`` dispatches).
    ``weights``: an explicit file (any of those formats); without it an official preset is looked up in the
    torch hub cache. The model records ``weights_sha256`` (a content hash of its tensors under official keys,
    the same whatever the file or format), ``weights_role``, ``weights_source``, ``name`` and
    ``checkpoint_format`` (the key format its weights came in, for writing a repair back in that format).
    """
    name = str(name_or_config) if isinstance(name_or_config, (str, Path)) else None
    if weights is None and name is not None and name in SYNTHETIC_BACKBONES:
        config, state = SYNTHETIC_BACKBONES[name]()
        model = DinoVisionTransformer(config)
        load_state_dict_strict(model, state, source=f"constructed {name}")
        return _finish(model, f"constructed:{name}", name, Role.constructed(name).as_dict(), device)
    named_checkpoint = name is not None and name not in PRESETS and is_checkpoint_path(name)
    # Find and read the file before building: a missing file should fail fast, even for ViT-g.
    if named_checkpoint and weights is None:
        path = Path(name)
    else:
        path = Path(weights) if weights is not None else resolve_weights_path(str(name_or_config))
    checkpoint = read_checkpoint(path)
    bad = nonfinite_keys(checkpoint.state)
    if bad:  # refused before any work: a NaN weight would give chance-level numbers or a failed SVD later
        raise WeightsError(nonfinite_message(path, bad))
    if named_checkpoint:
        config = checkpoint_config(name) if weights is not None else checkpoint_architecture(checkpoint, str(path))
    else:
        config = architecture_config(name_or_config)
    with torch.device("meta"):  # no random init of a billion parameters that the file replaces anyway
        model = DinoVisionTransformer(config)
    load_state_dict_strict(model, checkpoint.state, source=str(path), assign=True)
    label = _checkpoint_label(Path(name)) if named_checkpoint else (name or path.stem)
    model = _finish(model, str(path), label, weights_role(path, name), device)
    model.checkpoint_format = checkpoint.format
    if path.is_dir():  # a transformers folder says its own preprocessing (else describe() gives the family's)
        try:
            preprocessing = read_preprocessor_config(path, config)
        except ValueError as err:
            raise WeightsError(str(err)) from None
        if preprocessing is not None:
            model.pretrained_cfg = preprocessing
    return model


def _checkpoint_label(path: Path) -> str:
    return path.name if path.is_dir() else path.stem


def checkpoint_config(path: str | Path) -> dict[str, Any]:
    """The architecture a checkpoint (Hugging Face folder or weights file) describes."""
    path = Path(path)
    if path.is_dir() and (path / HF_CONFIG).is_file():
        hf_config = read_hf_folder_config(path)
        if "model_type" in hf_config:  # a transformers folder: its config alone says the architecture
            return config_from_hf(hf_config, str(path))
    return checkpoint_architecture(read_checkpoint(path), str(path))


def architecture_config(name_or_config: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """The architecture of a preset, constructed backbone, config file or dict."""
    if isinstance(name_or_config, (str, Path)) and str(name_or_config) in SYNTHETIC_BACKBONES:
        return dict(SYNTHETIC_BACKBONES[str(name_or_config)]()[0])
    return resolve_config(name_or_config)


def _finish(model, source: str, name: str, role: dict[str, Any], device) -> DinoVisionTransformer:
    model.weights_sha256 = content_sha256(model.state_dict())
    model.weights_source = source
    model.weights_role = role
    model.name = name
    return model.to(device).eval()


# ------------------------------------------------------------------------------------------- roles
def weights_role(path: str | Path, name: str | None) -> dict[str, Any]:
    """What a weights file is, from its metadata and provenance, never from a label (the dict form of a
    :class:`sinder.models.roles.Role`).

    - ``repair``: written by a remedy; ``sinder repair`` stores ``sinder_config`` and ``base_sha256``,
      ``sinder clamp`` stores ``clamp_gamma`` and ``source_sha256``.
    - ``official`` / ``register``: the release of preset ``name`` (``_reg`` presets are register releases),
      read from the torch hub cache or from a file under the release's official name.
    - ``other``: any other checkpoint.
    """
    meta = file_metadata(path)
    if "sinder_config" in meta:
        try:
            config = json.loads(meta["sinder_config"])
        except json.JSONDecodeError:
            config = meta["sinder_config"]
        return Role.remedied("repair", "sinder", config, meta.get("base_sha256", "")).as_dict()
    if "clamp_gamma" in meta:
        config = {"gamma": float(meta["clamp_gamma"])}
        return Role.remedied("repair", "clamp", config, meta.get("source_sha256", "")).as_dict()
    if name is not None and official_filename(name) == Path(path).name:
        return Role.release(name).as_dict()
    return Role().as_dict()


def role_key(role: Role | Mapping[str, Any] | None) -> str:
    """A short, stable text form of a role: ``official:dinov2_vitg14``, ``repair:sinder:<config>:<base>``,
    ``remedy:ttr:<config>:<base>`` (:attr:`sinder.models.roles.Role.key`)."""
    return Role.from_dict(role).key


# ------------------------------------------------------------------------------------------- preflight
def _official_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Shapes under official keys: an official file is read lazily, other formats are converted on reading."""
    path = Path(path)
    if path.is_file():
        shapes = normalize_keys(tensor_shapes(path))  # type: ignore[arg-type]
        if detect_format(shapes) == "official":  # the detection reads key names only
            return shapes
    return {k: tuple(v.shape) for k, v in read_checkpoint(path).state.items()}


def check_weights_file(name_or_config: str | Path | Mapping[str, Any], path: str | Path) -> str | None:
    """None when ``path`` opens and its keys and shapes fit the architecture, else the problem (one message)."""
    try:
        shapes = _official_shapes(path)
        with torch.device("meta"):
            expected = DinoVisionTransformer(architecture_config(name_or_config)).state_dict()
    except (OSError, ValueError) as err:
        return str(err)
    mismatches = _mismatches(shapes, {k: v.shape for k, v in expected.items()}, limits=(5, 5, 3))
    if not mismatches:
        return nonfinite_problem(path)
    return f"weights {path} do not fit {name_or_config}: " + "; ".join(mismatches)


def nonfinite_keys(state: Mapping[str, torch.Tensor]) -> list[str]:
    """The floating-point tensors of ``state`` holding a NaN or an infinity."""
    return [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def nonfinite_message(path: str | Path, keys: list[str]) -> str:
    more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
    return (f"weights {path} are not finite: NaN or infinity in {', '.join(keys[:3])}{more}; a model with such "
            "weights computes nothing meaningful (was it saved from a diverged training?)")


def nonfinite_problem(path: str | Path) -> str | None:
    """None when every floating-point tensor of the weights file ``path`` is finite, else the problem. A
    safetensors file is read one tensor at a time (memory: the largest tensor); a folder's own file is read."""
    path = Path(path)
    try:
        if path.is_file() and path.suffix.lower() == ".safetensors":
            from safetensors import safe_open

            bad = []
            with safe_open(str(path), framework="pt") as handle:
                for key in handle.keys():
                    tensor = handle.get_tensor(key)
                    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                        bad.append(key)
        else:
            bad = nonfinite_keys(read_checkpoint(path).state)
    except (OSError, ValueError) as err:
        return str(err)
    return nonfinite_message(path, bad) if bad else None


def list_backbones() -> dict[str, str]:
    """Every backbone name `load_backbone` accepts, with a one-line description."""
    out = {}
    for name, cfg in PRESETS.items():
        file = official_filename(name)
        if file is None:
            where = "no official weights: give a file as NAME:WEIGHTS (run) or --weights (other verbs)"
        elif (hub_checkpoint_dir() / file).is_file():
            where = f"official weights present ({hub_checkpoint_dir() / file})"
        else:
            where = f"official weights not downloaded ({file} into {hub_checkpoint_dir()})"
        out[name] = f"{_architecture(cfg)}; {where}"
    for name, build in SYNTHETIC_BACKBONES.items():  # built to read their architecture: tiny, about a second in all
        out[name] = f"{_architecture(build()[0])}; constructed weights (tests and smoke runs)"
    return out


def _architecture(cfg: Mapping[str, Any]) -> str:
    """``96-d x 8 blocks, swiglufused, patch 14`` (``, 4 registers`` when it has them)."""
    registers = f", {cfg['num_register_tokens']} registers" if cfg.get("num_register_tokens") else ""
    return f"{cfg['embed_dim']}-d x {cfg['depth']} blocks, {cfg['ffn_layer']}, patch {cfg['patch_size']}{registers}"
