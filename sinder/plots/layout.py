"""Text that stays readable: every text box of a figure inside its canvas and clear of every other.

``text_problems(fig)`` lists the violations as matplotlib lays the figure out (each text's drawn extent; a rotated
label is its rotated rectangle, not the axis-aligned box around it, which would "overlap" its neighbours);
``fit_text(fig)`` wraps titles too wide for their room, gives a legend too wide for the canvas fewer columns
(or, at one column, a wider canvas) and lays the figure out again. The charts of
``sinder.plots.figures`` and of the benchmark reports call ``fit_text`` before saving; the tests call
``text_problems`` on every chart a smoke report writes.
"""

from __future__ import annotations

import math
import textwrap

import numpy as np
from matplotlib.figure import Figure
from matplotlib.layout_engine import ConstrainedLayoutEngine
from matplotlib.text import Text

MARGIN_PX = 1.0  # extents are rounded to pixels: boxes touching within this are not an overlap


def _renderer(fig: Figure):
    if fig.canvas is None or not hasattr(fig.canvas, "get_renderer"):
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        FigureCanvasAgg(fig)
    fig.canvas.draw()
    return fig.canvas.get_renderer()


def visible_texts(fig: Figure) -> list[Text]:
    """Every drawn, non-empty text of ``fig``: titles, labels, tick labels, legend entries, annotations."""
    ticks, drawn = set(), []
    for ax in fig.axes:
        for axis in ax._axis_map.values():  # noqa: SLF001
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                ticks.update((id(tick.label1), id(tick.label2)))
            if ax.get_visible() and ax.axison and axis.get_visible():
                for tick in axis._update_ticks():  # noqa: SLF001  (the ticks inside the view: those drawn)
                    drawn += [label for label in (tick.label1, tick.label2) if label.get_visible()]
    found = [t for t in drawn if t.get_text().strip()]
    for artist in fig.findobj(Text):
        if id(artist) in ticks or not artist.get_visible() or not artist.get_text().strip():
            continue
        axes = artist.axes
        if axes is not None and not axes.get_visible():
            continue
        found.append(artist)
    return found


def _corners(text: Text, renderer) -> np.ndarray:
    """The 4 corners (pixels) of ``text``'s drawn rectangle: its unrotated box turned by its rotation, placed
    inside the axis-aligned extent matplotlib reports."""
    box = text.get_window_extent(renderer)
    angle = math.radians(text.get_rotation() % 180.0)
    if abs(math.sin(angle)) < 1e-6 or abs(math.cos(angle)) < 1e-6:
        return np.array([[box.x0, box.y0], [box.x1, box.y0], [box.x1, box.y1], [box.x0, box.y1]])
    rotation = text.get_rotation()
    text.set_rotation(0)
    flat = text.get_window_extent(renderer)
    text.set_rotation(rotation)
    w, h = flat.width, flat.height
    c, s = math.cos(angle), math.sin(angle)
    local = np.array([[0, 0], [w, 0], [w, h], [0, h]]) @ np.array([[c, s], [-s, c]])
    return local - local.min(axis=0) + np.array([box.x0, box.y0])


def _overlap(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two convex polygons overlap by more than ``MARGIN_PX`` (separating axis theorem)."""
    for poly in (a, b):
        for i in range(len(poly)):
            edge = poly[(i + 1) % len(poly)] - poly[i]
            axis = np.array([-edge[1], edge[0]])
            norm = np.hypot(*axis)
            if norm == 0:
                continue
            axis /= norm
            pa, pb = a @ axis, b @ axis
            if pa.max() - MARGIN_PX <= pb.min() or pb.max() - MARGIN_PX <= pa.min():
                return False
    return True


def text_problems(fig: Figure) -> list[str]:
    """One line per text leaving the canvas and per pair of texts that overlap; empty when all is readable."""
    renderer = _renderer(fig)
    width, height = fig.bbox.width, fig.bbox.height
    texts = visible_texts(fig)
    boxes = [(t, _corners(t, renderer)) for t in texts]
    problems = []
    for text, poly in boxes:
        if (poly[:, 0].min() < -MARGIN_PX or poly[:, 1].min() < -MARGIN_PX or poly[:, 0].max() > width + MARGIN_PX
                or poly[:, 1].max() > height + MARGIN_PX):  # fmt: skip
            problems.append(f"{text.get_text()!r} leaves the {width:.0f}x{height:.0f} canvas")
    for i, (a, pa) in enumerate(boxes):
        for b, pb in boxes[i + 1:]:
            if _overlap(pa, pb):
                problems.append(f"{a.get_text()!r} overlaps {b.get_text()!r}")
    return problems


def _wrap_to(text: Text, renderer, limit_px: float) -> bool:
    """Wrap ``text`` (each of its lines) until it is at most ``limit_px`` wide; whether it changed."""
    changed = False
    for _ in range(12):
        width = text.get_window_extent(renderer).width
        if width <= limit_px:
            break
        lines = text.get_text().split("\n")
        longest = max(len(line) for line in lines)
        target = max(8, int(longest * limit_px / width) - 1)
        text.set_text("\n".join(textwrap.fill(line, target) if len(line) > target else line for line in lines))
        changed = True
    return changed


def fit_text(fig: Figure, layout: bool = True, grow: bool = True) -> None:
    """Wrap every title wider than its room (an axes' title: its axes' width; the figure's: the canvas), give each
    legend wider than the canvas fewer columns (at one column: widen the canvas), and lay the figure out again
    (constrained layout at the next draw, else ``tight_layout`` when ``layout``). ``grow=False`` keeps the canvas
    size (a figure whose size is part of its contract)."""
    renderer = _renderer(fig)
    changed = False
    suptitle = fig._suptitle  # noqa: SLF001  (no public getter for the Text itself)
    if suptitle is not None and suptitle.get_text():
        changed |= _wrap_to(suptitle, renderer, fig.bbox.width * 0.96)
    for ax in fig.axes:
        if not ax.get_visible() or not ax.axison:
            continue
        for title in (ax.title, ax._left_title, ax._right_title):  # noqa: SLF001
            if title.get_text():
                changed |= _wrap_to(title, renderer, max(ax.bbox.width, fig.bbox.width * 0.3))
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    for legend in legends:  # fewer columns, then a wider canvas, until each legend fits
        for _ in range(20):
            room = fig.bbox.width * 0.98
            width = legend.get_window_extent(renderer).width
            if width <= room:
                break
            if legend._ncols > 1:  # noqa: SLF001
                legend.set_ncols(legend._ncols - 1)  # noqa: SLF001
            elif not grow:
                break
            else:
                fig.set_figwidth(fig.get_figwidth() * min(2.0, width / room + 0.02))
            changed = True
            renderer = _renderer(fig)
    if layout and not isinstance(fig.get_layout_engine(), ConstrainedLayoutEngine):  # none, or tight_layout's
        for _ in range(2):  # a wrapped title moves at the next draw: lay out again once it has
            fig.tight_layout()
            fig.canvas.draw()
    elif changed:
        fig.canvas.draw()
