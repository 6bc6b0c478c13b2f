"""Attention heatmaps drawn three ways: on the terminal (rich; plain numbers when stdout is not a terminal),
as one self-contained HTML page with a picker, and as a standalone SVG written by hand.

Nothing here knows about models: a ``Heatmap`` is a matrix of weights in [0, 1] with a label per row (the
queries) and per column (the keys). No PNG: it would need an image library, a new dependency.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from xml.sax.saxutils import escape as xml_escape

import numpy as np
from rich.color import Color
from rich.console import Group
from rich.style import Style
from rich.text import Text

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


# --------------------------------------------------------------------------------------------------- terminal


def terminal(m: Heatmap, width: int = 80) -> Group:
    """The map as rich text: columns are the keys (labels shortened to fit), rows the queries, each cell
    the weight × 100 on a colour of the scale; masked cells are '·'. Too many columns for ``width`` are cut
    into blocks printed one under the other. Without a terminal, rich drops the colours and the numbers stay."""
    row_w = max(4, min(max((len(r) for r in m.rows), default=4), 14))
    cell = max(3, min(max((len(c) for c in m.cols), default=3), 7))
    room = max(width - row_w - 1, 4)
    if len(m.cols) * (cell + 1) > room:  # narrower columns first, then blocks of columns
        cell = max(3, room // max(len(m.cols), 1) - 1)
    per_block = max(1, room // (cell + 1))
    lines: list[Text] = [Text(m.title, style="bold")]
    for start in range(0, len(m.cols), per_block):
        cols = range(start, min(start + per_block, len(m.cols)))
        if len(cols) < len(m.cols):
            lines.append(Text(f"columns {start + 1}–{cols[-1] + 1} of {len(m.cols)}", style="dim"))
        header = Text(" " * row_w, no_wrap=True)
        for j in cols:
            header.append(" " + shorten(m.cols[j], cell).rjust(cell), style="bold")
        lines.append(header)
        for i, label in enumerate(m.rows):
            line = Text(shorten(label, row_w).ljust(row_w), style="bold", no_wrap=True)
            for j in cols:
                line.append(" ")
                if m.masked[i, j]:
                    line.append("·".rjust(cell), style="dim")
                    continue
                bg = colour(m.weights[i, j], VIRIDIS)
                line.append(percent(m.weights[i, j]).rjust(cell), style=Style(color=Color.from_rgb(*ink(bg)), bgcolor=Color.from_rgb(*bg)))
            lines.append(line)
    legend = Text("scale ", style="dim")
    for w in (0.0, 0.1, 0.25, 0.5, 0.75, 1.0):
        bg = colour(w, VIRIDIS)
        legend.append(f" {percent(w)} ", style=Style(color=Color.from_rgb(*ink(bg)), bgcolor=Color.from_rgb(*bg)))
    legend.append(" cell = weight × 100, · = masked", style="dim")
    lines.append(legend)
    return Group(*lines)


# ------------------------------------------------------------------------------------------------------- HTML

_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: .2em 1em; }
dl.facts dt { font-weight: 600; } dl.facts dd { margin: 0; font-family: monospace; white-space: pre-wrap; }
#picker { position: sticky; top: 0; background: #fff; padding: .5em 0; border-bottom: 1px solid #ddd; }
#picker label { margin-right: 1.2em; }
#info { font-family: monospace; min-height: 1.4em; margin: .5em 0; }
section.grid[hidden] { display: none; }
table.map { border-collapse: collapse; font-family: monospace; font-size: 12px; }
table.map th { font-weight: normal; padding: 0 4px; }
table.map th.col { vertical-align: bottom; height: 1px; }
table.map th.col span { writing-mode: vertical-rl; transform: rotate(180deg); white-space: nowrap; }
table.map th.row { text-align: right; white-space: nowrap; }
table.map td { width: 20px; height: 20px; min-width: 20px; padding: 0; border: 1px solid #fff; }
table.map td.masked { background: repeating-linear-gradient(45deg, #f4f4f4, #f4f4f4 3px, #fff 3px, #fff 6px); }
table.map td:hover { outline: 2px solid #d62728; }
.legend span { display: inline-block; width: 2.6em; text-align: center; font-family: monospace; font-size: 12px; }
"""

