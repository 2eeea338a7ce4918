"""Resolve, load, fingerprint and save backbone weights.

Loading is safe by construction: safetensors first, ``.pth``/``.pt`` only through ``torch.load(weights_only=True)``.
Every loaded model carries the sha256 of the weights it was built from, so results and caches can be keyed by it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .atomic import atomic_path
from .vit import PRESETS, DinoVisionTransformer, build_vit, resolve_config

OFFICIAL_URL = "https://dl.fbaipublicfiles.com/dinov2/{arch}/{file}"


def official_filename(preset: str) -> str | None:
    """File name the DINOv2 hub gives an official release (``dinov2_vitg14_reg4_pretrain.pth``), else None."""
    match = re.fullmatch(r"dinov2_vit([sblg])14(_reg)?", preset)
    if not match:
        return None
    return f"dinov2_vit{match.group(1)}14{'_reg4' if match.group(2) else ''}_pretrain.pth"


def official_url(preset: str) -> str | None:
    file = official_filename(preset)
    return OFFICIAL_URL.format(arch=preset.removesuffix("_reg"), file=file) if file else None


def hub_checkpoint_dir() -> Path:
    """Where ``torch.hub`` stores downloaded checkpoints: ``$TORCH_HOME/hub/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints"


# Backbones whose weights are constructed, not downloaded (tests and smoke runs). Each entry maps a name to
# a function returning (config, state_dict); registered by the module that knows how to build them.
SYNTHETIC_BACKBONES: dict[str, Callable[[], tuple[dict[str, Any], dict[str, Tensor]]]] = {}


def register_synthetic_backbone(name: str):
    def decorator(fn):
        SYNTHETIC_BACKBONES[name] = fn
        return fn

    return decorator


def _random_tiny(name: str):
    def build():
        model = build_vit(name, seed=0)
        return dict(model.config), model.state_dict()

    return build


for _name in ("dinov2_tiny", "dinov2_tiny_swiglu", "dinov2_tiny_reg"):
    SYNTHETIC_BACKBONES[f"{_name}_random"] = _random_tiny(_name)


def _load_synthetic_modules() -> None:
    # Modules that register constructed backbones; optional so that a partial checkout still works.
    try:
        import sinder.defective_model  # noqa: F401
    except ModuleNotFoundError as err:
        if err.name != "sinder.defective_model":
            raise


