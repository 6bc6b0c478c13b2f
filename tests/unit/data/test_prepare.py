"""nmt.data.prepare: the stages run in order, the manifest describes the folder, and a re-run skips work."""

import json
import shutil
from pathlib import Path

import pytest
from rich.console import Console

from nmt.data.binarize import sha256
from nmt.data.dataset import ParallelDataset
from nmt.data.prepare import PrepareConfig, prepare, summary_table
from nmt.data.verify import checksum64
from nmt.errors import NmtError


def local(fixture_dir: Path, dest: Path, **kw: object) -> PrepareConfig:
    """``nmt prepare local`` of the fixture into ``dest`` (400 pieces, one worker), ``kw`` overriding."""
    options = dict(corpus="local", dest=dest, src="en", tgt="de", train=str(fixture_dir / "train"),
                   valid=str(fixture_dir / "dev"), test=str(fixture_dir / "test"), vocab_size=400, workers=1)
    return PrepareConfig(**{**options, **kw})  # type: ignore[arg-type]


def test_manifest_describes_the_folder(fixture_data: Path) -> None:
    m = json.loads((fixture_data / "manifest.json").read_text())
    assert (m["format"], m["corpus"], m["src"], m["tgt"], m["dtype"]) == (1, "local", "en", "de", "uint16")
    assert m["vocab"] == {"model": "spm.model", "size": 400, "type": "bpe", "pad": 0, "unk": 1, "bos": 2, "eos": 3}
    assert m["limits"] == {"max_len": 250, "max_ratio": 1.5, "ratio_min_words": 5, "dedup": False}
    assert list(m["splits"]) == ["train", "valid", "test"] and m["tests"] == ["test"]
    train = m["splits"]["train"]
    assert train["dropped"]["empty"] == 2 and train["pairs"] + sum(train["dropped"].values()) == 241
    assert m["splits"]["valid"]["pairs"] == 30 and m["splits"]["test"]["pairs"] == 31
    for split, st in m["splits"].items():
        assert len(ParallelDataset(fixture_data, split)) == st["pairs"]
    expected = {"spm.model", "spm.vocab", "test.en", "test.de"} | {f"{s}.{l}.{e}" for s in m["splits"] for l in ("en", "de") for e in ("bin", "idx")}
    assert set(m["files"]) == expected
    for name, info in m["files"].items():
        assert info == {"bytes": (fixture_data / name).stat().st_size, "sha256": sha256(fixture_data / name), "checksum64": checksum64(fixture_data / name)}
    assert not [p.name for p in fixture_data.iterdir() if p.name.startswith(".")]


def test_a_rerun_is_skipped_and_force_redoes_it(fixture_dir: Path, tmp_path: Path) -> None:
    first = prepare(local(fixture_dir, tmp_path / "d"))
    assert "skipped" not in first
    again = prepare(local(fixture_dir, tmp_path / "d"))
    assert again.pop("skipped") is True and again == first
    # Changed limits redo the encoding (not the cleaning).
    stricter = prepare(local(fixture_dir, tmp_path / "d", max_len=10))
    assert "skipped" not in stricter and stricter["splits"]["train"]["pairs"] < first["splits"]["train"]["pairs"]
    assert stricter["splits"]["test"] == first["splits"]["test"]
    # A damaged output is noticed.
    (tmp_path / "d" / "valid.de.bin").write_bytes(b"")
    assert "skipped" not in prepare(local(fixture_dir, tmp_path / "d", max_len=10))
    assert "skipped" not in prepare(local(fixture_dir, tmp_path / "d", max_len=10, force=True))


def test_a_given_sentencepiece_model_is_used_as_it_is(fixture_dir: Path, fixture_spm: Path, tmp_path: Path) -> None:
    given = tmp_path / "given"
    given.mkdir()
    shutil.copyfile(fixture_spm, given / "joint.model")  # no .vocab beside it: one is written
    m = prepare(local(fixture_dir, tmp_path / "d", spm_model=given / "joint.model", vocab_size=None))
    assert (tmp_path / "d" / "spm.model").read_bytes() == fixture_spm.read_bytes()
    assert m["vocab"]["size"] == 400
    vocab = (tmp_path / "d" / "spm.vocab").read_text(encoding="utf-8").splitlines()
    assert len(vocab) == 400 and vocab[:4] == ["<pad>\t0", "<unk>\t0", "<s>\t0", "</s>\t0"]
    assert not (tmp_path / "d" / "work" / "spm.json").exists()  # nothing trained


def test_too_small_a_vocabulary(fixture_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(NmtError, match=r"^--vocab-size 7 is too small \(at least 8: four special ids and some pieces\)$"):
        prepare(local(fixture_dir, tmp_path / "d", vocab_size=7))


def test_summary_table(fixture_data: Path) -> None:
    m = json.loads((fixture_data / "manifest.json").read_text())
    table = summary_table({**m, "dest": str(fixture_data)})
    columns = [c.header for c in table.columns]
    assert columns == ["split", "pairs", "dropped: empty", "dropped: length ratio", "en tokens", "de tokens"]
    assert table.row_count == 3
    console = Console(width=200, record=True)
    console.print(table)
    text = console.export_text()
    assert "vocabulary 400 (bpe, joint), ids uint16" in text and "train" in text and "test" in text
    assert "up to date" not in text
    skipped = Console(width=200, record=True)
    skipped.print(summary_table({**m, "skipped": True}))
    assert "(up to date, nothing redone)" in skipped.export_text()
