"""``nmt attend`` end to end: a sentence, a line of a file, a forced reference, a chosen layer and head, the HTML
and SVG files, and one-line errors with exit status 2."""

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import sentencepiece as spm

from tests.helpers import Grids, random_checkpoint

PLAIN = {"COLUMNS": "100", "TERM": "dumb", "NO_COLOR": "1"}


@pytest.fixture(scope="module")
def ckpt(fixture_spm: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_checkpoint(fixture_spm, tmp_path_factory.mktemp("attend-cli") / "model.pt")


def nmt(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nmt", "attend", *args], capture_output=True, text=True, env={**os.environ, **PLAIN})


def pieces(model: Path, text: str) -> str:
    return " ".join(spm.SentencePieceProcessor(model_file=str(model)).encode(text, out_type=str))


def test_sentence_with_html_and_svg(ckpt: Path, fixture_spm: Path, tmp_path: Path) -> None:
    r = nmt(str(ckpt), "Open the file.", "--html", str(tmp_path / "out" / "page.html"), "--svg", str(tmp_path / "map.svg"))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"source: {pieces(fixture_spm, 'Open the file.')} </s>"
    assert "decoder–encoder attention, layer 2 of 2, average of the heads" in r.stdout
    assert "\x1b" not in r.stdout and "page.html" in r.stderr
    parser = Grids()
    parser.feed((tmp_path / "out" / "page.html").read_text(encoding="utf-8"))
    assert len(parser.grids) == 3 * 2 * 3 and parser.external == []
    assert ET.parse(tmp_path / "map.svg").getroot().tag == "{http://www.w3.org/2000/svg}svg"
    assert not list(tmp_path.glob("**/.*.tmp"))


def test_line_of_a_file_layer_head_and_reference(ckpt: Path, fixture_spm: Path, tmp_path: Path) -> None:
    (tmp_path / "in.en").write_text("Open the file.\nClose the window.\n", encoding="utf-8")
    r = nmt(str(ckpt), "--input", str(tmp_path / "in.en"), "--line", "2", "--layer", "1", "--head", "2", "--kind", "decoder",
            "--reference", "Schließe das Fenster.")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"source: {pieces(fixture_spm, 'Close the window.')} </s>"
    assert lines[1] == f"target: {pieces(fixture_spm, 'Schließe das Fenster.')} </s>  (forced: --reference)"
    assert lines[2] == "translation: Schließe das Fenster."
    assert "decoder self-attention (masked), layer 1 of 2, head 2 of 2" in r.stdout
    assert "search score" not in r.stdout


@pytest.mark.parametrize("args, message", [
    (["missing.pt", "Hello"], "missing.pt: checkpoint not found"),
    (["CKPT", "Hello", "--layer", "3"], "--layer 3: the decoder has layers 1 to 2"),
    (["CKPT", "--input", "IN", "--line", "5"], "--line 5: IN has lines 1 to 2"),
    (["CKPT", ""], "the source sentence is empty"),
])
def test_errors_are_one_line(ckpt: Path, tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "in.en").write_text("a\nb\n", encoding="utf-8")
    swap = {"CKPT": str(ckpt), "IN": str(tmp_path / "in.en"), "missing.pt": str(tmp_path / "missing.pt")}
    r = nmt(*[swap.get(a, a) for a in args])
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("nmt: error: ")
    assert message.replace("IN", str(tmp_path / "in.en")).replace("missing.pt", str(tmp_path / "missing.pt")) in r.stderr
