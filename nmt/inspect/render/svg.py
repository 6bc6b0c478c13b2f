"""An attention map as a standalone SVG, written by hand (no plotting library)."""

from __future__ import annotations

from nmt.inspect.render import BLUES, Heatmap, colour, escape, hex_colour, ink, percent, tooltip


def svg(m: Heatmap, cell: int = 24, font: int = 12) -> str:
    """The map as a standalone SVG: a coloured square per cell (its weight × 100 written in it from 10 up,
    a tooltip with both tokens and the weight), key labels slanted above, query labels on the left, a scale."""
    e = escape
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
    for i in range(len(m.rows)):
        for j in range(len(m.cols)):
            x, y, w = left + j * cell, top + i * cell, float(m.weights[i, j])
            tip = e(tooltip(m, i, j))
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
