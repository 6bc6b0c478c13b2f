"""nmt.data.text: reading parallel text (plain, gzip, SGML) and the normalisation shared by prepare and translate."""

import gzip
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

from nmt.data.text import normalise, open_text, read_parallel, read_sgml
from nmt.errors import NmtError


def lines(path: Path) -> list[str]:
    """The lines of a UTF-8 file."""
    return path.read_text(encoding="utf-8").splitlines()


@pytest.mark.parametrize("text, lang, expected", [
    ("Zuletzt geo\u0308ffnet", "de", "Zuletzt geöffnet"),  # NFD → NFC
    ("a\u200bb\u200ec\ufeffd\x07e\x7ff\x85g", "en", "abcdefg"),  # zero-width, bidi, BOM, C0 and C1 controls
    ("  Press  Enter\tto\u00a0continue.  ", "en", "Press Enter to continue."),  # whitespace collapsed and stripped
    ("Line one\r\nline two", "en", "Line one line two"),
    ("Die Datei „%s“ wurde nicht gefunden.", "de", 'Die Datei "%s" wurde nicht gefunden.'),
    ("The file “%s” was not found.", "en", 'The file "%s" was not found.'),
    ("Loading…", "en", "Loading..."),
    ("Don’t ask again", "en", "Don't ask again"),
    ("Press «OK» – or not", "en", 'Press "OK" - or not'),
    ('"Hello," he said.', "de", '"Hello", he said.'),  # Moses moves the comma out of the quotes, except for English
    ('"Hello," he said.', "en", '"Hello," he said.'),
    ("Akku bei 15 %", "de", "Akku bei 15%"),
    ("{0} files (%d%%), %1$s", "en", "{0} files (%d%%), %1$s"),  # placeholders untouched
    ("Drag-and-drop an e-mail", "en", "Drag-and-drop an e-mail"),
    ("\t \u200b ", "en", ""),
])
def test_normalise(text: str, lang: str, expected: str) -> None:
    assert normalise(text, lang) == expected


def test_normalise_on_the_fixture_is_clean_and_idempotent(fixture_dir: Path) -> None:
    for split in ("train", "dev", "test"):
        for lang in ("en", "de"):
            for line in lines(fixture_dir / f"{split}.{lang}"):
                out = normalise(line, lang)
                assert out == unicodedata.normalize("NFC", out)
                assert "\t" not in out and "  " not in out and out == out.strip()
                assert not set(out) & set("„“”’…")
                assert normalise(out, lang) == out  # translate-time text may already be normalised


def test_normalise_is_sacremoses_punctuation_normalizer_without_importing_the_package(fixture_dir: Path) -> None:
    """The normalizer is loaded from sacremoses' own module file (the package's import costs 0.39 s of every
    nmt translate): it normalises every fixture line as the package's MosesPunctNormalizer does, and
    normalising does not import the package."""
    from sacremoses import MosesPunctNormalizer

    from nmt.data.text import _moses

    for lang in ("en", "de"):
        reference = MosesPunctNormalizer(lang=lang)
        for line in lines(fixture_dir / f"train.{lang}")[:300] + ["Press «OK» – or not…", '"Hello," he said.']:
            assert _moses(lang).normalize(line) == reference.normalize(line)
    probe = "from nmt.data.text import normalise; normalise('a «b»', 'de'); import sys; print('sacremoses' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_read_parallel_yields_aligned_pairs(fixture_dir: Path) -> None:
    pairs = list(read_parallel(fixture_dir / "train.en", fixture_dir / "train.de"))
    assert len(pairs) == 241
    assert pairs == list(zip(lines(fixture_dir / "train.en"), lines(fixture_dir / "train.de")))
    assert ("File", "Datei") in pairs and ("Cancel", "Abbrechen") in pairs
    assert ("Name:\tValue", "Name:\tWert") in pairs  # read untouched; normalising is a separate step
    assert ("Experimental features", "") in pairs  # empty lines are pairs too


@pytest.mark.parametrize("n_src, n_tgt", [(5, 2), (2, 5)])  # both totals, not where they part
def test_line_count_mismatch_names_both_files_and_counts(tmp_path: Path, n_src: int, n_tgt: int) -> None:
    src, tgt = tmp_path / "t.en", tmp_path / "t.de"
    src.write_text("".join(f"s{i}\n" for i in range(n_src)))
    tgt.write_text("".join(f"t{i}\n" for i in range(n_tgt)))
    with pytest.raises(NmtError) as err:
        list(read_parallel(src, tgt))
    assert str(err.value) == f"{src} has {n_src} lines but {tgt} has {n_tgt}; parallel files must be line-aligned"


def test_missing_side_is_a_one_line_error(tmp_path: Path, fixture_dir: Path) -> None:
    with pytest.raises(NmtError, match=rf"^{tmp_path / 'none.de'}: file not found$"):
        list(read_parallel(fixture_dir / "dev.en", tmp_path / "none.de"))


def test_gzip_input_reads_like_plain(tmp_path: Path, fixture_dir: Path) -> None:
    for lang in ("en", "de"):
        with gzip.open(tmp_path / f"dev.{lang}.gz", "wb") as f:
            f.write((fixture_dir / f"dev.{lang}").read_bytes())
    assert list(read_parallel(tmp_path / "dev.en.gz", tmp_path / "dev.de.gz")) == \
        list(read_parallel(fixture_dir / "dev.en", fixture_dir / "dev.de"))


def test_open_text_strips_newlines_and_replaces_bad_bytes(tmp_path: Path) -> None:
    path = tmp_path / "odd.txt"
    path.write_bytes(b"crlf line\r\nbad \xff byte\nlast without newline")
    assert list(open_text(path)) == ["crlf line", "bad \ufffd byte", "last without newline"]


SGML = """<srcset setid="newstest2014" srclang="any">
<doc sysid="ref" docid="1012-bbc" genre="news" origlang="en">
<p>
<seg id="1">Caf&eacute; &amp; Bar: &quot;Open&quot; &lt;24h&gt;</seg>
<seg id="2"> Spaces around </seg>
</p>
<seg id="3">It&#39;s 5 o&#x27;clock</seg>
</doc>
</srcset>
"""


def test_sgml_reads_segments_with_entities(tmp_path: Path) -> None:
    path = tmp_path / "newstest.sgm"
    path.write_text(SGML, encoding="utf-8")
    assert list(read_sgml(path)) == ['Café & Bar: "Open" <24h>', "Spaces around", "It's 5 o'clock"]
    de = tmp_path / "newstest.de.sgm"
    de.write_text(SGML.replace("Caf&eacute;", "Kaffee"), encoding="utf-8")
    pairs = list(read_parallel(path, de, sgml=True))
    assert pairs[0] == ('Café & Bar: "Open" <24h>', 'Kaffee & Bar: "Open" <24h>') and len(pairs) == 3
