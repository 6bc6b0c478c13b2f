"""The page at ``/``: a text box, the translation, and its attention drawn as ``nmt attend`` draws it.

Self-contained (no network, no other file): ``nmt attend``'s style and picker script (``nmt.inspect.render``)
inlined, with this page's few additions, ``page.css`` (a phone's width) and ``page.js`` (the request). The
maps arrive from ``POST /v1/attention`` as the HTML of ``nmt attend``'s page; its picker script finds them
when ``page.js`` fires ``change`` on the kind selector.
"""

from __future__ import annotations

from importlib.resources import files

from nmt.inspect.render.page import NOTES, SCRIPT, STYLE, picker_html

PAGE_STYLE = files(__package__).joinpath("page.css").read_text(encoding="utf-8")
PAGE_SCRIPT = files(__package__).joinpath("page.js").read_text(encoding="utf-8")


def page_html(kinds: list[str], kind_names: dict[str, str]) -> str:
    """The whole page; what it shows comes from ``/health`` and ``/v1/attention`` (relative URLs, so the page
    also works behind a reverse proxy under a path prefix)."""
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">', "<title>nmt serve</title>",
        f"<style>{STYLE}\n{PAGE_STYLE}</style>", "</head>", "<body>",
        "<h1>nmt serve</h1>", '<p id="model">loading the model…</p>',
        '<form id="ask"><label for="source">Source sentence</label>',
        '<textarea id="source" rows="3" autofocus placeholder="Type a sentence; Enter translates."></textarea>',
        '<button id="go" type="submit">Translate</button></form>',
        '<p id="status" role="status"></p>',
        '<section id="result" hidden><h2>Translation</h2><p id="translation"></p><div id="facts"></div>',
        '<div id="attention">', NOTES, picker_html(kinds, kind_names),
        '<p id="info">hover or tap a cell: row token → column token: weight</p>', '<div id="maps"></div></div>',
        '<p id="note"></p></section>',
        f"<script>{SCRIPT}</script>", f"<script>{PAGE_SCRIPT}</script>", "</body>", "</html>", "",
    ])
