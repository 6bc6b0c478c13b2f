"""An attention map as rich text on the terminal (plain numbers when stdout is not a terminal)."""

from __future__ import annotations

from rich.color import Color
from rich.console import Group
from rich.style import Style
from rich.text import Text

from nmt.inspect.render import VIRIDIS, Heatmap, colour, ink, percent, shorten


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
