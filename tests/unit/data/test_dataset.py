"""nmt.data.dataset.ParallelDataset: the splits of a prepared folder, read through the memory map."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

from nmt.data.dataset import ParallelDataset, read_manifest
from nmt.data.text import normalise
from nmt.errors import NmtError


def test_splits_hold_the_normalised_text(fixture_data: Path, fixture_dir: Path) -> None:
    proc = spm.SentencePieceProcessor(model_file=str(fixture_data / "spm.model"))
    manifest = json.loads((fixture_data / "manifest.json").read_text())
    for split, name in (("valid", "dev"), ("test", "test")):  # nothing is filtered out of these two
        data = ParallelDataset(fixture_data, split)
        en = (fixture_dir / f"{name}.en").read_text(encoding="utf-8").splitlines()
        de = (fixture_dir / f"{name}.de").read_text(encoding="utf-8").splitlines()
        assert len(data) == len(en) == manifest["splits"][split]["pairs"]
        assert (data.src_lang, data.tgt_lang) == ("en", "de")
        for i in range(len(data)):
            src, tgt = data[i]
            assert proc.decode(src.tolist()) == normalise(en[i], "en")
            assert proc.decode(tgt.tolist()) == normalise(de[i], "de")
        assert data.src_lengths.tolist() == [len(data[i][0]) for i in range(len(data))]
        assert data.tgt_lengths.tolist() == [len(data[i][1]) for i in range(len(data))]
        assert int(data.src_lengths.sum()) == manifest["splits"][split]["src_tokens"]


def test_ids_are_read_through_the_memory_map(fixture_data: Path) -> None:
    data = ParallelDataset(fixture_data, "train")
    assert isinstance(data.src.tokens, np.memmap) and data.src.tokens.dtype == np.uint16
    assert data.manifest["dtype"] == "uint16"
    assert all(0 < len(data[i][0]) and 0 < len(data[i][1]) for i in range(len(data)))  # no empty training pair


def test_no_manifest(tmp_path: Path) -> None:
    with pytest.raises(NmtError, match=rf"^{tmp_path} is not a prepared dataset \(no manifest.json\); create one with 'nmt prepare'$"):
        ParallelDataset(tmp_path, "train")


def test_manifest_not_json(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text('{"splits": ')
    with pytest.raises(NmtError, match=rf"^{tmp_path / 'manifest.json'}: not valid JSON"):
        read_manifest(tmp_path)


def test_unknown_split_lists_the_known_ones(fixture_data: Path) -> None:
    with pytest.raises(NmtError) as err:
        ParallelDataset(fixture_data, "test-filtered")
    assert str(err.value) == f"{fixture_data}: no split 'test-filtered' (has train, valid, test)"


def test_sides_of_different_length(fixture_data: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(fixture_data, data)
    for ext in (".bin", ".idx"):  # the valid split's target side replaced by the test split's
        shutil.copyfile(data / f"test.de{ext}", data / f"valid.de{ext}")
    with pytest.raises(NmtError) as err:
        ParallelDataset(data, "valid")
    assert str(err.value) == f"{data}: split 'valid' has 30 source but 31 target sentences"