_JS = """
(function () {
  const grids = Array.from(document.querySelectorAll('section.grid'));
  const pick = { kind: document.getElementById('kind'), layer: document.getElementById('layer'), head: document.getElementById('head') };
  function fill(select, values, keep) {
    select.innerHTML = '';
    for (const [value, text] of values) { const o = document.createElement('option'); o.value = value; o.textContent = text; select.appendChild(o); }
    if (values.some(([v]) => v === keep)) select.value = keep;
  }
  function update() {
    const kind = pick.kind.value;
    const mine = grids.filter(g => g.dataset.kind === kind);
    const layers = [...new Set(mine.map(g => g.dataset.layer))];
    fill(pick.layer, layers.map(l => [l, l]), pick.layer.value || layers[layers.length - 1]);
    const heads = [...new Set(mine.filter(g => g.dataset.layer === pick.layer.value).map(g => g.dataset.head))];
    fill(pick.head, heads.map(h => [h, h === 'avg' ? 'average of heads' : h]), pick.head.value || 'avg');
    for (const g of grids) g.hidden = !(g.dataset.kind === kind && g.dataset.layer === pick.layer.value && g.dataset.head === pick.head.value);
  }
  pick.kind.addEventListener('change', update);
  pick.layer.addEventListener('change', update);
  pick.head.addEventListener('change', update);
  const info = document.getElementById('info');
  document.addEventListener('mouseover', e => { if (e.target.matches('table.map td')) info.textContent = e.target.title; });
  update();
})();
"""


def _grid_html(m: Heatmap, hidden: bool) -> str:
    e = lambda s: html.escape(s, quote=True)  # noqa: E731
    out = [f'<section class="grid" data-kind="{e(m.kind)}" data-layer="{m.layer}" data-head="{"avg" if m.head is None else m.head}"'
           f'{" hidden" if hidden else ""}>', f"<h2>{e(m.title)}</h2>",
           f'<table class="map" data-rows="{len(m.rows)}" data-cols="{len(m.cols)}">',
           '<thead><tr><th></th>' + "".join(f'<th class="col"><span>{e(c)}</span></th>' for c in m.cols) + "</tr></thead><tbody>"]
    for i, row in enumerate(m.rows):
        cells = []
        for j, col in enumerate(m.cols):
            w = float(m.weights[i, j])
            tip = e(f"{row} → {col}: {w:.3f}" + (" (masked)" if m.masked[i, j] else ""))
            if m.masked[i, j]:
                cells.append(f'<td class="masked" data-w="0" title="{tip}"></td>')
            else:
                cells.append(f'<td style="background:{hex_colour(colour(w, BLUES))}" data-w="{w:.4f}" title="{tip}"></td>')
        out.append(f'<tr><th class="row">{e(row)}</th>' + "".join(cells) + "</tr>")
    out.append("</tbody></table></section>")
    return "\n".join(out)


def html_page(maps: list[Heatmap], title: str, facts: list[tuple[str, str]], kind_names: dict[str, str], notes: str = "",
              show: Heatmap | None = None) -> str:
    """One HTML page, no network and no external file: the ``facts`` (name, text) on top, a picker (attention
    kind, layer, head or their average), and every map as a table, the one like ``show`` (kind, layer, head)
    shown first, else the first); hovering a cell shows its row's and column's tokens and the weight. ``notes`` is trusted HTML."""
    e = lambda s: html.escape(s, quote=True)  # noqa: E731
    shown = show if show is not None else maps[0]
    kinds = list(dict.fromkeys(m.kind for m in maps))
    options = "".join(f'<option value="{e(k)}"{" selected" if k == shown.kind else ""}>{e(kind_names.get(k, k))}</option>' for k in kinds)
    legend = "".join(f'<span style="background:{hex_colour(colour(w, BLUES))};color:{hex_colour(ink(colour(w, BLUES)))}">{w:.2f}</span>'
                     for w in (0.0, 0.1, 0.25, 0.5, 0.75, 1.0))
    head = "avg" if shown.head is None else str(shown.head)
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">', f"<title>{e(title)}</title>",
        f"<style>{_CSS}</style>", "</head>", "<body>", f"<h1>{e(title)}</h1>",
        '<dl class="facts">' + "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in facts) + "</dl>",
        notes,
        '<div id="picker">'
        f'<label>attention <select id="kind">{options}</select></label>'
        f'<label>layer <select id="layer"><option value="{shown.layer}">{shown.layer}</option></select></label>'
        f'<label>head <select id="head"><option value="{head}">{head}</option></select></label>'
        f'<span class="legend">{legend}</span></div>',
        '<p id="info">hover a cell: row token → column token: weight</p>',
    ]
    key = lambda m: (m.kind, m.layer, m.head)  # noqa: E731
    parts += [_grid_html(m, key(m) != key(shown)) for m in maps]
    parts += [f"<script>{_JS}</script>", "</body>", "</html>", ""]
    return "\n".join(parts)


