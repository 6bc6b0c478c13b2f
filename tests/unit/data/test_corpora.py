"""nmt.data.corpora: the named corpus entries are consistent with themselves and with their published sources."""

import re

import pytest
from sacrebleu.dataset import DATASETS

from nmt.data import corpora
from nmt.data.plan import is_test

CORPORA = list(corpora.WMT.values())


def parts(corpus: corpora.Corpus) -> list[corpora.Part]:
    """Every part of every split of ``corpus``."""
    return [*corpus.train, *corpus.valid, *(p for ps in corpus.tests.values() for p in ps)]


@pytest.mark.parametrize("corpus", CORPORA, ids=lambda c: c.name)
def test_every_part_comes_from_one_of_the_corpus_archives(corpus: corpora.Corpus) -> None:
    names = [a.filename for a in corpus.archives]
    assert len(names) == len(set(names))
    for part in parts(corpus):
        assert part.archive in names, part
    # ... and every archive is used: nothing is downloaded for nothing.
    assert {p.archive for p in parts(corpus)} == set(names)


@pytest.mark.parametrize("corpus", CORPORA, ids=lambda c: c.name)
def test_archives_are_statmt_urls_with_well_formed_md5s(corpus: corpora.Corpus) -> None:
    for archive in corpus.archives:
        assert re.fullmatch(r"http://www\.statmt\.org/wmt1[0-4]/[\w.-]+\.(tgz|tar)", archive.url), archive.url
        assert archive.filename == archive.url.rsplit("/", 1)[1]
        assert archive.md5 is None or re.fullmatch(r"[0-9a-f]{32}", archive.md5), archive


@pytest.mark.parametrize("corpus", CORPORA, ids=lambda c: c.name)
def test_splits_names_languages_and_formats(corpus: corpora.Corpus) -> None:
    assert corpus.name == f"wmt14-{corpus.src}-{corpus.tgt}"
    assert corpus.train and corpus.valid and corpus.tests
    assert all(is_test(name) for name in corpus.tests) and "test" in corpus.tests
    for part in parts(corpus):
        # The source member is the English side, the target member the other language (by file suffix).
        assert re.search(rf"\.{corpus.src}(\.sgm|\.gz)?$", part.src), part
        assert re.search(rf"\.{corpus.tgt}(\.sgm|\.gz)?$", part.tgt), part
        assert part.sgml == part.src.endswith(".sgm") == part.tgt.endswith(".sgm"), part
    for test_parts in corpus.tests.values():
        assert all(p.sgml and "newstest2014" in p.src for p in test_parts)
    assert 0 < corpus.max_ratio and 0 < corpus.max_len and 8 <= corpus.vocab_size


def test_test_archive_checksums_are_sacrebleus() -> None:
    # The published md5s the entries quote: sacreBLEU's own dataset table, installed with it.
    published = {url.rsplit("/", 1)[1]: md5 for name in ("wmt13", "wmt14", "wmt14/full")
                 for url, md5 in zip(DATASETS[name].data, DATASETS[name].md5)}
    checked = [a for c in CORPORA for a in c.archives if a.md5]
    assert {a.filename for a in checked} == {"test.tgz", "test-full.tgz", "test-filtered.tgz"}
    for archive in checked:
        assert archive.md5 == published[archive.filename], archive


def test_en_de_has_the_paper_vocabulary_and_both_test_sets() -> None:
    de = corpora.WMT["wmt14-en-de"]
    assert (de.src, de.tgt, de.vocab_size) == ("en", "de", 37000)  # §5.1: ~37000 shared tokens
    assert set(de.tests) == {"test", "test-filtered"}
    fr = corpora.WMT["wmt14-en-fr"]
    assert (fr.src, fr.tgt, fr.vocab_size) == ("en", "fr", 32000)  # §5.1: 32000 word pieces
    assert len(fr.train) == len(de.train) + 2  # plus UN and the 10^9 corpus


def test_known_names() -> None:
    assert corpora.KNOWN == sorted(corpora.KNOWN)
    assert set(corpora.KNOWN) == set(corpora.WMT) | set(corpora.GETTEXT_PAIRS) | {"local"}
    assert all(src == "en" for src, _ in corpora.GETTEXT_PAIRS.values())
    assert all(name == f"gettext-{s}-{t}" for name, (s, t) in corpora.GETTEXT_PAIRS.items())
