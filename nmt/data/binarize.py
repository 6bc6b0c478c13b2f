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
        with atomic.os_faults(self.final[0]):
            self.bin = open(self.tmp[0], "wb")
            self.idx = open(self.tmp[1], "wb")
        self.offset = 0
        self.tokens = 0
        with atomic.os_faults(self.final[1]):
            self.idx.write(np.zeros(1, dtype=np.int64))

    def add_many(self, sentences: list[np.ndarray]) -> None:
        """Append ``sentences``; an OS fault (a full disk) is one line naming the file (``abort`` then
        removes the temporaries)."""
        if not sentences:
            return
        lengths = np.fromiter((len(s) for s in sentences), dtype=np.int64, count=len(sentences))
        # file.write, not ndarray.tofile: tofile reports a failed write without its errno.
        with atomic.os_faults(self.final[0]):
            self.bin.write(np.concatenate(sentences).astype(self.dtype, copy=False))
        with atomic.os_faults(self.final[1]):
            self.idx.write(self.offset + np.cumsum(lengths))
        self.offset += int(lengths.sum())
        self.tokens = self.offset

    def commit(self) -> list[Path]:
        for f, final in zip((self.bin, self.idx), self.final):
            with atomic.os_faults(final):
                f.close()  # flushes the last block: where a full disk may show
        for tmp, final in zip(self.tmp, self.final):
            with atomic.os_faults(final):
                atomic.commit(tmp, final, durable=True)
        return self.final

    def abort(self) -> None:
        for f in (self.bin, self.idx):
            try:
                f.close()
            except OSError:
                pass  # its buffer could not be flushed (a full disk): the file goes anyway
        for tmp in self.tmp:
            atomic.discard(tmp)


def sha256(path: Path) -> str:
    """Hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
