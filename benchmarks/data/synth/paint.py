"""Learnable synthetic scenes: each class is a distinct colour with its own texture; a scene is a stack of layers
(background bands, then shapes) whose masks give the label map exactly.

Colour alone separates the classes of one dataset, so a nearest-class-mean on raw colour patches is far above
chance; the textures and noise keep the task from being a pure lookup.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Shape:
    """A shape drawn into a scene: ``label`` is the raw value written to the annotation at its pixels."""

    kind: str  # "rect" | "ellipse" | "triangle"
    label: int
    box: tuple[int, int, int, int]  # y0, x0, y1, x1 (end exclusive)
    depth: float | None = None  # metres, for depth scenes

    def mask(self, height: int, width: int) -> np.ndarray:
        y0, x0, y1, x1 = self.box
        yy, xx = np.mgrid[0:height, 0:width]
        inside = (yy >= y0) & (yy < y1) & (xx >= x0) & (xx < x1)
        if self.kind == "rect":
            return inside
        cy, cx = (y0 + y1 - 1) / 2, (x0 + x1 - 1) / 2
        ry, rx = max((y1 - y0) / 2, 0.5), max((x1 - x0) / 2, 0.5)
        if self.kind == "ellipse":
            return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        if self.kind == "triangle":  # apex at the top centre, base on the bottom edge of the box
            t = (yy - y0 + 0.5) / max(y1 - y0, 1)
            return inside & (np.abs(xx - cx) <= t * rx)
        raise ValueError(f"unknown shape kind {self.kind!r}")


def random_box(
    rng: np.random.Generator, height: int, width: int, frac: tuple[float, float], aspect=(0.6, 1.6)
):
    """A box whose sides are ``frac`` of the image's short side (times an aspect ratio), fully inside."""
    side = min(height, width) * rng.uniform(*frac)
    ratio = rng.uniform(*aspect)
    h = int(np.clip(round(side * math.sqrt(ratio)), 3, height))
    w = int(np.clip(round(side / math.sqrt(ratio)), 3, width))
    y0 = int(rng.integers(0, height - h + 1))
    x0 = int(rng.integers(0, width - w + 1))
    return y0, x0, y0 + h, x0 + w


def random_shape(
    rng, height, width, label, frac=(0.2, 0.45), kinds=("rect", "ellipse", "triangle"), aspect=(0.6, 1.6)
) -> Shape:
    return Shape(str(rng.choice(kinds)), int(label), random_box(rng, height, width, frac, aspect))


def palette(n: int) -> np.ndarray:
    """``n`` well separated RGB colours in [0, 255]: evenly spaced hues; past 8 colours, a second darker ring
    offset by half a hue step so colours adjacent in hue differ in brightness."""
    rings = 1 if n <= 8 else 2
    per_ring = math.ceil(n / rings)
    colours = []
    for k in range(n):
        ring, step = k % rings, k // rings
        hue = (step + 0.5 * ring) / per_ring
        colours.append(colorsys.hsv_to_rgb(hue, 0.85 - 0.2 * ring, 0.92 - 0.4 * ring))
    return np.asarray(colours, dtype=np.float32) * 255.0


def texture(slot: int, height: int, width: int, rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
    """A (H, W) pattern in [0, 1] that depends on the class slot: stripes, checks, dots or blotches, with a
    slot-specific period and orientation and a random phase."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    period = (5.0 + (slot * 3) % 7) * max(scale, 0.25)
    phase = rng.uniform(0, 2 * math.pi)
    kind = slot % 4
    if kind == 0:
        angle = math.radians((slot * 47) % 180)
        return 0.5 + 0.5 * np.sin(
            2 * math.pi * (xx * math.cos(angle) + yy * math.sin(angle)) / period + phase
        )
    if kind == 1:
        shift = int(rng.integers(0, max(int(period), 1)))
        return (((xx + shift) // period + (yy + shift) // period) % 2).astype(np.float32)
    if kind == 2:
        return (
            0.25
            * (1 + np.sin(2 * math.pi * xx / period + phase))
            * (1 + np.sin(2 * math.pi * yy / period + phase))
        )
    cell = max(int(period), 2)
    coarse = rng.random((height // cell + 2, width // cell + 2)).astype(np.float32)
    return np.kron(coarse, np.ones((cell, cell), np.float32))[:height, :width]


@dataclass
class Layer:
    """A region painted over the scene: with ``label`` it is drawn in that class's appearance and written to
    the label map; with ``colour`` (and label None) it is a distractor that the label map does not see."""

    mask: np.ndarray
    label: int | None
    shade: float | np.ndarray = 1.0  # brightness factor (per pixel for depth shading)
    scale: float = 1.0  # texture scale
    colour: tuple[float, float, float] | None = None


class Painter:
    """Appearance of the classes of one dataset: raw label -> colour and texture."""

    def __init__(self, labels: list[int]):
        self.labels = list(labels)
        self.slot = {label: i for i, label in enumerate(self.labels)}
        self.colours = palette(len(self.labels))

    def render(
        self,
        rng: np.random.Generator,
        height: int,
        width: int,
        layers: list[Layer],
        fill_label: int,
        noise: float = 6.0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 RGB image, int32 label map) of the layers painted in order over ``fill_label``."""
        image = np.zeros((height, width, 3), np.float32)
        label = np.full((height, width), fill_label, np.int32)
        for layer in layers:
            if layer.label is not None:
                slot = self.slot[layer.label]
                base = self.colours[slot]
                pattern = texture(slot, height, width, rng, layer.scale)
                label[layer.mask] = layer.label
            else:
                base = np.asarray(layer.colour, np.float32)
                pattern = texture(int(rng.integers(0, 16)), height, width, rng)
            region = base[None, None, :] * (0.72 + 0.36 * pattern)[..., None]
            shade = layer.shade if np.isscalar(layer.shade) else np.asarray(layer.shade)[..., None]
            image[layer.mask] = (region * shade)[layer.mask]
        image *= rng.uniform(0.9, 1.1)  # global exposure
        image += rng.normal(0.0, noise, image.shape).astype(np.float32)
        return np.clip(np.round(image), 0, 255).astype(np.uint8), label


def band_masks(height: int, width: int, ends: list[int]) -> list[np.ndarray]:
    """Horizontal bands from the top: band i covers rows [ends[i-1], ends[i])."""
    rows = np.arange(height)[:, None]
    starts = [0] + ends[:-1]
    return [np.broadcast_to((rows >= a) & (rows < b), (height, width)).copy() for a, b in zip(starts, ends)]
