"""A prepared folder checked against its manifest whenever a split is opened: each shard's size and
checksum, and every id inside the vocabulary, in one pass over the memory map.

``checksum64`` is what makes this cheap enough to do at every open (WMT14 EN-FR's 5.4 GB of training
shards in about a second from the page cache; docs/robustness.md has the measurements). ``nmt prepare``
records it beside each file's SHA-256: the file's bytes as little-endian 64-bit words (the last one padded
with zeros), summed in 4 KiB blocks, block j's sum weighted by the odd number 2j + 1, all modulo 2^64.
Any change inside one block changes it (an odd weight is invertible modulo 2^64), and so, almost surely,
does a block moved elsewhere; the size, checked first, catches zeros appended. It finds accidental damage (a
failing disk, a copy cut short, a stray write), not a deliberate forgery: that is what the SHA-256 is for,
which runs at a quarter of the speed. Manifests written before ``checksum64`` existed are checked against
their SHA-256.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nmt.data.binarize import sha256
from nmt.errors import NmtError

BLOCK = 4096  # bytes summed together
CHUNK = 8 << 20  # bytes read per step: a multiple of BLOCK, small enough to stay in the cache for the id check
_WORDS = np.dtype("<u8")


@dataclass(frozen=True)
class Scan:
    """What one pass over a file found: its ``checksum64`` (16 hex digits) and, for token files, the
    smallest and largest id (None for an empty file)."""

    checksum: str
    low: int | None = None
    high: int | None = None


def _block_sums(chunk: np.ndarray, first_block: int) -> int:
    """The weighted sum of the 4 KiB blocks of ``chunk`` (uint8), the first being block ``first_block`` of
    the file, modulo 2^64 (numpy's unsigned arithmetic wraps)."""
    whole = len(chunk) - len(chunk) % BLOCK
    sums = chunk[:whole].view(_WORDS).reshape(-1, BLOCK // 8).sum(axis=1, dtype=np.uint64)
    if whole < len(chunk):  # the file's last, partial block, padded with zeros
        tail = np.zeros(BLOCK, dtype=np.uint8)
        tail[: len(chunk) - whole] = chunk[whole:]
        sums = np.append(sums, tail.view(_WORDS).sum(dtype=np.uint64))
    weights = np.arange(first_block, first_block + len(sums), dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    return int((sums * weights).sum(dtype=np.uint64))


def scan(path: Path, dtype: str | None = None) -> Scan:
    """One pass over ``path`` through a memory map: its checksum64, and with ``dtype`` (a token file whose
    size is a whole number of ids) its smallest and largest id."""
    size = path.stat().st_size
    if size == 0:
        return Scan(f"{0:016x}")
    data = np.memmap(path, dtype=np.uint8, mode="r")
    total, low, high = 0, None, None
    for start in range(0, size, CHUNK):
        chunk = data[start : start + CHUNK]
        total = (total + _block_sums(chunk, start // BLOCK)) % 2**64
        if dtype is not None:
            ids = chunk.view(dtype)
            lo, hi = int(ids.min()), int(ids.max())
            low, high = lo if low is None else min(low, lo), hi if high is None else max(high, hi)
    del data
    return Scan(f"{total:016x}", low, high)


def checksum64(path: Path) -> str:
    """The file's checksum64 (see the module's docstring), as 16 hex digits."""
    return scan(path).checksum


def prepare_again(manifest: dict[str, Any]) -> str:
    """The command that prepares the folder anew: the one the manifest records, with --force."""
    command = manifest.get("command") or f"nmt prepare {manifest.get('corpus', 'CORPUS')}"
    return command if "--force" in command.split() else f"{command} --force"


def check_file(path: Path, recorded: dict[str, Any] | None, manifest: dict[str, Any], dtype: str | None = None) -> None:
    """Compare ``path`` with what ``manifest`` records for it (its size, then its checksum64, else its
    SHA-256) and, with ``dtype``, every id with the vocabulary; a mismatch is one line naming the file and
    the command that prepares the folder again."""
    damaged = f"the prepared data is damaged; prepare it again: {prepare_again(manifest)}"
    size = path.stat().st_size
    if recorded and "bytes" in recorded and size != recorded["bytes"]:
        raise NmtError(f"{path}: {size:,} bytes, but manifest.json records {recorded['bytes']:,}; {damaged}")
    found = scan(path, dtype)
    vocab = int(manifest["vocab"]["size"])
    if found.high is not None and found.low is not None and (found.high >= vocab or found.low < 0):
        bad = found.high if found.high >= vocab else found.low
        raise NmtError(f"{path}: holds id {bad}, outside the vocabulary of {vocab:,} pieces (manifest.json); {damaged}")
    if not recorded:
        return
    if "checksum64" in recorded:
        if found.checksum != recorded["checksum64"]:
            raise NmtError(f"{path}: its checksum differs from the one manifest.json records (the file changed after nmt prepare wrote it); {damaged}")
    elif "sha256" in recorded and sha256(path) != recorded["sha256"]:
        raise NmtError(f"{path}: its SHA-256 differs from the one manifest.json records (the file changed after nmt prepare wrote it); {damaged}")


def read_checked(path: Path, manifest: dict[str, Any]) -> bytes:
    """A small file of the folder (the SentencePiece model), read and checked against its recorded SHA-256."""
    if not path.is_file():
        raise NmtError(f"{path}: file not found; prepare the folder again: {prepare_again(manifest)}")
    data = path.read_bytes()
    recorded = manifest.get("files", {}).get(path.name)
    if recorded and "sha256" in recorded and hashlib.sha256(data).hexdigest() != recorded["sha256"]:
        raise NmtError(f"{path}: its SHA-256 differs from the one manifest.json records (the file changed after nmt prepare wrote it); "
                       f"the prepared data is damaged; prepare it again: {prepare_again(manifest)}")
    return data
