"""nmt.data.verify: a prepared folder checked against its manifest whenever a split is opened."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from nmt.data import verify
from nmt.data.dataset import ParallelDataset, read_vocabulary
from nmt.errors import NmtError


def checksum_by_the_formula(data: bytes) -> int:
    """checksum64 written out: zero-pad to whole 4 KiB blocks; block j's little-endian 64-bit words summed,
    weighted by 2j + 1, all modulo 2^64."""
    data += bytes(-len(data) % verify.BLOCK)
    total = 0
    for j in range(len(data) // verify.BLOCK):
        block = data[j * verify.BLOCK : (j + 1) * verify.BLOCK]
        words = sum(int.from_bytes(block[i : i + 8], "little") for i in range(0, verify.BLOCK, 8))
        total += (2 * j + 1) * words
    return total % 2**64


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 3 * verify.CHUNK // 2 + 13])  # empty, partial, whole blocks, across chunks
def test_checksum64_is_its_formula(tmp_path: Path, size: int) -> None:
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    (tmp_path / "f").write_bytes(data)
    assert verify.checksum64(tmp_path / "f") == f"{checksum_by_the_formula(data):016x}"


def test_checksum64_sees_one_changed_byte_anywhere_and_moved_blocks(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = bytearray(rng.integers(0, 256, 40 * verify.BLOCK + 100, dtype=np.uint8).tobytes())
    path = tmp_path / "f"
    path.write_bytes(data)
    original = verify.checksum64(path)
    for position in [0, 7, 4095, 4096, 128 * 1024 + 3, len(data) - 1]:  # odd weights: the top byte of a word too
        for flip in (0x01, 0x80):
            damaged = bytearray(data)
            damaged[position] ^= flip
            path.write_bytes(damaged)
            assert verify.checksum64(path) != original, (position, flip)
    swapped = bytearray(data)
    swapped[0:4096], swapped[8192:12288] = data[8192:12288], data[0:4096]
    path.write_bytes(swapped)
    assert verify.checksum64(path) != original


def test_scan_finds_the_smallest_and_largest_id(tmp_path: Path) -> None:
    ids = np.array([5, 9, 4, 65535, 7], dtype=np.uint16)
    (tmp_path / "x.bin").write_bytes(ids.tobytes())
    found = verify.scan(tmp_path / "x.bin", "uint16")
    assert (found.low, found.high) == (4, 65535) and found.checksum == verify.checksum64(tmp_path / "x.bin")


@pytest.fixture
def data(fixture_data: Path, tmp_path: Path) -> Path:
    """A copy of the prepared fixture corpus, to damage."""
    return Path(shutil.copytree(fixture_data, tmp_path / "data"))


def damage(path: Path, at: int, value: bytes) -> None:
    """Overwrite bytes in place, as a failing disk or a stray write does."""
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(value)


AGAIN = "the prepared data is damaged; prepare it again: nmt prepare local --force"


def test_ids_outside_the_vocabulary_in_a_training_shard(data: Path) -> None:
    """The issue's fault 3: ids 0xFFFF written into train.de.bin trained 10 updates without a word."""
    damage(data / "train.de.bin", 100, b"\xff\xff" * 4)
    with pytest.raises(NmtError) as err:
        ParallelDataset(data, "train")
    assert str(err.value) == f"{data / 'train.de.bin'}: holds id 65535, outside the vocabulary of 400 pieces (manifest.json); {AGAIN}"


def test_flipped_bytes_in_the_validation_shard(data: Path) -> None:
    """The issue's fault 4: a damaged dev shard ended in an IndexError traceback naming no file. Ids that stay
    inside the vocabulary (1 -> 2) are found by the checksum."""
    damage(data / "valid.en.bin", 6, (2).to_bytes(2, "little"))
    with pytest.raises(NmtError, match=rf"^{data / 'valid.en.bin'}: its checksum differs from the one manifest.json records \(the file changed after nmt prepare wrote it\); {AGAIN}$"):
        ParallelDataset(data, "valid")
    ParallelDataset(data, "train")  # the other splits open: each is checked when it is opened


def test_a_damaged_index_and_a_file_of_another_size(data: Path) -> None:
    damage(data / "train.en.idx", 16, np.array([3], dtype=np.int64).tobytes())  # offsets out of order
    with pytest.raises(NmtError, match=rf"^{data / 'train.en.idx'}: offsets out of order \(damaged index\); run nmt prepare with --force$"):
        ParallelDataset(data, "train")
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["files"]["valid.de.idx"]["bytes"] += 8  # as if the file lost its last offset and the data its last sentence
    (data / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(NmtError, match=rf"^{data / 'valid.de.idx'}: 248 bytes, but manifest.json records 256; {AGAIN}$"):
        ParallelDataset(data, "valid")


def test_manifests_written_before_checksum64_are_checked_by_sha256(data: Path) -> None:
    manifest = json.loads((data / "manifest.json").read_text())
    for info in manifest["files"].values():
        del info["checksum64"]
    (data / "manifest.json").write_text(json.dumps(manifest))
    ParallelDataset(data, "valid")
    damage(data / "valid.de.bin", 0, (5).to_bytes(2, "little"))
    with pytest.raises(NmtError, match=rf"^{data / 'valid.de.bin'}: its SHA-256 differs from the one manifest.json records"):
        ParallelDataset(data, "valid")


def test_the_vocabulary_is_checked_too(data: Path) -> None:
    manifest = json.loads((data / "manifest.json").read_text())
    assert read_vocabulary(data, manifest) == (data / "spm.model").read_bytes()
    damage(data / "spm.model", 200, b"\x00")
    with pytest.raises(NmtError, match=rf"^{data / 'spm.model'}: its SHA-256 differs from the one manifest.json records .*; {AGAIN}$"):
        read_vocabulary(data, manifest)


def test_the_command_to_prepare_again_is_the_recorded_one_with_force() -> None:
    assert verify.prepare_again({"command": "nmt prepare wmt14-en-de --workers 8"}) == "nmt prepare wmt14-en-de --workers 8 --force"
    assert verify.prepare_again({"command": "nmt prepare gettext-en-de --force"}) == "nmt prepare gettext-en-de --force"
    assert verify.prepare_again({"corpus": "wmt14-en-fr"}) == "nmt prepare wmt14-en-fr --force"
