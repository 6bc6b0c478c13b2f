"""Named corpora as small declarative entries: where the archives are and which members hold which side.

A member path may contain ``{src}`` and ``{tgt}``; the language pair fills them in. Checksums are only
given where a published source states them (sacreBLEU's dataset table for the WMT test archives); the
training archives have none we know for certain, so only their size is checked against the server's.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Archive:
    """One downloadable file. ``md5`` only when a published source states it."""

    url: str
    md5: str | None = None

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Part:
    """One parallel text inside an archive: a member for each side, plain text (optionally .gz) or SGML."""

    archive: str  # Archive.filename
    src: str
    tgt: str
    sgml: bool = False


@dataclass(frozen=True)
class Corpus:
    """A named corpus: archives, the parts of each split, vocabulary size and cleaning limits."""

    name: str
    src: str
    tgt: str
    archives: tuple[Archive, ...]
    train: tuple[Part, ...]
    valid: tuple[Part, ...]
    # Several test sets may be kept side by side (WMT14's full and filtered newstest2014).
    tests: dict[str, tuple[Part, ...]] = field(default_factory=dict)
    vocab_size: int = 32000
    max_len: int = 250
    max_ratio: float = 1.5
    dedup: bool = False
    description: str = ""


STATMT = "http://www.statmt.org"

EUROPARL = Archive(f"{STATMT}/wmt13/training-parallel-europarl-v7.tgz")
COMMONCRAWL = Archive(f"{STATMT}/wmt13/training-parallel-commoncrawl.tgz")
NC_V9 = Archive(f"{STATMT}/wmt14/training-parallel-nc-v9.tgz")
UN = Archive(f"{STATMT}/wmt13/training-parallel-un.tgz")
GIGA = Archive(f"{STATMT}/wmt10/training-giga-fren.tar")
# md5 values as published in sacreBLEU's dataset table (datasets wmt13, wmt14, wmt14/full).
DEV_WMT13 = Archive(f"{STATMT}/wmt13/test.tgz", md5="48eca5d02f637af44e85186847141f67")
TEST_FILTERED = Archive(f"{STATMT}/wmt14/test-filtered.tgz", md5="84c597844c1542e29c2aff23aaee4310")
TEST_FULL = Archive(f"{STATMT}/wmt14/test-full.tgz", md5="a8cd784e006feb32ac6f3d9ec7eb389a")


def _wmt14(tgt: str, extra_train: tuple[Part, ...], extra_archives: tuple[Archive, ...], vocab: int, about: str) -> Corpus:
    pair = f"{tgt}en"  # statmt names EN-DE files 'de-en' and 'deen'
    train = (
        Part(EUROPARL.filename, f"training/europarl-v7.{tgt}-en.en", f"training/europarl-v7.{tgt}-en.{tgt}"),
        Part(COMMONCRAWL.filename, f"commoncrawl.{tgt}-en.en", f"commoncrawl.{tgt}-en.{tgt}"),
        Part(NC_V9.filename, f"training/news-commentary-v9.{tgt}-en.en", f"training/news-commentary-v9.{tgt}-en.{tgt}"),
    ) + extra_train
    return Corpus(
        name=f"wmt14-en-{tgt}",
        src="en",
        tgt=tgt,
        archives=(EUROPARL, COMMONCRAWL, NC_V9) + extra_archives + (DEV_WMT13, TEST_FULL, TEST_FILTERED),
        train=train,
        valid=(Part(DEV_WMT13.filename, "test/newstest2013-src.en.sgm", f"test/newstest2013-src.{tgt}.sgm", sgml=True),),
        tests={
            # The full 3003-sentence set (sacreBLEU 'wmt14/full', fairseq's choice) and the official
            # filtered set (sacreBLEU 'wmt14', 2737 sentences for EN-DE). Scores differ between them.
            "test": (Part(TEST_FULL.filename, f"test-full/newstest2014-{pair}-src.en.sgm", f"test-full/newstest2014-{pair}-ref.{tgt}.sgm", sgml=True),),
            "test-filtered": (Part(TEST_FILTERED.filename, f"test/newstest2014-{pair}-src.en.sgm", f"test/newstest2014-{pair}-ref.{tgt}.sgm", sgml=True),),
        },
        vocab_size=vocab,
        description=about,
    )


WMT14_EN_DE = _wmt14(
    "de", (), (), 37000,
    "WMT14 EN-DE: Europarl v7, Common Crawl, News Commentary v9 (~4.5M pairs); dev newstest2013; test newstest2014 full and filtered",
)
WMT14_EN_FR = _wmt14(
    "fr",
    (
        Part(UN.filename, "un/undoc.2000.fr-en.en", "un/undoc.2000.fr-en.fr"),
        Part(GIGA.filename, "giga-fren.release2.fixed.en.gz", "giga-fren.release2.fixed.fr.gz"),
    ),
    (UN, GIGA),
    32000,
    "WMT14 EN-FR: Europarl v7, Common Crawl, UN, News Commentary v9, 10^9 corpus (~36M pairs); dev newstest2013; test newstest2014",
)

WMT: dict[str, Corpus] = {c.name: c for c in (WMT14_EN_DE, WMT14_EN_FR)}

# The gettext corpora have no archives: they are built from the catalogs installed on the machine
# (nmt.data.gettext_corpus). Short software messages need a looser length ratio than news text.
GETTEXT_LIMITS = {"vocab_size": 4000, "max_len": 250, "max_ratio": 3.0}
GETTEXT_PAIRS = {"gettext-en-de": ("en", "de"), "gettext-en-fr": ("en", "fr")}

KNOWN = sorted([*WMT, *GETTEXT_PAIRS, "local"])
