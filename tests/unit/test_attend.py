"""``nmt attend``: the maps of a checkpoint's translation (searched, or forced with --reference) are those of
one recorded forward pass over the pair, pick a layer and head with one-line errors, and the terminal, HTML
and SVG renderings carry every map with its tokens and weights."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import torch
from rich.console import Console

from nmt import checkpoint
from nmt.data.text import normalise
from nmt.decode.translate import TranslateConfig, Translator
from nmt.errors import NmtError
from nmt.inspect.attend import KINDS, AttendConfig, compute, run
from nmt.inspect.render import Heatmap
from nmt.inspect.render.page import html_page
from nmt.inspect.render.svg import svg
from nmt.inspect.render.terminal import terminal
from nmt.tokens import BOS, EOS
from tests.helpers import Grids, random_checkpoint


# ------------------------------------------------------------------------------------------ from a checkpoint


@pytest.fixture(scope="module")
def ckpt(fixture_spm: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_checkpoint(fixture_spm, tmp_path_factory.mktemp("attend") / "model.pt")


SENTENCE = "Open the file & save it as \"<new>\"."


def test_compute_records_the_searched_translation(ckpt: Path, fixture_spm: Path) -> None:
    att = compute(ckpt, SENTENCE, device="cpu")
    translator = Translator([ckpt], TranslateConfig(device="cpu"))
    ids = translator.encode(1, SENTENCE)
    best = translator.translate_ids([ids])[0][0]
    proc = spm.SentencePieceProcessor(model_file=str(fixture_spm))
    assert att.source == [proc.id_to_piece(i) for i in ids] + ["</s>"]
    assert att.target_in == ["<s>"] + [proc.id_to_piece(i) for i in best.tokens]
    assert att.target_out == att.target_in[1:] + ["</s>"]
    assert att.translation == proc.decode(best.tokens) and att.score == best.score
    assert att.logprob == pytest.approx(best.logprob, abs=1e-4)  # the recorded pass scores what the search found
    s, t = len(att.source), len(att.target_in)
    assert att.encoder.shape == (2, 2, s, s) and att.decoder.shape == (2, 2, t, t) and att.cross.shape == (2, 2, t, s)


def test_compute_force_decodes_a_reference(ckpt: Path, fixture_spm: Path) -> None:
    reference = "Öffne die Datei – „sofort“."
    att = compute(ckpt, SENTENCE, reference=reference, device="cpu")
    proc = spm.SentencePieceProcessor(model_file=str(fixture_spm))
    ids = proc.encode(normalise(reference, "de"))
    assert att.forced and att.score is None
    assert att.target_out == [proc.id_to_piece(i) for i in ids] + ["</s>"]
    model, _ = checkpoint.load_model(ckpt)
    src = torch.tensor([proc.encode(normalise(SENTENCE, "en")) + [EOS]])
    with torch.no_grad():
        lprobs = model(src, torch.tensor([[BOS] + ids])).log_softmax(-1)[0]
    assert att.logprob == pytest.approx(lprobs.gather(1, torch.tensor(ids + [EOS])[:, None]).sum().item(), abs=1e-4)


def test_heatmap_picks_layer_and_head(ckpt: Path) -> None:
    att = compute(ckpt, SENTENCE, device="cpu")
    last = att.heatmap("cross")
    assert last.layer == 2 and last.head is None and last.rows == att.target_out and last.cols == att.source
    np.testing.assert_allclose(last.weights, att.cross[1].mean(0))
    one = att.heatmap("encoder", layer=1, head=2)
    np.testing.assert_array_equal(one.weights, att.encoder[0, 1])
    dec = att.heatmap("decoder", 1, 1)
    assert dec.rows == att.target_out and dec.cols == att.target_in
    assert dec.masked.tolist() == (~np.tril(np.ones(dec.weights.shape, dtype=bool))).tolist()
    for kind, layer, head, message in [("cross", 0, None, "--layer 0: the decoder has layers 1 to 2"),
                                       ("encoder", 3, None, "--layer 3: the encoder has layers 1 to 2"),
                                       ("cross", None, 3, "--head 3: the model has heads 1 to 2"),
                                       ("cross", None, 0, "--head 0"), ("both", None, None, "--kind must be one of")]:
        with pytest.raises(NmtError, match=re.escape(message)):
            att.heatmap(kind, layer, head)
    assert len(att.heatmaps()) == 3 * 2 * (2 + 1)


def test_run_refuses_bad_input(ckpt: Path, tmp_path: Path) -> None:
    lines = tmp_path / "in.en"
    lines.write_text("Open the file.\n\nClose it.\n", encoding="utf-8")
    (tmp_path / "empty.en").write_text("")
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    cases = [
        (AttendConfig(tmp_path / "missing.pt", "Hello"), "missing.pt: checkpoint not found"),
        (AttendConfig(ckpt), "give the source sentence, or --input FILE --line N"),
        (AttendConfig(ckpt, "Hello", input=lines), "give the source sentence, or --input FILE --line N"),
        (AttendConfig(ckpt, input=tmp_path / "nope.en"), "nope.en: file not found"),
        (AttendConfig(ckpt, input=lines, line=4), "--line 4: " + str(lines) + " has lines 1 to 3"),
        (AttendConfig(ckpt, input=lines, line=0), "--line 0"),
        (AttendConfig(ckpt, input=lines, line=2), "the source sentence is empty"),
        (AttendConfig(ckpt, input=tmp_path / "empty.en"), "empty.en: the file is empty"),
        (AttendConfig(ckpt, "  "), "the source sentence is empty"),
        (AttendConfig(ckpt, "Hello", reference=" "), "--reference is empty"),
        (AttendConfig(ckpt, "Hello", layer=5), "--layer 5"),
        (AttendConfig(ckpt, "Hello", head=9), "--head 9"),
        (AttendConfig(ckpt, "Hello", kind="self"), "--kind must be one of"),
        (AttendConfig(ckpt, "Hello", html=blocked / "page.html"), f"{blocked} is a file where a folder is needed"),
    ]
    for cfg, message in cases:
        with pytest.raises(NmtError, match=re.escape(message)):
            run(cfg, out=io.StringIO())
    assert not (blocked / "page.html").exists()


# ------------------------------------------------------------------------------------------------- rendering


def test_html_has_one_grid_per_layer_and_head_with_tokens_and_weights(ckpt: Path) -> None:
    att = compute(ckpt, SENTENCE, device="cpu")
    chosen = att.heatmap("cross")
    page = html_page(att.heatmaps(), "title", [("source", SENTENCE)], KINDS, show=chosen)
    parser = Grids()
    parser.feed(page)
    parser.close()
    assert parser.external == [] and "http" not in page and "url(" not in page and "@import" not in page
    assert parser.scripts == 1 and "<script>" in page  # inline only
    layers, heads = 2, 2
    for kind in KINDS:
        grids = [g for g in parser.grids if g["kind"] == kind]
        assert sorted((g["layer"], g["head"]) for g in grids) == sorted(
            (layer, head) for layer in range(1, layers + 1) for head in ["avg", *map(str, range(1, heads + 1))])
        rows, cols = att.labels(kind)
        for g in grids:
            assert g["rows"] == rows and g["cols"] == cols
            cells = [r for r in g["cells"] if r]  # the header row has no td
            assert len(cells) == len(rows) and all(len(r) == len(cols) for r in cells)
            head = None if g["head"] == "avg" else int(g["head"])
            expected = att.heatmap(kind, g["layer"], head).weights
            got = np.array([[float(c["data-w"]) for c in r] for r in cells])
            np.testing.assert_allclose(got, np.where(att.heatmap(kind, g["layer"], head).masked, 0, expected), atol=6e-5)
            i, j = len(rows) - 1, 0
            assert cells[i][j]["title"] == f"{rows[i]} → {cols[j]}: {expected[i, j]:.3f}"
    assert [(g["kind"], g["layer"], g["head"]) for g in parser.grids if not g["hidden"]] == [("cross", 2, "avg")]
    assert all("(masked)" in c["title"] for g in parser.grids if g["kind"] == "decoder" for c in g["cells"][1][1:])


def map_of(rows: list[str], cols: list[str], seed: int = 0) -> Heatmap:
    w = np.random.default_rng(seed).random((len(rows), len(cols)))
    w /= w.sum(1, keepdims=True)
    return Heatmap(w, rows, cols, np.zeros(w.shape, dtype=bool), "cross", 1, None, "a <title> & more")


TRICKY = ["<unk>", "&", '"q"', "</script>", "▁a'b"]


def test_html_and_svg_escape_tokens() -> None:
    m = map_of(TRICKY, TRICKY[::-1])
    page = html_page([m], "t <b>", [("source", '<x> & "y"')], {"cross": "cross"})
    parser = Grids()
    parser.feed(page)
    (g,) = parser.grids
    assert g["rows"] == TRICKY and g["cols"] == TRICKY[::-1]
    assert g["cells"][1][0]["title"] == f'<unk> → ▁a\'b: {m.weights[0, 0]:.3f}'
    assert "<unk>" not in page and "</script>" not in page.split("<script>")[0]
    root = ET.fromstring(svg(m))
    texts = ["".join(t.itertext()) for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert all(token in texts for token in TRICKY)


def test_svg_is_standalone_xml_with_a_cell_per_weight(ckpt: Path) -> None:
    att = compute(ckpt, SENTENCE, device="cpu")
    m = att.heatmap("decoder", 2, 1)
    text = svg(m)
    root = ET.fromstring(text)
    ns = "{http://www.w3.org/2000/svg}"
    assert root.tag == f"{ns}svg" and "href" not in text and "http" not in text.replace("http://www.w3.org/2000/svg", "")
    cells = [r for r in root.iter(f"{ns}rect") if r.find(f"{ns}title") is not None]
    assert len(cells) == len(m.rows) * len(m.cols)
    titles = [r.find(f"{ns}title").text for r in cells]
    assert titles[0] == f"{m.rows[0]} → {m.cols[0]}: {m.weights[0, 0]:.3f}"
    assert titles[1].endswith("(masked)")  # row 0 may not see column 1


def render_plain(m: Heatmap, width: int) -> list[str]:
    buffer = io.StringIO()
    Console(file=buffer, width=width, color_system=None, highlight=False).print(terminal(m, width), crop=False, soft_wrap=True)
    return buffer.getvalue().splitlines()


def test_terminal_map_in_plain_text() -> None:
    m = Heatmap(np.array([[1.0, 0.0], [0.25, 0.75]]), ["▁Die", "</s>"], ["▁The", "</s>"],
                np.array([[False, True], [False, False]]), "decoder", 2, 1, "title")
    lines = render_plain(m, 80)
    assert lines[0] == "title"
    assert lines[1].split() == ["▁The", "</s>"]
    assert lines[2].split() == ["▁Die", "100", "·"]
    assert lines[3].split() == ["</s>", "25", "75"]
    assert "\x1b" not in "".join(lines)  # no colour codes without a terminal


def test_terminal_map_fits_the_width_of_a_long_sentence() -> None:
    cols = [f"▁word{i}" for i in range(40)]
    m = map_of(["▁a_very_long_target_piece", "▁b"], cols)
    lines = render_plain(m, 80)
    assert all(len(line) <= 80 for line in lines)
    assert any(line.startswith("columns 1–") for line in lines) and any(line.endswith("of 40") for line in lines)
    numbers = [int(x) for line in lines if line.startswith("▁a_very_long") for x in line.split()[1:]]
    assert numbers == [int(round(100 * w)) for w in m.weights[0]]  # every column, in order, across the blocks
    assert render_plain(map_of(["▁b"], cols[:8]), 80)[1].split() == cols[:8]  # short enough: whole labels, one block


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_page_script_is_valid_javascript(tmp_path: Path) -> None:
    page = html_page([map_of(["a"], ["b"])], "t", [], {"cross": "cross"})
    (tmp_path / "page.js").write_text(page.split("<script>")[1].split("</script>")[0])
    assert subprocess.run(["node", "--check", str(tmp_path / "page.js")], capture_output=True).returncode == 0
