"""nmt.data.clean: normalised splits, empty and duplicate training pairs dropped, test sets kept whole (and
raw), the bounded SentencePiece sample, and the stamp that skips an unchanged re-run."""

import random
import shutil
from pathlib import Path

import pytest

from nmt.data import clean as clean_mod
from nmt.data.clean import Reservoir, chunks, clean, make_pool, pool_map
from nmt.data.plan import PrepareConfig, plan
from nmt.data.text import normalise
from nmt.errors import NmtError

TRAIN, DEV, TEST = 241, 30, 31  # pairs in the fixture's files
EMPTY, DUPLICATES = 2, 3  # training pairs empty after normalisation; exact duplicates once normalised


def lines(path: Path) -> list[str]:
    """The lines of a file as nmt writes and reads them: split on "\n" only (splitlines would also split on
    the separators "\x85", "\u2028", ... that a raw line may contain)."""
    return path.read_text(encoding="utf-8").split("\n")[:-1]


def config(tmp_path: Path, corpus: Path, **kw: object) -> PrepareConfig:
    """``nmt prepare local`` options for ``corpus`` (train, dev, test), one worker, ``kw`` overriding."""
    options = dict(corpus="local", dest=tmp_path / "out", src="en", tgt="de", train=str(corpus / "train"),
                   valid=str(corpus / "dev"), test=str(corpus / "test"), workers=1)
    return PrepareConfig(**{**options, **kw})  # type: ignore[arg-type]


def run_clean(cfg: PrepareConfig, workers: int = 1) -> tuple[dict, Path, Path]:
    """``clean`` as ``prepare`` calls it; returns the stats, the sample and the work folder."""
    work = cfg.dest / "work"
    work.mkdir(parents=True, exist_ok=True)
    stats, sample = clean(cfg, plan(cfg), work, workers)
    return stats, sample, work


def normalised_pairs(corpus: Path, split: str) -> list[tuple[str, str]]:
    """Every pair of a split of ``corpus``, normalised, none dropped."""
    return [(normalise(a, "en"), normalise(b, "de")) for a, b in zip(lines(corpus / f"{split}.en"), lines(corpus / f"{split}.de"))]


def test_training_pairs_are_normalised_and_empty_ones_dropped(fixture_dir: Path, tmp_path: Path) -> None:
    stats, _, work = run_clean(config(tmp_path, fixture_dir))
    expected = [(a, b) for a, b in normalised_pairs(fixture_dir, "train") if a and b]
    assert len(expected) == TRAIN - EMPTY
    assert stats["train"].pairs == TRAIN - EMPTY and stats["train"].dropped == {"empty": EMPTY}
    assert list(zip(lines(work / "train.en"), lines(work / "train.de"))) == expected
    assert "Name: Wert" in lines(work / "train.de") and "Zuletzt geöffnet" in lines(work / "train.de")
    # Without --dedup the duplicates stay.
    assert lines(work / "train.en").count("Cancel") == 2


def test_dedup_drops_exact_duplicates_after_normalisation(fixture_dir: Path, tmp_path: Path) -> None:
    stats, _, work = run_clean(config(tmp_path, fixture_dir, dedup=True))
    assert stats["train"].pairs == TRAIN - EMPTY - DUPLICATES
    assert stats["train"].dropped == {"empty": EMPTY, "duplicate": DUPLICATES}
    pairs = list(zip(lines(work / "train.en"), lines(work / "train.de")))
    assert len(set(pairs)) == len(pairs)
    assert pairs.count(("Loading...", "Wird geladen ...")) == 1  # "Loading…" and "Loading..." are one pair once normalised
    assert pairs.count(("Cancel", "Abbrechen")) == 1
    # Only train is deduplicated; the test split's repeated pair stays (and dev shares a pair with train).
    assert stats["test"].pairs == TEST and stats["valid"].pairs == DEV


def test_test_split_is_kept_whole_and_raw(fixture_dir: Path, tmp_path: Path) -> None:
    cfg = config(tmp_path, fixture_dir, dedup=True)
    stats, _, work = run_clean(cfg)
    assert stats["test"].pairs == TEST and stats["test"].dropped == {}
    assert list(zip(lines(work / "test.en"), lines(work / "test.de"))) == normalised_pairs(fixture_dir, "test")
    assert ("Show more", "") in zip(lines(work / "test.en"), lines(work / "test.de"))  # an empty reference is kept
    # The references for scoring are the untouched text, byte for byte (double spaces and tabs included).
    for lang in ("en", "de"):
        assert (cfg.dest / f"test.{lang}").read_bytes() == (fixture_dir / f"test.{lang}").read_bytes()
        assert not (cfg.dest / f"train.{lang}").exists() and not (cfg.dest / f"valid.{lang}").exists()


def test_valid_drops_empty_pairs_but_not_duplicates(fixture_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "v.en").write_text("Open\n\nOpen\nClose\n \n")
    (tmp_path / "v.de").write_text("Öffnen\nLeer\nÖffnen\n\u200b\nLeer\n")
    stats, _, work = run_clean(config(tmp_path, fixture_dir, valid=str(tmp_path / "v"), dedup=True))
    assert stats["valid"].pairs == 2 and stats["valid"].dropped == {"empty": 3}
    assert lines(work / "valid.de") == ["Öffnen", "Öffnen"]


