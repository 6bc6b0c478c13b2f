"""Writing the memory-mapped token format (see nmt.data.dataset) without holding a corpus in memory."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from nmt import atomic


def token_dtype(vocab_size: int) -> str:
    """uint16 ids when the vocabulary fits in them (half the disk and page cache), else int32."""
    return "uint16" if vocab_size <= np.iinfo(np.uint16).max + 1 else "int32"


class TokenWriter:
    """Appends sentences to ``prefix.bin``/``prefix.idx`` under temporary names; ``commit`` renames them."""

    def __init__(self, prefix: Path, dtype: str) -> None:
        self.final = [prefix.with_suffix(prefix.suffix + ext) for ext in (".bin", ".idx")]
        self.tmp = [atomic.temporary(p) for p in self.final]
        self.dtype = np.dtype(dtype)
        self.bin = open(self.tmp[0], "wb")
        self.idx = open(self.tmp[1], "wb")
        self.offset = 0
        self.tokens = 0
        np.array([0], dtype=np.int64).tofile(self.idx)

    def add_many(self, sentences: list[np.ndarray]) -> None:
        if not sentences:
            return
        lengths = np.fromiter((len(s) for s in sentences), dtype=np.int64, count=len(sentences))
        np.concatenate(sentences).astype(self.dtype, copy=False).tofile(self.bin)
        (self.offset + np.cumsum(lengths)).tofile(self.idx)
        self.offset += int(lengths.sum())
        self.tokens = self.offset

    def commit(self) -> list[Path]:
        for f in (self.bin, self.idx):
            f.close()
        for tmp, final in zip(self.tmp, self.final):
            atomic.commit(tmp, final, durable=True)
        return self.final

    def abort(self) -> None:
        for f in (self.bin, self.idx):
            f.close()
        for tmp in self.tmp:
            atomic.discard(tmp)


def sha256(path: Path) -> str:
    """Hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
