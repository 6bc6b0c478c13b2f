"""nmt.data.encode: length filters on training pairs (subwords for the limit, words for the ratio) and the
token files of every split."""

from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

from nmt.data import clean as clean_mod
from nmt.data.clean import clean
from nmt.data.dataset import IndexedTokens
from nmt.data.encode import encode, keep_pair
from nmt.data.plan import PrepareConfig, plan
from nmt.data.text import normalise


@pytest.mark.parametrize("n_src, n_tgt, reason", [
    (0, 5, "empty"), (5, 0, "empty"), (0, 0, "empty"), (300, 0, "empty"),  # empty is checked first
    (250, 250, None),  # exactly max_len: kept
    (251, 250, "too long"), (250, 251, "too long"), (251, 10, "too long"),  # too long before the ratio
])
def test_keep_pair_subword_limits(n_src: int, n_tgt: int, reason: str | None) -> None:
    assert keep_pair(n_src, n_tgt, 3, 3, max_len=250, max_ratio=1.5, ratio_min_words=5) == reason


@pytest.mark.parametrize("words_src, words_tgt, reason", [
    (10, 15, None), (15, 10, None),  # exactly max_ratio: kept, either way round
    (10, 16, "length ratio"), (16, 10, "length ratio"),
    (1, 1, None), (1, 2, None), (1, 5, None), (5, 1, None),  # short segments: the ratio is not applied
    (1, 6, "length ratio"), (6, 4, None), (4, 7, "length ratio"),
])
def test_keep_pair_ratio_is_on_words(words_src: int, words_tgt: int, reason: str | None) -> None:
    # Subword counts far apart never matter for the ratio: "File" -> "Datei" may be 1 against 3 pieces.
    assert keep_pair(1, 3, words_src, words_tgt, max_len=250, max_ratio=1.5, ratio_min_words=5) == reason


def test_keep_pair_ratio_boundary_is_not_rounded() -> None:
    assert keep_pair(5, 5, 100, 150, 250, 1.5, 5) is None
    assert keep_pair(5, 5, 100, 151, 250, 1.5, 5) == "length ratio"
    assert keep_pair(5, 5, 3, 9, 250, 3.0, 5) is None and keep_pair(5, 5, 3, 10, 250, 3.0, 5) == "length ratio"
    assert keep_pair(5, 5, 1, 10, 250, 3.0, 10) is None and keep_pair(5, 5, 1, 11, 250, 3.0, 10) == "length ratio"


def encode_fixture(fixture_dir: Path, spm_path: Path, dest: Path, max_len: int, max_ratio: float) -> tuple[dict, PrepareConfig]:
    """clean then encode the fixture with a given SentencePiece model, as prepare does."""
    cfg = PrepareConfig(corpus="local", dest=dest, src="en", tgt="de", train=str(fixture_dir / "train"),
                        valid=str(fixture_dir / "dev"), test=str(fixture_dir / "test"),
                        max_len=max_len, max_ratio=max_ratio, workers=1)
    p = plan(cfg)
    work = dest / "work"
    work.mkdir(parents=True)
    stats, _ = clean(cfg, p, work, 1)
    assert encode(cfg, p, work, stats, spm_path, 400) == "uint16"
    return stats, cfg


def test_ids_equal_sentencepiece_and_only_train_is_filtered(fixture_dir: Path, fixture_spm: Path, tmp_path: Path) -> None:
    max_len, max_ratio = 60, 1.3
    stats, cfg = encode_fixture(fixture_dir, fixture_spm, tmp_path / "out", max_len, max_ratio)
    proc = spm.SentencePieceProcessor(model_file=str(fixture_spm))
    for split, name in (("train", "train"), ("valid", "dev"), ("test", "test")):
        raw = zip(*((fixture_dir / f"{name}.{lang}").read_text(encoding="utf-8").splitlines() for lang in ("en", "de")))
        text = [(normalise(a, "en"), normalise(b, "de")) for a, b in raw]
        if split == "train":
            text = [(a, b) for a, b in text if a and b]  # what cleaning leaves
        en, de = proc.encode([a for a, _ in text]), proc.encode([b for _, b in text])
        words = [(len(a.split()), len(b.split())) for a, b in text]
        if split == "train":
            reasons = [keep_pair(len(a), len(b), ws, wt, max_len, max_ratio, 5) for (a, b), (ws, wt) in zip(zip(en, de), words)]
            kept = [(a, b) for (a, b), r in zip(zip(en, de), reasons) if r is None]
            expected_drops = {"empty": 2}  # from cleaning
            for r in filter(None, reasons):
                expected_drops[r] = expected_drops.get(r, 0) + 1
            assert set(expected_drops) == {"empty", "too long", "length ratio"}  # the fixture has all three
            assert stats[split].dropped == expected_drops
        else:
            kept = list(zip(en, de))
            assert stats[split].dropped == {}
            assert any(keep_pair(len(a), len(b), ws, wt, max_len, max_ratio, 5) for (a, b), (ws, wt) in zip(kept, words))  # would have been dropped in train
        src = IndexedTokens(cfg.dest / f"{split}.en", "uint16")
        tgt = IndexedTokens(cfg.dest / f"{split}.de", "uint16")
        assert [src[i].tolist() for i in range(len(src))] == [a for a, _ in kept]
        assert [tgt[i].tolist() for i in range(len(tgt))] == [b for _, b in kept]
        assert stats[split].pairs == len(kept)
        assert (stats[split].src_tokens, stats[split].tgt_tokens) == (sum(map(len, (a for a, _ in kept))), sum(map(len, (b for _, b in kept))))
    assert stats["test"].pairs == 31 and stats["valid"].pairs == 30
    assert not [p.name for p in cfg.dest.iterdir() if p.name.startswith(".")]


def test_two_workers_give_the_same_files(fixture_dir: Path, fixture_spm: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # Chunks of 16 pairs instead of 5000, so that the workers really share several of them; order must be kept.
    monkeypatch.setattr(clean_mod.chunks, "__defaults__", (16,))
    one, _ = encode_fixture(fixture_dir, fixture_spm, tmp_path / "a", 250, 1.5)
    cfg = PrepareConfig(corpus="local", dest=tmp_path / "b", src="en", tgt="de", train=str(fixture_dir / "train"),
                        test=str(fixture_dir / "test"), workers=2)
    p = plan(cfg)
    (cfg.dest / "work").mkdir(parents=True)
    stats, _ = clean(cfg, p, cfg.dest / "work", 1)
    encode(cfg, p, cfg.dest / "work", stats, fixture_spm, 400)
    assert stats["train"] == one["train"] and stats["test"] == one["test"]
    for name in ("train.en.bin", "train.de.idx", "test.de.bin"):
        assert (cfg.dest / name).read_bytes() == (tmp_path / "a" / name).read_bytes()


def test_int32_for_a_large_vocabulary(fixture_dir: Path, fixture_spm: Path, tmp_path: Path) -> None:
    cfg = PrepareConfig(corpus="local", dest=tmp_path, src="en", tgt="de", train=str(fixture_dir / "dev"), workers=1)
    p = plan(cfg)
    (tmp_path / "work").mkdir()
    stats, _ = clean(cfg, p, tmp_path / "work", 1)
    assert encode(cfg, p, tmp_path / "work", stats, fixture_spm, 70_000) == "int32"
    assert (tmp_path / "train.en.bin").stat().st_size == 4 * stats["train"].src_tokens
    assert np.fromfile(tmp_path / "train.en.bin", dtype=np.int32).max() < 400
