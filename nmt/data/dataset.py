"""Memory-mapped token arrays: the format ``nmt prepare`` writes and training reads.

For each split and language, ``{split}.{lang}.bin`` holds the token ids of all sentences back to back
(uint16 when the vocabulary fits, else int32) and ``{split}.{lang}.idx`` holds n+1 int64 offsets.
Nothing is loaded into memory but the offsets; ids are read through the memory map on access.

Opening a split checks its files against the manifest (sizes, checksums, every id inside the vocabulary:
``nmt.data.verify``), so damaged data stops a run at once, naming the file, instead of training on it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from nmt.data import verify
from nmt.errors import NmtError


class IndexedTokens:
    """Random access to the token ids of sentence ``i`` of one ``.bin``/``.idx`` pair."""

    def __init__(self, prefix: Path, dtype: str) -> None:
        self.prefix = prefix
        bin_path, idx_path = (prefix.with_suffix(prefix.suffix + ext) for ext in (".bin", ".idx"))
        for path in (bin_path, idx_path):
            if not path.exists():
                raise NmtError(f"{path}: file not found; run nmt prepare again")
        self.offsets = np.fromfile(idx_path, dtype=np.int64)
        # A file cut inside an id is truncated too (np.memmap would raise a bare ValueError on it).
        whole = bin_path.stat().st_size % np.dtype(dtype).itemsize == 0
        if bin_path.stat().st_size == 0 or not whole:
            self.tokens = np.zeros(0, dtype=dtype)
        else:
            self.tokens = np.memmap(bin_path, dtype=dtype, mode="r")
        if not whole or len(self.offsets) == 0 or self.offsets[-1] != len(self.tokens):
            raise NmtError(f"{bin_path}: index and data disagree (truncated file?); run nmt prepare with --force")
        lengths = np.diff(self.offsets)
        if self.offsets[0] != 0 or (len(lengths) and lengths.min() < 0):
            raise NmtError(f"{idx_path}: offsets out of order (damaged index); run nmt prepare with --force")
        self.lengths = lengths.astype(np.int32)
        self.files = (bin_path, idx_path)

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]


def read_vocabulary(data_dir: Path, manifest: dict) -> bytes:
    """The folder's SentencePiece model, as bytes, checked against the manifest."""
    return verify.read_checked(data_dir / manifest["vocab"].get("model", "spm.model"), manifest)


def read_manifest(data_dir: Path) -> dict:
    path = data_dir / "manifest.json"
    if not path.exists():
        raise NmtError(f"{data_dir} is not a prepared dataset (no manifest.json); create one with 'nmt prepare'")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise NmtError(f"{path}: not valid JSON ({err})") from None


def find_data(root: Path = Path("data-bin")) -> Path:
    """The one prepared corpus under ``root``, for ``nmt train`` without DATA; an error listing them otherwise."""
    found = sorted(p.parent for p in root.glob("*/manifest.json")) if root.is_dir() else []
    if len(found) == 1:
        return found[0]
    if not found:
        raise NmtError(f"no DATA given and no prepared corpus in {root}/; run 'nmt prepare CORPUS' first, or give DATA")
    raise NmtError(f"no DATA given and {root}/ holds {len(found)} prepared corpora ({', '.join(str(p) for p in found)}); name one")


class ParallelDataset:
    """(source, target) token arrays of one split of a prepared dataset, by index, through the memory map."""

    def __init__(self, data_dir: Path, split: str) -> None:
        manifest = read_manifest(data_dir)
        if split not in manifest["splits"]:
            raise NmtError(f"{data_dir}: no split '{split}' (has {', '.join(manifest['splits'])})")
        self.manifest = manifest
        self.src_lang, self.tgt_lang = manifest["src"], manifest["tgt"]
        dtype = manifest["dtype"]
        self.src = IndexedTokens(data_dir / f"{split}.{self.src_lang}", dtype)
        self.tgt = IndexedTokens(data_dir / f"{split}.{self.tgt_lang}", dtype)
        if len(self.src) != len(self.tgt):
            raise NmtError(f"{data_dir}: split '{split}' has {len(self.src)} source but {len(self.tgt)} target sentences")
        recorded = manifest.get("files", {})
        for side in (self.src, self.tgt):
            bin_path, idx_path = side.files
            verify.check_file(bin_path, recorded.get(bin_path.name), manifest, dtype)
            verify.check_file(idx_path, recorded.get(idx_path.name), manifest)

    @property
    def src_lengths(self) -> np.ndarray:
        return self.src.lengths

    @property
    def tgt_lengths(self) -> np.ndarray:
        return self.tgt.lengths

    def __len__(self) -> int:
        return len(self.src)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.src[i], self.tgt[i]
