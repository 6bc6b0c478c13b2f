"""Attention heatmaps drawn three ways: on the terminal (``terminal``: rich; plain numbers when stdout is not a
terminal), as one self-contained HTML page with a picker (``page``), and as a standalone SVG written by
hand (``svg``). This module holds what the three share: the map, the colour scales, the labels.

Nothing here knows about models: a ``Heatmap`` is a matrix of weights in [0, 1] with a label per row (the
queries) and per column (the keys). No PNG: it would need an image library, a new dependency.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

import numpy as np

# Colour scales, as (position, RGB) stops: viridis on the terminal (legible on a dark or a light background),
# ColorBrewer's Blues on pages (zero is white, so only what the model attends to stands out).
VIRIDIS = [(0.0, (68, 1, 84)), (0.25, (59, 82, 139)), (0.5, (33, 145, 140)), (0.75, (94, 201, 98)), (1.0, (253, 231, 37))]
BLUES = [(0.0, (247, 251, 255)), (0.125, (222, 235, 247)), (0.25, (198, 219, 239)), (0.375, (158, 202, 225)),
         (0.5, (107, 174, 214)), (0.625, (66, 146, 198)), (0.75, (33, 113, 181)), (0.875, (8, 81, 156)), (1.0, (8, 48, 107))]


@dataclass(frozen=True)
class Heatmap:
    """One attention map: ``weights[i, j]`` is how much query ``rows[i]`` attends to key ``cols[j]``."""

    weights: np.ndarray  # (len(rows), len(cols)), each row summing to 1 over the keys it may attend
    rows: list[str]
    cols: list[str]
    masked: np.ndarray  # bool, like weights: keys the query may not attend (drawn blank, not as 0)
    kind: str  # "encoder", "decoder" or "cross"
    layer: int  # from 1
    head: int | None  # from 1; None: the average of the heads
    title: str

    def __post_init__(self) -> None:
        if self.weights.shape != (len(self.rows), len(self.cols)) or self.masked.shape != self.weights.shape:
            raise ValueError(f"weights {self.weights.shape} do not match {len(self.rows)} rows × {len(self.cols)} columns")


def colour(t: float, stops: list[tuple[float, tuple[int, int, int]]]) -> tuple[int, int, int]:
    """The scale's colour at ``t`` in [0, 1], interpolated linearly between stops."""
    t = min(max(float(t), 0.0), 1.0)
    for (a, ca), (b, cb) in zip(stops, stops[1:]):
        if t <= b:
            f = (t - a) / (b - a)
            return tuple(round(x + f * (y - x)) for x, y in zip(ca, cb))  # type: ignore[return-value]
    return stops[-1][1]


def hex_colour(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def ink(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever reads better on ``rgb``."""
    r, g, b = rgb
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


def shorten(label: str, width: int) -> str:
    return label if len(label) <= width else label[: max(width - 1, 0)] + "…"


def percent(w: float) -> str:
    return str(int(round(100 * float(w))))


def escape(text: str) -> str:
    """``text`` for HTML and SVG (XML) alike, in content and in quoted attributes."""
    return html.escape(text, quote=True)


def tooltip(m: Heatmap, i: int, j: int) -> str:
    """What hovering cell (i, j) says: both tokens and the weight (unescaped)."""
    return f"{m.rows[i]} → {m.cols[j]}: {float(m.weights[i, j]):.3f}" + (" (masked)" if m.masked[i, j] else "")