# ------------------------------------------------------------------------------------------- fingerprints
def file_sha256(path: str | Path, chunk_size: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def state_dict_sha256(state_dict: Mapping[str, Tensor]) -> str:
    """A content hash of a state dict: names, dtypes, shapes and values, in sorted key order."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------- reading
class WeightsError(ValueError):
    """A weights file that does not fit the requested architecture, or cannot be read."""


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict from ``.safetensors`` or (safely) from a ``.pth``/``.pt`` pickle."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        elif suffix in {".pth", ".pt", ".bin", ".ckpt"}:
            state = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise WeightsError(f"{path}: unknown weights format {suffix!r}; use .safetensors or .pth")
    except WeightsError:
        raise
    except Exception as err:  # corrupt or truncated file, or a pickle that is not plain tensors
        raise WeightsError(f"cannot read weights file {path}: {type(err).__name__}: {err}") from err
    # Training checkpoints wrap the weights; official releases are a flat dict.
    for wrapper in ("model", "state_dict", "teacher"):
        if isinstance(state, dict) and wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsError(f"{path}: expected a mapping of parameter names to tensors")
    return state


_PREFIXES = ("module.", "model.", "backbone.", "teacher.backbone.", "encoder.")


def normalize_keys(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Strip wrapper prefixes and flatten chunked blocks (``blocks.<chunk>.<i>.``) to ``blocks.<i>.``."""
    state = dict(state_dict)
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
    chunked = re.compile(r"^blocks\.\d+\.(\d+)\.(.*)$")
    if any(chunked.match(k) for k in state):
        state = {(f"blocks.{m.group(1)}.{m.group(2)}" if (m := chunked.match(k)) else k): v for k, v in state.items()}
    return state


def _format_keys(keys: list[str], limit: int = 20) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_state_dict_strict(
    model: DinoVisionTransformer, state_dict: Mapping[str, Tensor], source: str, assign: bool = False
) -> None:
    """Load with ``strict=True``, turning any mismatch into one error listing every offending key."""
    state = normalize_keys(state_dict)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(state) & set(expected)
        if state[k].shape != expected[k].shape
    )
    if missing or unexpected or wrong_shape:
        parts = [f"weights {source} do not fit the backbone architecture {_describe(model.config)}:"]
        if missing:
            parts.append(f"  missing keys ({len(missing)}): {_format_keys(missing)}")
        if unexpected:
            parts.append(f"  unexpected keys ({len(unexpected)}): {_format_keys(unexpected)}")
        if wrong_shape:
            parts.append(f"  wrong shapes ({len(wrong_shape)}): {_format_keys(wrong_shape, 8)}")
        parts.append("  check that --backbone names the architecture these weights were trained with.")
        raise WeightsError("\n".join(parts))
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
    a JSON/YAML config file or a dict. ``weights``: an explicit file; without it an official preset is
    looked up in the torch hub cache. The model records ``weights_sha256``, ``weights_source`` and ``name``.
    """
    name = str(name_or_config) if isinstance(name_or_config, (str, Path)) else None
    if weights is None and name is not None:
        _load_synthetic_modules()
        if name in SYNTHETIC_BACKBONES:
            config, state = SYNTHETIC_BACKBONES[name]()
            model = DinoVisionTransformer(config)
            load_state_dict_strict(model, state, source=f"constructed {name}")
            return _finish(model, state_dict_sha256(model.state_dict()), f"constructed:{name}", name, device)
    # Find and read the file before building: a missing file should fail fast, even for ViT-g.
    path = Path(weights) if weights is not None else resolve_weights_path(str(name_or_config))
    state = read_state_dict(path)
    if name in SYNTHETIC_BACKBONES:  # a constructed backbone's architecture with weights from a file
        config = SYNTHETIC_BACKBONES[name]()[0]
    else:
        config = resolve_config(name_or_config)
    with torch.device("meta"):  # no random init of a billion parameters that the file replaces anyway
        model = DinoVisionTransformer(config)
    load_state_dict_strict(model, state, source=str(path), assign=True)
    return _finish(model, file_sha256(path), str(path), name or path.stem, device)


def _finish(model, sha256: str, source: str, name: str, device) -> DinoVisionTransformer:
    model.weights_sha256 = sha256
    model.weights_source = source
    model.name = name
    return model.to(device).eval()


# ------------------------------------------------------------------------------------------- writing
def save_state_dict(
    state_dict: Mapping[str, Tensor],
    path: str | Path,
    force: bool = False,
    metadata: Mapping[str, str] | None = None,
) -> str:
    """Write a state dict atomically as safetensors (or .pth); returns the sha256 of the written file.

    An existing file is kept unless ``force``; a crash mid-write leaves the old file untouched.
    """
    path = Path(path)
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists; pass force=True (--force) to overwrite it")
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    with atomic_path(path) as tmp:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import save_file

            save_file(tensors, tmp, metadata=dict(metadata or {}))
        else:
            torch.save(tensors, tmp)
    return file_sha256(path)


def list_backbones() -> dict[str, str]:
    """Every backbone name `load_backbone` accepts, with a one-line description."""
    _load_synthetic_modules()
    out = {}
    for name, cfg in PRESETS.items():
        file = official_filename(name)
        if file is None:
            where = "no official weights: give a file as NAME:WEIGHTS (run) or --weights (other verbs)"
        elif (hub_checkpoint_dir() / file).is_file():
            where = f"official weights present ({hub_checkpoint_dir() / file})"
        else:
            where = f"official weights not downloaded ({file} into {hub_checkpoint_dir()})"
        registers = f", {cfg['num_register_tokens']} registers" if cfg["num_register_tokens"] else ""
        out[name] = f"{cfg['embed_dim']}-d x {cfg['depth']} blocks, {cfg['ffn_layer']}{registers}; {where}"
    for name in SYNTHETIC_BACKBONES:
        out[name] = "constructed weights (tests and smoke runs)"
    return out
