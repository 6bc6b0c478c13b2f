"""nmt.data.binarize (TokenWriter) and its reader nmt.data.dataset.IndexedTokens: the memory-mapped token format."""

import hashlib
from pathlib import Path

import numpy as np
import pytest

from nmt.data.binarize import TokenWriter, sha256, token_dtype
from nmt.data.dataset import IndexedTokens
from nmt.errors import NmtError

SENTENCES = [[5, 6, 7], [], [399], [4] * 20, [8, 9]]  # an empty sentence (an empty test reference) included


def write(prefix: Path, sentences: list[list[int]], dtype: str = "uint16", batches: int = 2) -> list[Path]:
    """Write ``sentences`` in ``batches`` calls of ``add_many`` and commit."""
    writer = TokenWriter(prefix, dtype)
    arrays = [np.asarray(s, dtype=np.int32) for s in sentences]
    step = max(1, -(-len(arrays) // batches))
    for i in range(0, len(arrays), step):
        writer.add_many(arrays[i : i + step])
    writer.add_many([])  # a chunk whose pairs were all filtered
    assert writer.tokens == sum(len(s) for s in sentences)
    return writer.commit()


def hidden(folder: Path) -> list[str]:
    """Dot files in ``folder``: the temporaries TokenWriter writes before committing."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_token_dtype_follows_vocabulary_size() -> None:
    assert token_dtype(400) == "uint16"
    assert token_dtype(65536) == "uint16" and token_dtype(65537) == "int32"


def test_round_trip(tmp_path: Path) -> None:
    files = write(tmp_path / "train.en", SENTENCES)
    assert files == [tmp_path / "train.en.bin", tmp_path / "train.en.idx"]
    assert hidden(tmp_path) == []
    data = IndexedTokens(tmp_path / "train.en", "uint16")
    assert len(data) == len(SENTENCES)
    assert [data[i].tolist() for i in range(len(data))] == SENTENCES
    assert data.lengths.tolist() == [3, 0, 1, 20, 2] and data.lengths.dtype == np.int32
    # The format itself: ids back to back, n+1 int64 offsets starting at 0.
    assert (tmp_path / "train.en.bin").stat().st_size == 26 * 2
    assert np.fromfile(tmp_path / "train.en.idx", dtype=np.int64).tolist() == [0, 3, 3, 4, 24, 26]
    assert isinstance(data.tokens, np.memmap)


def test_large_ids_round_trip_as_int32(tmp_path: Path) -> None:
    big = [[70_000, 1, 2**31 - 1], [65_535]]
    write(tmp_path / "x.de", big, dtype="int32")
    data = IndexedTokens(tmp_path / "x.de", "int32")
    assert [data[i].tolist() for i in range(len(data))] == big
    assert (tmp_path / "x.de.bin").stat().st_size == 4 * 4


def test_nothing_appears_before_commit(tmp_path: Path) -> None:
    writer = TokenWriter(tmp_path / "valid.de", "uint16")
    writer.add_many([np.array([1, 2, 3])])
    assert not (tmp_path / "valid.de.bin").exists() and not (tmp_path / "valid.de.idx").exists()
    assert hidden(tmp_path) == [".valid.de.bin.tmp", ".valid.de.idx.tmp"]
    writer.commit()
    assert hidden(tmp_path) == [] and IndexedTokens(tmp_path / "valid.de", "uint16")[0].tolist() == [1, 2, 3]


def test_abort_leaves_nothing_and_keeps_an_older_version(tmp_path: Path) -> None:
    write(tmp_path / "train.en", [[1, 2]])
    before = (tmp_path / "train.en.bin").read_bytes(), (tmp_path / "train.en.idx").read_bytes()
    writer = TokenWriter(tmp_path / "train.en", "uint16")
    writer.add_many([np.array([7, 7, 7])])
    writer.abort()
    assert hidden(tmp_path) == []
    assert ((tmp_path / "train.en.bin").read_bytes(), (tmp_path / "train.en.idx").read_bytes()) == before
    fresh = TokenWriter(tmp_path / "test.de", "uint16")
    fresh.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.en.bin", "train.en.idx"]


def test_empty_split(tmp_path: Path) -> None:
    write(tmp_path / "e.en", [])
    data = IndexedTokens(tmp_path / "e.en", "uint16")
    assert len(data) == 0 and data.lengths.tolist() == []


@pytest.mark.parametrize("damage", ["bin: a whole id lost", "bin: half an id lost", "idx: last offset lost", "idx: emptied"])
def test_truncated_files_are_detected(tmp_path: Path, damage: str) -> None:
    write(tmp_path / "train.en", SENTENCES)
    bin_path, idx_path = tmp_path / "train.en.bin", tmp_path / "train.en.idx"
    cut = {"bin: a whole id lost": (bin_path, 2), "bin: half an id lost": (bin_path, 1),
           "idx: last offset lost": (idx_path, 8), "idx: emptied": (idx_path, idx_path.stat().st_size)}[damage]
    path, n = cut
    path.write_bytes(path.read_bytes()[:-n])
    with pytest.raises(NmtError) as err:
        IndexedTokens(tmp_path / "train.en", "uint16")
    assert str(err.value) == f"{bin_path}: index and data disagree (truncated file?); run nmt prepare with --force"


@pytest.mark.parametrize("missing", [".bin", ".idx"])
def test_missing_file_is_an_nmt_error(tmp_path: Path, missing: str) -> None:
    write(tmp_path / "train.en", SENTENCES)
    (tmp_path / f"train.en{missing}").unlink()
    with pytest.raises(NmtError, match=rf"^{tmp_path / ('train.en' + missing)}: file not found; run nmt prepare"):
        IndexedTokens(tmp_path / "train.en", "uint16")


def test_sha256_of_a_file(tmp_path: Path) -> None:
    data = bytes(range(256)) * 5000  # more than one 1 MiB block
    (tmp_path / "f").write_bytes(data)
    assert sha256(tmp_path / "f") == hashlib.sha256(data).hexdigest()
