"""Byte-deterministic encoders for the synthetic twins and a writer that records what it wrote.

Same arrays -> same bytes: PNG and JPEG through Pillow with fixed settings, and .mat files with the
timestamped header that scipy writes replaced by a fixed one.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

MAT_HEADER = b"MATLAB 5.0 MAT-file, Platform: sinder-bench synthetic twin".ljust(
    116
)  # scipy's reads the same


def png_bytes(array: np.ndarray, palette: list[tuple[int, int, int]] | None = None) -> bytes:
    """PNG of a uint8 (H, W) / (H, W, 3) array, a uint16 (H, W) array (16-bit), or a palette PNG."""
    if array.dtype == np.uint16:
        image = Image.fromarray(array, mode=None)  # -> "I;16", written as a 16-bit grayscale PNG
    else:
        image = Image.fromarray(np.ascontiguousarray(array.astype(np.uint8)))
    if palette is not None:
        image = image.convert("L") if image.mode != "L" else image
        image.putpalette([c for colour in palette for c in colour])  # turns mode L into P, indices unchanged
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def jpeg_bytes(array: np.ndarray, quality: int = 92) -> bytes:
    buffer = io.BytesIO()
    # 4:4:4 so small coloured shapes keep their colour up to their edges
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="JPEG", quality=quality, subsampling=0)
    return buffer.getvalue()


def mat_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    from scipy.io import savemat

    buffer = io.BytesIO()
    savemat(buffer, arrays)
    data = bytearray(buffer.getvalue())
    data[: len(MAT_HEADER)] = MAT_HEADER  # scipy puts "Created on: <time>" there
    return bytes(data)


def text_bytes(lines: list[str]) -> bytes:
    return "".join(line + "\n" for line in lines).encode()


class TreeWriter:
    """Writes files under ``root`` (a staging folder, renamed into place when complete) and lists them."""

    def __init__(self, root: Path):
        self.root = root
        self.files: list[str] = []

    def write(self, relative: str, data: bytes) -> str:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.files.append(relative)
        return relative
