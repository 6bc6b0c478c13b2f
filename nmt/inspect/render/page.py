"""Attention maps as one self-contained HTML page: every map as a table of coloured cells, a picker for the
attention kind, layer and head, the tokens and weight of a cell on hover. Its style and script are the
files ``page.css`` and ``page.js`` beside this module, inlined, so the page needs no network and no other file."""

from __future__ import annotations

from importlib.resources import files

from nmt.inspect.render import BLUES, Heatmap, colour, escape, hex_colour, ink, tooltip

# The three attentions of a Transformer, by the names ``nmt attend --kind`` takes.
KINDS = {"cross": "decoder–encoder attention", "encoder": "encoder self-attention", "decoder": "decoder self-attention (masked)"}

# What the maps of a page show, said above them.
NOTES = """<p>Rows are queries, columns keys: a row shows how one position spread its attention, and sums to 1.
Decoder rows are labelled by the token their position predicts; the position reads the token before it
(<code>&lt;s&gt;</code> first), so in the masked self-attention a row reaches the tokens already written and no
further. Weights are those of one teacher-forced forward pass over the source and the target shown.</p>"""

STYLE = files(__package__).joinpath("page.css").read_text(encoding="utf-8")
SCRIPT = files(__package__).joinpath("page.js").read_text(encoding="utf-8")


def _grid_html(m: Heatmap, hidden: bool) -> str:
    e = escape
    out = [f'<section class="grid" data-kind="{e(m.kind)}" data-layer="{m.layer}" data-head="{"avg" if m.head is None else m.head}"'
           f'{" hidden" if hidden else ""}>', f"<h2>{e(m.title)}</h2>",
           f'<table class="map" data-rows="{len(m.rows)}" data-cols="{len(m.cols)}">',
           '<thead><tr><th></th>' + "".join(f'<th class="col"><span>{e(c)}</span></th>' for c in m.cols) + "</tr></thead><tbody>"]
    for i, row in enumerate(m.rows):
        cells = []
        for j in range(len(m.cols)):
            w = float(m.weights[i, j])
            tip = e(tooltip(m, i, j))
            if m.masked[i, j]:
                cells.append(f'<td class="masked" data-w="0" title="{tip}"></td>')
            else:
                cells.append(f'<td style="background:{hex_colour(colour(w, BLUES))}" data-w="{w:.4f}" title="{tip}"></td>')
        out.append(f'<tr><th class="row">{e(row)}</th>' + "".join(cells) + "</tr>")
    out.append("</tbody></table></section>")
    return "\n".join(out)


def facts_html(facts: list[tuple[str, str]]) -> str:
    """The (name, text) pairs as the page's definition list."""
    e = escape
    return '<dl class="facts">' + "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in facts) + "</dl>"


def picker_html(kinds: list[str], kind_names: dict[str, str], shown: Heatmap | None = None) -> str:
    """The picker of attention kind, layer and head, with the colour legend; ``page.js`` fills the layers and
    heads from the maps present, so a page can put its maps in later (``nmt serve``)."""
    e = escape
    kind = shown.kind if shown is not None else kinds[0]
    options = "".join(f'<option value="{e(k)}"{" selected" if k == kind else ""}>{e(kind_names.get(k, k))}</option>' for k in kinds)
    legend = "".join(f'<span style="background:{hex_colour(colour(w, BLUES))};color:{hex_colour(ink(colour(w, BLUES)))}">{w:.2f}</span>'
                     for w in (0.0, 0.1, 0.25, 0.5, 0.75, 1.0))
    layer = "" if shown is None else f'<option value="{shown.layer}">{shown.layer}</option>'
    head = "" if shown is None else f'<option value="{"avg" if shown.head is None else shown.head}">{"avg" if shown.head is None else shown.head}</option>'
    return ('<div id="picker">'
            f'<label>attention <select id="kind">{options}</select></label>'
            f'<label>layer <select id="layer">{layer}</select></label>'
            f'<label>head <select id="head">{head}</select></label>'
            f'<span class="legend">{legend}</span></div>')


def grids_html(maps: list[Heatmap], show: Heatmap | None = None) -> str:
    """Every map as a table, all hidden but the one like ``show`` (kind, layer, head), else the first."""
    shown = show if show is not None else maps[0]
    key = lambda m: (m.kind, m.layer, m.head)  # noqa: E731
    return "\n".join(_grid_html(m, key(m) != key(shown)) for m in maps)


def html_page(maps: list[Heatmap], title: str, facts: list[tuple[str, str]], kind_names: dict[str, str], notes: str = "",
              show: Heatmap | None = None) -> str:
    """One HTML page, no network and no external file: the ``facts`` (name, text) on top, a picker (attention
    kind, layer, head or their average), and every map as a table, the one like ``show`` (kind, layer, head)
    shown first, else the first); hovering a cell shows its row's and column's tokens and the weight. ``notes`` is trusted HTML."""
    e = escape
    shown = show if show is not None else maps[0]
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">', f"<title>{e(title)}</title>",
        f"<style>{STYLE}</style>", "</head>", "<body>", f"<h1>{e(title)}</h1>",
        facts_html(facts), notes, picker_html(list(dict.fromkeys(m.kind for m in maps)), kind_names, shown),
        '<p id="info">hover a cell: row token → column token: weight</p>', grids_html(maps, shown),
        f"<script>{SCRIPT}</script>", "</body>", "</html>", "",
    ]
    return "\n".join(parts)
