"""Tensor files in and out: read a state dict safely (safetensors first, ``.pth`` only through
``torch.load(weights_only=True)``), normalise wrapper prefixes, read shapes and metadata without the values,
fingerprint the tensors, and write safetensors deterministically and atomically.

The lowest layer of ``sinder.models``: it knows files and tensors, no architecture and no checkpoint format.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sinder.utils.atomic import atomic_path
from sinder.utils.hashing import file_sha256, new_digest

__all__ = [
    "WeightsError", "content_sha256", "file_metadata", "file_sha256", "normalize_keys", "read_state_dict",
    "save_state_dict", "state_dict_sha256", "tensor_shapes", "write_safetensors",
]


# ------------------------------------------------------------------------------------------- fingerprints
def content_sha256(state_dict: Mapping[str, Tensor]) -> str:
    """A content hash of a state dict: names (wrapper prefixes stripped), dtypes, shapes and values, by name.

    Stable across files, formats (.pth, .safetensors) and key order, unlike a file's sha256.
    """
    digest = new_digest(b"sinder-tensors-v1\n")
    state = normalize_keys(state_dict)
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{str(tensor.dtype).removeprefix('torch.')}|{tuple(tensor.shape)}\n".encode())
        if tensor.numel():
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


state_dict_sha256 = content_sha256  # the older name


# ------------------------------------------------------------------------------------------- reading
class WeightsError(ValueError):
    """A weights file that does not fit the requested architecture, or cannot be read."""


def state_bytes(state_dict: Mapping[str, Tensor]) -> int:
    """Bytes of the tensors of ``state_dict``: what a checkpoint of them takes on disk (safetensors adds a
    header of a few KiB). The one size estimate of a backbone's weights (repair, run preflight)."""
    return sum(t.numel() * t.element_size() for t in state_dict.values())


def unreadable(path: str | Path, err: BaseException) -> str:
    """One line saying why the weights file ``path`` could not be read (torch's pickle refusals span lines)."""
    import pickle

    if isinstance(err, pickle.UnpicklingError):
        return (f"cannot read weights file {path}: it holds pickled Python objects besides tensors, which are "
                "never unpickled (torch.load weights_only=True); save its state dict of tensors (or .safetensors)")
    first = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
    return f"cannot read weights file {path}: {type(err).__name__}: {first}"


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
        raise WeightsError(unreadable(path, err)) from err
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


# ------------------------------------------------------------------------------------------- metadata
def file_metadata(path: str | Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file (``{}`` for other formats); WeightsError when unreadable."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except Exception as err:
        raise WeightsError(unreadable(path, err)) from err


def tensor_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape in a weights file, without reading the values where the format allows it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                return {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
        except Exception as err:
            raise WeightsError(unreadable(path, err)) from err
    if path.suffix.lower() in {".pth", ".pt", ".bin", ".ckpt"}:
        try:  # a zip checkpoint memory-maps: shapes without reading a billion parameters
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # not a zip, or not tensors only: read_state_dict below says which, in one line
            state = None
        if state is not None:
            for wrapper in ("model", "state_dict", "teacher"):
                if isinstance(state, dict) and wrapper in state and isinstance(state[wrapper], dict):
                    state = state[wrapper]
            if isinstance(state, dict) and all(isinstance(v, Tensor) for v in state.values()):
                return {k: tuple(v.shape) for k, v in state.items()}
    return {k: tuple(v.shape) for k, v in read_state_dict(path).items()}


# ------------------------------------------------------------------------------------------- writing
_SAFETENSORS_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64",
    torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
}  # fmt: skip


def write_safetensors(tensors: Mapping[str, Tensor], path: str | Path, metadata: Mapping[str, str] | None = None):
    """Write the safetensors format deterministically: metadata and tensors in sorted order, so the same
    tensors and metadata always give the same bytes (the library's writer orders metadata at random)."""
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(metadata[k]) for k in sorted(metadata)}
    offset, order = 0, sorted(tensors)
    for key in order:
        tensor = tensors[key]
        if tensor.dtype not in _SAFETENSORS_DTYPES:
            raise WeightsError(f"tensor {key}: dtype {tensor.dtype} cannot be written as safetensors")
        size = tensor.numel() * tensor.element_size()
        header[key] = {"dtype": _SAFETENSORS_DTYPES[tensor.dtype], "shape": list(tensor.shape),
                       "data_offsets": [offset, offset + size]}  # fmt: skip
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format aligns the data to 8 bytes
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(text)))
        handle.write(text)
        for key in order:
            tensor = tensors[key].detach().cpu().contiguous()
            if tensor.numel():
                handle.write(tensor.reshape(-1).view(torch.uint8).numpy().data)  # no copy of a large tensor


def save_state_dict(
    state_dict: Mapping[str, Tensor],
    path: str | Path,
    force: bool = False,
    metadata: Mapping[str, str] | None = None,
) -> str:
    """Write a state dict atomically as safetensors (or .pth); returns the sha256 of the written file.

    An existing file is kept unless ``force``; a crash mid-write leaves the old file untouched. Safetensors
    files are byte-for-byte deterministic (sorted metadata and tensors).
    """
    path = Path(path)
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists; pass force=True (--force) to overwrite it")
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    with atomic_path(path) as tmp:
        if path.suffix.lower() == ".safetensors":
            write_safetensors(tensors, tmp, metadata)
        else:
            torch.save(tensors, tmp)
    return file_sha256(path)