# -------------------------------------------------------------------------------------------------------- SVG


def svg(m: Heatmap, cell: int = 24, font: int = 12) -> str:
    """The map as a standalone SVG: a coloured square per cell (its weight × 100 written in it from 10 up,
    a tooltip with both tokens and the weight), key labels slanted above, query labels on the left, a scale."""
    e = lambda s: xml_escape(s, {'"': "&quot;"})  # noqa: E731
    char = 0.62 * font  # the advance of a monospace character
    slant = 0.7071  # labels at 45°
    top_len = max((len(c) for c in m.cols), default=1) * char
    left = round(8 + max((len(r) for r in m.rows), default=1) * char + 6)
    top = round(8 + font + 12 + top_len * slant + 8)
    grid_w, grid_h = len(m.cols) * cell, len(m.rows) * cell
    legend_w = 11 * 14 + 12 + len("1 (numbers: weight × 100)") * char
    width = round(max(left + grid_w + top_len * slant + 10, 16 + len(m.title) * char, left + legend_w + 8))
    height = top + grid_h + 2 * font + 14
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           f'font-family="DejaVu Sans Mono, Menlo, Consolas, monospace" font-size="{font}">',
           f"<title>{e(m.title)}</title>", f'<rect width="{width}" height="{height}" fill="#fff"/>',
           f'<text x="8" y="{8 + font}" font-weight="bold">{e(m.title)}</text>']
    for j, label in enumerate(m.cols):
        out.append(f'<text transform="translate({left + j * cell + cell // 2},{top - 6}) rotate(-45)">{e(label)}</text>')
    out.append('<g text-anchor="end">')
    for i, label in enumerate(m.rows):
        out.append(f'<text x="{left - 6}" y="{top + i * cell + cell // 2 + font // 3}">{e(label)}</text>')
    out.append("</g>")
    numbers = []
    small = max(font - 3, 7)
    for i, row in enumerate(m.rows):
        for j, col in enumerate(m.cols):
            x, y, w = left + j * cell, top + i * cell, float(m.weights[i, j])
            tip = e(f"{row} → {col}: {w:.3f}" + (" (masked)" if m.masked[i, j] else ""))
            fill = "#f4f4f4" if m.masked[i, j] else hex_colour(colour(w, BLUES))
            out.append(f'<rect x="{x}" y="{y}" width="{cell - 1}" height="{cell - 1}" fill="{fill}"><title>{tip}</title></rect>')
            if not m.masked[i, j] and w >= 0.1:
                numbers.append(f'<text x="{x + cell // 2}" y="{y + cell // 2 + small // 3}" fill="{hex_colour(ink(colour(w, BLUES)))}">{percent(w)}</text>')
    out += [f'<g font-size="{small}" text-anchor="middle" pointer-events="none">', *numbers, "</g>"]
    y = top + grid_h + 10
    steps = 10
    for k in range(steps + 1):
        out.append(f'<rect x="{left + k * 14}" y="{y}" width="14" height="{font}" fill="{hex_colour(colour(k / steps, BLUES))}"/>')
    out.append(f'<text x="{left - 6}" y="{y + font - 2}" text-anchor="end">0</text>')
    out.append(f'<text x="{left + (steps + 1) * 14 + 6}" y="{y + font - 2}">1 (numbers: weight × 100)</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
