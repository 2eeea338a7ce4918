"""Decoding of the files datasets ship (JPEG/PNG images, label and depth PNGs, .mat arrays).

Decoding failures become :class:`CorruptFileError` naming the file, and content that decodes but breaks the
layout (a colour PNG where an index PNG belongs, labels out of range) becomes :class:`MalformedFileError`.
"""

from __future__ import annotations

from collections.abc import Container
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.data.errors import CorruptFileError, MalformedFileError, MissingPathError
from benchmarks.data.specs import DatasetSpec


def _open(spec: DatasetSpec, path: Path, what: str) -> Image.Image:
    if not path.is_file():
        raise MissingPathError(spec.name, path, f"missing {what}", spec.fix_hint())
    try:
        # decode now, so a truncated file fails here and not deep inside a transform; leaving the block
        # closes the file (the decoded pixels stay)
        with Image.open(path) as image:
            image.load()
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError or zlib errors for damaged files
        raise CorruptFileError(
            spec.name,
            path,
            f"cannot decode {what} ({type(err).__name__}: {err})",
            f"re-extract this file from the official archive ({spec.url})",
        ) from err
    return image


def read_rgb(spec: DatasetSpec, path: Path) -> Image.Image:
    """The image as a decoded RGB PIL image."""
    image = _open(spec, path, "image")
    return image if image.mode == "RGB" else image.convert("RGB")


def read_label_png(spec: DatasetSpec, path: Path, modes: Container[str] = ("L", "P")) -> np.ndarray:
    """The class-index PNG as a (H, W) uint8 array (palette PNGs give their indices, not colours)."""
    image = _open(spec, path, "label PNG")
    if image.mode not in modes:
        raise MalformedFileError(
            spec.name,
            path,
            f"label PNG has mode {image.mode!r}, expected one of {sorted(modes)} (class indices)",
            "use the official annotation PNGs, not colour-rendered visualizations",
        )
    return np.asarray(image, dtype=np.uint8)


def read_depth_png(spec: DatasetSpec, path: Path) -> np.ndarray:
    """The 16-bit depth PNG as a (H, W) uint16 array of raw values (millimetres for NYU)."""
    image = _open(spec, path, "depth PNG")
    if image.mode not in ("I;16", "I;16B", "I"):
        raise MalformedFileError(
            spec.name,
            path,
            f"depth PNG has mode {image.mode!r}, expected a 16-bit single-channel PNG",
            "use the depth PNGs of the official split (sync_depth_*.png, millimetres)",
        )
    depth = np.asarray(image)
    if depth.min(initial=0) < 0 or depth.max(initial=0) > 65535:
        raise MalformedFileError(spec.name, path, "depth values outside the 16-bit range")
    return depth.astype(np.uint16)


def read_mat(spec: DatasetSpec, path: Path, key: str, what: str) -> np.ndarray:
    """Array ``key`` of a MATLAB .mat file."""
    from scipy.io import loadmat  # scipy is heavy; only Potsdam needs it

    if not path.is_file():
        raise MissingPathError(spec.name, path, f"missing {what}", spec.fix_hint())
    try:
        content = loadmat(path)
    except Exception as err:  # scipy raises ValueError/TypeError/OSError on damaged files
        raise CorruptFileError(
            spec.name,
            path,
            f"cannot read {what} ({type(err).__name__}: {err})",
            f"re-extract this file from the official archive ({spec.url})",
        ) from err
    if key not in content:
        found = sorted(k for k in content if not k.startswith("__"))
        raise MalformedFileError(
            spec.name, path, f"{what} has no array {key!r} (found {found})", spec.fix_hint()
        )
    return np.asarray(content[key])


def check_label_values(spec: DatasetSpec, path: Path, label: np.ndarray, allowed: np.ndarray) -> None:
    """Raise if ``label`` holds a value outside ``allowed`` (a boolean table indexed by value)."""
    values = np.unique(label)
    bad = values[(values < 0) | (values >= allowed.size)]
    if bad.size == 0:
        bad = values[~allowed[values]]
    if bad.size:
        raise MalformedFileError(
            spec.name,
            path,
            f"label values {bad[:8].tolist()} are outside the dataset's label set",
            "this is not an official annotation of this dataset (or it was converted to another label space)",
        )
