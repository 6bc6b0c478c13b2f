"""nmt.data.plan: what ``nmt prepare`` will read, with which limits, and the fingerprints that let it skip work."""

import os
from pathlib import Path

import pytest

from nmt.data import corpora
from nmt.data.plan import PrepareConfig, Source, SplitStats, file_id, fingerprint, is_test, plan
from nmt.errors import NmtError


def local(fixture_dir: Path, tmp_path: Path, **kw: object) -> PrepareConfig:
    """``nmt prepare local`` on the fixture corpus, with ``kw`` overriding the options."""
    options = dict(corpus="local", dest=tmp_path / "out", src="en", tgt="de", train=str(fixture_dir / "train"),
                   valid=str(fixture_dir / "dev"), test=str(fixture_dir / "test"))
    return PrepareConfig(**{**options, **kw})  # type: ignore[arg-type]


def test_local_plan_files_and_default_limits(fixture_dir: Path, tmp_path: Path) -> None:
    p = plan(local(fixture_dir, tmp_path))
    assert (p.src, p.tgt) == ("en", "de")
    assert p.splits == {
        "train": [Source(fixture_dir / "train.en", fixture_dir / "train.de")],
        "valid": [Source(fixture_dir / "dev.en", fixture_dir / "dev.de")],
        "test": [Source(fixture_dir / "test.en", fixture_dir / "test.de")],
    }
    assert (p.vocab_size, p.max_len, p.max_ratio, p.dedup) == (8000, 250, 1.5, False)
    assert p.extra == {}
    assert not (tmp_path / "out").exists()  # planning a local corpus writes nothing


def test_options_override_the_limits(fixture_dir: Path, tmp_path: Path) -> None:
    p = plan(local(fixture_dir, tmp_path, vocab_size=400, max_len=20, max_ratio=3.0, dedup=True))
    assert (p.vocab_size, p.max_len, p.max_ratio, p.dedup) == (400, 20, 3.0, True)
    assert plan(local(fixture_dir, tmp_path, dedup=False)).dedup is False


def test_only_the_splits_given(fixture_dir: Path, tmp_path: Path) -> None:
    p = plan(local(fixture_dir, tmp_path, valid=None, test=None))
    assert list(p.splits) == ["train"]


@pytest.mark.parametrize("split, lang", [("train", "de"), ("valid", "en"), ("test", "de")])
def test_missing_local_file_is_one_line_naming_it(fixture_dir: Path, tmp_path: Path, split: str, lang: str) -> None:
    prefix = tmp_path / "half"
    other = "de" if lang == "en" else "en"
    (tmp_path / f"half.{other}").write_text("File\n")  # only one side exists
    option = {"train": "train", "valid": "valid", "test": "test"}[split]
    cfg = local(fixture_dir, tmp_path, **{option: str(prefix)})
    with pytest.raises(NmtError) as err:
        plan(cfg)
    message = str(err.value)
    assert message == f"{prefix}.{lang}: file not found (--{split} {prefix} with --src en --tgt de)"
    assert "\n" not in message


def test_local_needs_train_and_languages(tmp_path: Path) -> None:
    for missing in ("train", "src", "tgt"):
        kw = {"train": "x", "src": "en", "tgt": "de", missing: None}
        with pytest.raises(NmtError, match="nmt prepare local needs --train PREFIX, --src LANG and --tgt LANG"):
            plan(PrepareConfig(corpus="local", dest=tmp_path, **kw))


def test_unknown_corpus_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(NmtError) as err:
        plan(PrepareConfig(corpus="wmt99-xx", dest=tmp_path))
    assert str(err.value) == "unknown corpus 'wmt99-xx'; known corpora: " + ", ".join(corpora.KNOWN)
    assert "local" in corpora.KNOWN and "wmt14-en-de" in corpora.KNOWN


def test_fingerprint_is_stable_and_sensitive() -> None:
    a = {"splits": {"train": [["/x/train.en", 10, 5]]}, "dedup": False, "langs": ["en", "de"]}
    reordered = {"langs": ["en", "de"], "dedup": False, "splits": {"train": [["/x/train.en", 10, 5]]}}
    assert fingerprint(a) == fingerprint(reordered)  # key order does not matter
    # Stable across runs and machines (a stamp written yesterday must still match): a prefix of the
    # SHA-256 of the canonical JSON, pinned here.
    assert fingerprint(a) == "a0ea66af955535c7"
    for changed in ({**a, "dedup": True}, {**a, "langs": ["de", "en"]}, {**a, "splits": {"train": [["/x/train.en", 11, 5]]}}):
        assert fingerprint(changed) != fingerprint(a)
    assert fingerprint({"p": Path("/a/b")}) == fingerprint({"p": "/a/b"})  # paths digest as their text


def test_file_id_follows_size_and_time(tmp_path: Path) -> None:
    path = tmp_path / "train.en"
    path.write_text("File\n")
    first = file_id(path)
    assert first == [str(path.resolve()), 5, int(path.stat().st_mtime)]
    assert file_id(path) == first
    os.utime(path, (1_000_000_000, 1_000_000_000))
    assert file_id(path)[2] == 1_000_000_000
    path.write_text("Datei\n")
    assert file_id(path)[1] == 6


@pytest.mark.parametrize("split, expected", [("test", True), ("test-filtered", True), ("test2", True),
                                             ("train", False), ("valid", False), ("latest", False)])
def test_is_test(split: str, expected: bool) -> None:
    assert is_test(split) is expected


def test_split_stats_count_drops_per_reason() -> None:
    st = SplitStats()
    for reason in ("empty", "duplicate", "empty"):
        st.drop(reason)
    assert st.dropped == {"empty": 2, "duplicate": 1} and st.pairs == 0