def test_sample_is_both_sides_of_the_kept_training_pairs(fixture_dir: Path, tmp_path: Path) -> None:
    _, sample, work = run_clean(config(tmp_path, fixture_dir))
    en, de = lines(work / "train.en"), lines(work / "train.de")
    # Fewer texts than the reservoir holds: all of them, in order, source then target.
    assert lines(sample) == [t for pair in zip(en, de) for t in pair]
    assert sample == work / "spm.sample.txt"


def test_sample_is_bounded_and_drawn_by_the_reservoir(fixture_dir: Path, tmp_path: Path) -> None:
    _, sample, work = run_clean(config(tmp_path, fixture_dir, spm_sample=50))
    reservoir = Reservoir(50)  # the seed clean uses: the same sample on every run
    for a, b in zip(lines(work / "train.en"), lines(work / "train.de")):
        reservoir.add(a)
        reservoir.add(b)
    assert len(lines(sample)) == 50
    assert lines(sample) == reservoir.items


def test_reservoir_keeps_exactly_size_items_deterministically() -> None:
    texts = [f"s{i}" for i in range(1000)]

    def draw(seed: int, size: int = 10, items: list[str] = texts) -> list[str]:
        r = Reservoir(size, seed=seed)
        for t in items:
            r.add(t)
        assert r.seen == len(items)
        return r.items

    assert len(draw(1)) == 10 and len(set(draw(1))) == 10 and set(draw(1)) <= set(texts)
    assert draw(1) == draw(1)
    assert draw(1) != draw(2)
    assert draw(1, items=texts[:7]) == texts[:7]  # a short stream is kept whole, in order


def test_reservoir_is_uniform() -> None:
    # Every position of the stream should be kept with probability size/n; a biased rule (keep the first,
    # always replace, index by size instead of seen) moves some positions far from 0.25 over 4000 draws.
    n, size, trials = 20, 5, 4000
    kept = [0] * n
    for seed in range(trials):
        r = Reservoir(size, seed=seed)
        for i in range(n):
            r.add(str(i))
        for t in r.items:
            kept[int(t)] += 1
    frequencies = [k / trials for k in kept]
    assert min(frequencies) > 0.21 and max(frequencies) < 0.29


def test_unchanged_rerun_is_skipped_and_a_change_redoes_it(fixture_dir: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    shutil.copytree(fixture_dir, corpus)
    cfg = config(tmp_path, corpus)
    stats, _, work = run_clean(cfg)
    (work / "train.en").write_text("sentinel\n")  # would be overwritten by a real second pass
    again, _, _ = run_clean(cfg)
    assert (work / "train.en").read_text() == "sentinel\n"
    assert again == stats
    # --force redoes it.
    run_clean(config(tmp_path, corpus, force=True))
    assert lines(work / "train.en")[0] != "sentinel"
    # So does a changed option...
    (work / "train.en").write_text("sentinel\n")
    assert run_clean(config(tmp_path, corpus, dedup=True))[0]["train"].pairs == TRAIN - EMPTY - DUPLICATES
    # ... and a changed input file.
    with open(corpus / "train.en", "a", encoding="utf-8") as f:
        f.write("Open the pod bay doors\n")
    with open(corpus / "train.de", "a", encoding="utf-8") as f:
        f.write("Öffne die Schleusentore\n")
    redone, _, _ = run_clean(config(tmp_path, corpus, dedup=True))
    assert redone["train"].pairs == TRAIN - EMPTY - DUPLICATES + 1
    assert lines(work / "train.de")[-1] == "Öffne die Schleusentore"


def test_no_training_pairs_left_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "t.en").write_text("\n\t\nx\n")
    (tmp_path / "t.de").write_text("a\nb\n\u200b\n")
    cfg = PrepareConfig(corpus="local", dest=tmp_path / "out", src="en", tgt="de", train=str(tmp_path / "t"), workers=1)
    with pytest.raises(NmtError, match="no training pairs left after cleaning"):
        run_clean(cfg)
    assert not (tmp_path / "out" / "work" / "clean.json").exists()


def test_chunks_and_pool_helpers() -> None:
    assert list(chunks(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(chunks([], 3)) == []
    assert list(pool_map(None, str.upper, ["a", "b"])) == ["A", "B"]
    called: list[int] = []
    assert make_pool(1, called.append, (7,)) is None  # one worker: the initializer runs here, no processes
    assert called == [7]


def test_two_workers_write_the_same_files(fixture_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Chunks of 16 pairs instead of 5000, so that the workers really share several of them; order must be kept.
    monkeypatch.setattr(clean_mod.chunks, "__defaults__", (16,))
    one, _, w1 = run_clean(config(tmp_path / "a", fixture_dir, dedup=True), workers=1)
    two, _, w2 = run_clean(config(tmp_path / "b", fixture_dir, dedup=True), workers=2)
    assert one == two
    for name in ("train.en", "train.de", "valid.de", "test.en", "spm.sample.txt"):
        assert (w1 / name).read_bytes() == (w2 / name).read_bytes()


def test_random_module_state_is_not_used() -> None:
    # The sample must not depend on whatever else used the global random generator.
    random.seed(0)
    a = Reservoir(3)
    random.seed(99)
    b = Reservoir(3)
    for i in range(100):
        a.add(str(i))
        b.add(str(i))
    assert a.items == b.items
