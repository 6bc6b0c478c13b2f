"""Reading parallel text (plain, gzip, SGML) and normalising it the same way at prepare and translate time."""

from __future__ import annotations

import gzip
import html
import importlib.util
import re
import unicodedata
from functools import lru_cache
from itertools import zip_longest
from pathlib import Path
from typing import Any, Iterator

from nmt.errors import NmtError

_SEG = re.compile(r"<seg[^>]*>(.*)</seg>", re.IGNORECASE)
# Control and format characters (C0/C1, zero-width, bidi marks) that Moses' remove-non-printing-char drops.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")
_SPACE = re.compile(r"\s+")


def open_text(path: Path) -> Iterator[str]:
    """Lines of a UTF-8 text file (gzip if it ends in .gz), without their newline; bad bytes are replaced."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace", newline="\n") as f:
        for line in f:
            yield line.rstrip("\r\n")


def read_sgml(path: Path) -> Iterator[str]:
    """The ``<seg>`` texts of a WMT SGML file, in order, with entities unescaped."""
    for line in open_text(path):
        if match := _SEG.search(line):
            yield html.unescape(match.group(1)).strip()


def read_side(path: Path, sgml: bool) -> Iterator[str]:
    if not path.exists():
        raise NmtError(f"{path}: file not found")
    return read_sgml(path) if sgml else open_text(path)


def read_parallel(src: Path, tgt: Path, sgml: bool = False) -> Iterator[tuple[str, str]]:
    """Pairs of aligned lines; a different number of lines on the two sides is an error naming both counts."""
    n_src = n_tgt = 0
    for a, b in zip_longest(read_side(src, sgml), read_side(tgt, sgml)):
        n_src += a is not None
        n_tgt += b is not None
        if a is None or b is None:
            continue  # keep counting to report both totals
        yield a, b
    if n_src != n_tgt:
        raise NmtError(f"{src} has {n_src} lines but {tgt} has {n_tgt}; parallel files must be line-aligned")


@lru_cache(maxsize=1)
def _moses_normalizer_class() -> type:
    """sacremoses' ``MosesPunctNormalizer``, loaded from its own module file: importing the package also
    imports its tokenizer and joblib, 0.39 s of every ``nmt translate`` (measured: 15 ms this way), and the
    normalizer's module needs neither (it imports only re, regex and itertools)."""
    spec = importlib.util.find_spec("sacremoses")  # finds the package without running its __init__
    locations = spec.submodule_search_locations if spec else None
    path = Path(locations[0]) / "normalize.py" if locations else None
    if path is not None and path.is_file():
        module_spec = importlib.util.spec_from_file_location("nmt._sacremoses_normalize", path)
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
            return module.MosesPunctNormalizer
        except (ImportError, AttributeError):  # another release's module needs its package
            pass
    from sacremoses import MosesPunctNormalizer  # an installation not readable as files, or another release

    return MosesPunctNormalizer


@lru_cache(maxsize=8)
def _moses(lang: str) -> Any:
    return _moses_normalizer_class()(lang=lang)


def normalise(text: str, lang: str) -> str:
    """Unicode NFC, Moses punctuation normalisation, control characters removed, whitespace collapsed."""
    text = unicodedata.normalize("NFC", text)
    text = _CONTROL.sub("", text)
    text = _moses(lang).normalize(text)
    return _SPACE.sub(" ", text).strip()


def head_of(corpus: Path, out: Path, counts: dict[str, int], langs: tuple[str, str] = ("en", "de")) -> Path:
    """A smaller corpus: the first ``counts[split]`` lines of each ``{split}.{lang}`` of ``corpus``, written to
    ``out`` under the same names (what the tests and the campaign's smoke mode train on)."""
    out.mkdir(parents=True, exist_ok=True)
    for split, n in counts.items():
        for lang in langs:
            lines = (corpus / f"{split}.{lang}").read_text(encoding="utf-8").splitlines()[:n]
            (out / f"{split}.{lang}").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return out
