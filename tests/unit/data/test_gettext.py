"""nmt.data.gettext_corpus: reading compiled catalogs (.mo), cleaning messages, splitting by catalog.

The catalogs are written here, in the layout of GNU msgfmt (and Python's Tools/i18n/msgfmt.py), into
temporary folders passed as ``roots``: the machine's installed catalogs are never read.
"""

import gettext
import struct
from pathlib import Path

import pytest

from nmt.data.gettext_corpus import build, catalog_files, clean_message, read_mo
from nmt.errors import NmtError

Messages = list[tuple[str, str]]


def write_mo(path: Path, messages: Messages, charset: str = "UTF-8", big_endian: bool = False,
             encoding: str | None = None) -> Path:
    """A compiled catalog of ``messages`` (msgid, msgstr), with a header declaring ``charset``; the text is
    encoded in ``encoding`` (by default the declared charset).

    msgids with a context are ``ctx\\x04id``; plural forms are joined by ``\\x00`` (as in a .mo file).
    """
    header = f"Content-Type: text/plain; charset={charset}\nPlural-Forms: nplurals=2; plural=(n != 1);\n"
    entries = sorted([("", header), *messages])  # msgfmt sorts by msgid
    ids = [m.encode(encoding or charset) for m, _ in entries]
    strs = [s.encode(encoding or charset) for _, s in entries]
    order = ">" if big_endian else "<"
    n = len(entries)
    orig_at, trans_at = 28, 28 + 8 * n
    data_at = trans_at + 8 * n
    table_o, table_t, blob = [], [], b""
    for raw in ids:
        table_o += [len(raw), data_at + len(blob)]
        blob += raw + b"\x00"
    for raw in strs:
        table_t += [len(raw), data_at + len(blob)]
        blob += raw + b"\x00"
    head = struct.pack(order + "7I", 0x950412DE, 0, n, orig_at, trans_at, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(head + struct.pack(order + f"{2 * n}I", *table_o) + struct.pack(order + f"{2 * n}I", *table_t) + blob)
    return path


SAMPLE: Messages = [
    ("_File", "_Datei"),
    ("&Open…", "Ö&ffnen …"),
    ("menu\x04Quit", "Beenden"),  # with a context
    ("%d file\x00%d files", "%d Datei\x00%d Dateien"),  # plural forms
    ("Untranslated", ""),
    ("Size", "Größe"),
]


def test_the_helper_writes_catalogs_python_can_read(tmp_path: Path) -> None:
    # Cross-check of write_mo itself against the standard library's reader.
    with open(write_mo(tmp_path / "x.mo", SAMPLE), "rb") as f:
        t = gettext.GNUTranslations(f)
    assert t.gettext("Size") == "Größe"
    assert t.pgettext("menu", "Quit") == "Beenden"
    assert t.ngettext("%d file", "%d files", 2) == "%d Dateien"


@pytest.mark.parametrize("big_endian", [False, True])
def test_read_mo(tmp_path: Path, big_endian: bool) -> None:
    pairs = list(read_mo(write_mo(tmp_path / "x.mo", SAMPLE, big_endian=big_endian)))
    assert sorted(pairs) == sorted([
        ("%d file", "%d Datei"),  # the first plural form of each side
        ("&Open…", "Ö&ffnen …"),
        ("Quit", "Beenden"),  # context stripped
        ("Size", "Größe"),
        ("_File", "_Datei"),
    ])  # the header and the untranslated message are left out


def test_read_mo_decodes_the_declared_charset(tmp_path: Path) -> None:
    path = write_mo(tmp_path / "latin.mo", [("Size", "Größe"), ("Close", "Schließen")], charset="ISO-8859-1")
    assert "Größe".encode("latin-1") in path.read_bytes()  # really not UTF-8 on disk
    assert sorted(read_mo(path)) == [("Close", "Schließen"), ("Size", "Größe")]


def test_read_mo_survives_bad_bytes_and_unknown_charsets(tmp_path: Path) -> None:
    # Bytes that are not valid in the declared charset are replaced, not fatal (Python's gettext refuses them).
    latin_as_utf8 = write_mo(tmp_path / "bad.mo", [("Size", "Größe")], charset="UTF-8", encoding="latin-1")
    assert list(read_mo(latin_as_utf8)) == [("Size", "Gr\ufffd\ufffde")]
    unknown = write_mo(tmp_path / "unknown.mo", [("Size", "Größe")], charset="x-no-such-charset", encoding="utf-8")
    assert list(read_mo(unknown)) == [("Size", "Größe")]  # falls back to UTF-8


@pytest.mark.parametrize("content", [b"", b"\xde\x12\x04", b"not a catalog at all, just some text"])
def test_read_mo_skips_files_that_are_not_catalogs(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "x.mo").write_bytes(content)
    assert list(read_mo(tmp_path / "x.mo")) == []


@pytest.mark.parametrize("text, expected", [
    ("_File", "File"),
    ("&Open…", "Open…"),
    ("Ö&ffnen …", "Ö&ffnen …"),  # inside a word a marker cannot be told from R&D or snake_case: kept
    ("Save &As", "Save As"),
    ("snake_case and R&D", "snake_case and R&D"),
    ("Tom & Jerry && co", "Tom & Jerry && co"),
    ("  Line one\n\tline two  ", "Line one line two"),
    ("", ""),
])
def test_clean_message(text: str, expected: str) -> None:
    assert clean_message(text) == expected


def catalogs(root: Path, lang: str, sizes: dict[str, int], package: str | None = None) -> None:
    """Catalogs named after ``sizes`` with that many distinct messages, under ``root`` in the system layout
    (``root/LANG/LC_MESSAGES``), or inside a Python package folder when ``package`` is given."""
    base = root / package / "locale" if package else root
    for name, n in sizes.items():
        write_mo(base / lang / "LC_MESSAGES" / f"{name}.mo", [(f"{name} message {i}", f"{name} Meldung {i}") for i in range(n)])


def test_catalog_files_names_and_roots(tmp_path: Path) -> None:
    catalogs(tmp_path / "sys", "de", {"coreutils": 1, "gedit": 1})
    catalogs(tmp_path / "site", "de", {"messages": 1}, package="babel")
    catalogs(tmp_path / "sys", "fr", {"coreutils": 1})
    found = catalog_files("de", [tmp_path / "sys", tmp_path / "site", tmp_path / "missing"])
    assert [name for name, _ in found] == ["babel:messages", "system:coreutils", "system:gedit"]
    assert all(path.is_absolute() and "/de/LC_MESSAGES/" in str(path) for _, path in found)
    # The same catalog reached from two roots is counted once.
    assert len(catalog_files("de", [tmp_path / "sys", tmp_path / "sys"])) == 2


def test_build_splits_by_catalog(tmp_path: Path) -> None:
    sizes = {f"small{i}": 10 for i in range(10)} | {"big": 50}
    catalogs(tmp_path, "de", sizes)
    # 150 pairs, held-out goal 15 each: two small catalogs for test, two for valid; 'big' (> 2 × goal) trains.
    splits = build("en", "de", heldout_fraction=0.1, roots=[tmp_path])
    cats = splits.catalogs
    assert len(cats["test"]) == 2 and len(cats["valid"]) == 2 and len(cats["train"]) == 7
    assert "system:big" in cats["train"]
    assert sorted(cats["test"] + cats["valid"] + cats["train"]) == sorted(f"system:{n}" for n in sizes)
    assert not set(cats["test"]) & set(cats["valid"]) and not set(cats["train"]) & set(cats["test"] + cats["valid"])
    for split, names in cats.items():
        owners = {pair[0].split()[0] for pair in splits.pairs[split]}
        assert owners == {n.split(":")[1] for n in names}  # every pair comes from its split's catalogs
    assert len(splits.pairs["test"]) == 20 and len(splits.pairs["valid"]) == 20 and len(splits.pairs["train"]) == 50 + 6 * 10
    # Catalogs are visited in the order of the SHA-256 of their ids, the same on every machine and run, so a
    # catalog's split never changes; pinned here: small6, (big: too large), small1 → test; small7, small4 → valid.
    assert (cats["test"], cats["valid"]) == (["system:small1", "system:small6"], ["system:small4", "system:small7"])
    assert build("en", "de", heldout_fraction=0.1, roots=[tmp_path]) == splits


def test_build_cleans_filters_and_deduplicates(tmp_path: Path) -> None:
    shared = ("Close window", "Fenster schließen")
    for i in range(6):
        messages = [(f"Message {i}-{k}", f"Meldung {i}-{k}") for k in range(5)] + [shared]
        if i == 0:
            messages += [("_Save", "_Speichern"), ("OK", "OK"), ("%s: %d", "%s: %d"), ("Empty", "")]
        write_mo(tmp_path / "de" / "LC_MESSAGES" / f"app{i}.mo", messages)
    splits = build("en", "de", heldout_fraction=0.15, roots=[tmp_path])
    everything = [p for pairs in splits.pairs.values() for p in pairs]
    assert ("Save", "Speichern") in everything  # mnemonics removed
    assert ("OK", "OK") not in everything  # identical source and target
    assert all(not a.startswith("%s") for a, _ in everything)  # no letter in the source
    assert everything.count(shared) == 1  # once in the whole corpus...
    held_out = splits.pairs["test"] + splits.pairs["valid"]
    assert shared in held_out  # ... in the first split that has it, held-out splits before train
    assert len(everything) == 6 * 5 + 1 + 1


def test_build_errors(tmp_path: Path) -> None:
    with pytest.raises(NmtError, match="gettext corpora translate from English .*got source language 'de'"):
        build("de", "en", roots=[tmp_path])
    catalogs(tmp_path, "fr", {"app": 3})
    with pytest.raises(NmtError, match=r"no installed gettext catalogs for language 'de' were found \(looked for \*/de/LC_MESSAGES/\*\.mo\)"):
        build("en", "de", roots=[tmp_path])
