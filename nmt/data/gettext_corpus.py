"""An offline parallel corpus from the gettext catalogs (.mo) installed on this machine.

English msgid → translated msgstr, one pair per message, split into train/valid/test *by catalog* so
that no catalog contributes to two splits (messages of one program resemble each other closely).
"""

from __future__ import annotations

import hashlib
import re
import site
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from nmt.errors import NmtError

_CHARSET = re.compile(r"charset=([\w.-]+)", re.IGNORECASE)
_MNEMONIC = re.compile(r"(?<![\w&_])[_&](?=\w)")
_SPACE = re.compile(r"\s+")


def read_mo(path: Path) -> Iterator[tuple[str, str]]:
    """(msgid, msgstr) pairs of a compiled catalog; context stripped, first plural form kept.

    Python's ``gettext`` refuses catalogs whose bytes do not match their declared charset; this reader
    decodes with the declared charset and replaces what does not fit, and skips unreadable files.
    """
    data = path.read_bytes()
    if len(data) < 28:
        return
    magic = struct.unpack("<I", data[:4])[0]
    order = "<" if magic == 0x950412DE else ">" if magic == 0xDE120495 else None
    if order is None:
        return
    _, count, orig_at, trans_at = struct.unpack(order + "4I", data[4:20])

    def entry(table: int, i: int) -> bytes:
        length, offset = struct.unpack(order + "2I", data[table + 8 * i : table + 8 * i + 8])
        return data[offset : offset + length]

    raw = [(entry(orig_at, i), entry(trans_at, i)) for i in range(count)]
    charset = "utf-8"
    for msgid, msgstr in raw:
        if msgid == b"" and (m := _CHARSET.search(msgstr.decode("ascii", "replace"))):
            charset = m.group(1)
    try:
        "".encode(charset)
    except LookupError:
        charset = "utf-8"
    for msgid, msgstr in raw:
        if not msgid or not msgstr:
            continue
        source = msgid.decode(charset, "replace").split("\x04")[-1].split("\x00")[0]
        target = msgstr.decode(charset, "replace").split("\x00")[0]
        yield source, target


def clean_message(text: str) -> str:
    """One line of text: whitespace collapsed, keyboard-mnemonic markers (_File, &Open) removed."""
    return _SPACE.sub(" ", _MNEMONIC.sub("", text)).strip()


def catalog_files(lang: str, roots: list[Path] | None = None) -> list[tuple[str, Path]]:
    """(catalog id, path) for every installed catalog of ``lang``: system locale folders and Python packages."""
    if roots is None:
        roots = [Path(sys.prefix) / "share/locale", Path("/usr/share/locale"), Path("/usr/local/share/locale"), Path("/usr/share/locale-langpack")]
        roots += [Path(p) for p in site.getsitepackages() + [site.getusersitepackages()]]
    found: dict[str, Path] = {}
    for root in roots:
        if not root.is_dir():
            continue
        for path in sorted(root.glob(f"**/{lang}/LC_MESSAGES/*.mo")):
            resolved = path.resolve()
            # Catalog id: the domain, qualified by the package folder for catalogs inside Python packages.
            rel = path.relative_to(root).parts
            owner = rel[0] if rel[0] != lang else "system"
            found.setdefault(f"{owner}:{path.stem}", resolved)
    return sorted(found.items())


@dataclass
class GettextSplits:
    """Pairs per split and which catalogs went where."""

    pairs: dict[str, list[tuple[str, str]]]
    catalogs: dict[str, list[str]]


def _stable_rank(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def build(src: str, tgt: str, heldout_fraction: float = 0.05, roots: list[Path] | None = None) -> GettextSplits:
    """Read, clean and deduplicate the installed ``tgt`` catalogs; split by catalog.

    Catalogs are visited in a fixed hash order; each goes to test, then valid, until that split holds
    ``heldout_fraction`` of all pairs (catalogs larger than twice that are kept for train).
    """
    if src != "en":
        raise NmtError(f"gettext corpora translate from English (msgid); got source language '{src}'")
    by_catalog: dict[str, list[tuple[str, str]]] = {}
    for name, path in catalog_files(tgt, roots):
        pairs = []
        for msgid, msgstr in read_mo(path):
            a, b = clean_message(msgid), clean_message(msgstr)
            if a and b and a != b and any(c.isalpha() for c in a):
                pairs.append((a, b))
        if pairs:
            by_catalog[name] = pairs
    total = sum(len(p) for p in by_catalog.values())
    if total == 0:
        raise NmtError(f"no installed gettext catalogs for language '{tgt}' were found (looked for */{tgt}/LC_MESSAGES/*.mo)")
    goal = heldout_fraction * total
    splits: dict[str, list[str]] = {"test": [], "valid": [], "train": []}
    sizes = {"test": 0, "valid": 0}
    for name in sorted(by_catalog, key=_stable_rank):
        n = len(by_catalog[name])
        for split in ("test", "valid"):
            if sizes[split] < goal and n <= 2 * goal:
                splits[split].append(name)
                sizes[split] += n
                break
        else:
            splits["train"].append(name)
    # Deduplicate across the corpus, held-out splits first, so no test pair also appears in train.
    seen: set[tuple[str, str]] = set()
    out: dict[str, list[tuple[str, str]]] = {}
    for split in ("test", "valid", "train"):
        out[split] = []
        for name in splits[split]:
            for pair in by_catalog[name]:
                if pair not in seen:
                    seen.add(pair)
                    out[split].append(pair)
    return GettextSplits(out, {k: sorted(v) for k, v in splits.items()})
