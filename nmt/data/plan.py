"""What ``nmt prepare`` will do: its options, the files of each split and the cleaning limits.

``plan`` resolves a corpus name (a WMT entry, an installed gettext corpus, or local files) into a ``Plan``,
downloading and extracting archives on the way. Stage fingerprints let a re-run skip finished work.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nmt import atomic
from nmt.console import progress
from nmt.data import corpora, gettext_corpus
from nmt.data.download import download, extract, mirror_url, verify_archive
from nmt.errors import NmtError

TEST_PREFIX = "test"


@dataclass(frozen=True)
class PrepareConfig:
    """Options of ``nmt prepare``; ``None`` means 'take the corpus entry's value'."""

    corpus: str
    dest: Path
    src: str | None = None
    tgt: str | None = None
    train: str | None = None  # local corpora: file prefixes, languages appended as suffixes
    valid: str | None = None
    test: str | None = None
    vocab_size: int | None = None
    max_len: int | None = None
    max_ratio: float | None = None
    ratio_min_words: int = 5  # pairs whose longer side has at most this many words are never dropped for their ratio
    dedup: bool | None = None
    spm_model: Path | None = None
    spm_sample: int = 2_000_000  # sentences (both sides together) SentencePiece is trained on
    model_type: str = "bpe"
    character_coverage: float | None = None  # SentencePiece's; None: 1.0 for ≥16k pieces, else 0.9995
    workers: int = 2
    mirror: str | None = None
    raw_dir: Path | None = None
    retries: int = 5
    backoff: float = 1.0
    force: bool = False
    command: str = ""


@dataclass
class Source:
    """One parallel text: a file per side, plain (optionally gzip) or WMT SGML."""

    src: Path
    tgt: Path
    sgml: bool = False


@dataclass
class Plan:
    """What a corpus name and the options resolve to: languages, files per split, limits."""

    src: str
    tgt: str
    splits: dict[str, list[Source]]
    vocab_size: int
    max_len: int
    max_ratio: float
    dedup: bool
    ratio_min_words: int = 5
    extra: dict = field(default_factory=dict)


@dataclass
class SplitStats:
    """Pairs kept, pairs dropped per reason, and tokens per side of one split."""

    pairs: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    src_tokens: int = 0
    tgt_tokens: int = 0

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1


def fingerprint(obj: object) -> str:
    """A short digest of a stage's inputs; the stage is redone when it changes."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_id(path: Path) -> list:
    """What identifies an input file's version cheaply: path, size and modification time."""
    stat = path.stat()
    return [str(path.resolve()), stat.st_size, int(stat.st_mtime)]


def is_test(split: str) -> bool:
    """Test splits (``test``, ``test-filtered``, ...) are kept whole and also stored as raw reference text."""
    return split.startswith(TEST_PREFIX)


def _fetch_wmt(corpus: corpora.Corpus, cfg: PrepareConfig) -> Path:
    """Download (or find under --raw-dir) and extract every archive of ``corpus``; returns the raw folder."""
    raw = cfg.raw_dir or cfg.dest / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    with progress() as bars:
        for archive in corpus.archives:
            path = raw / archive.filename
            if path.exists():
                verify_archive(path, archive.md5)
            else:
                url = mirror_url(archive.url, cfg.mirror)
                task = bars.add_task(f"download {archive.filename}", total=None, info="")
                download(
                    url, path, md5=archive.md5, retries=cfg.retries, backoff=cfg.backoff,
                    progress=lambda done, total: bars.update(task, completed=done, total=total, info=""),
                )
            extract(path, raw / f"{archive.filename}.d")
    return raw


def _member(raw: Path, part: corpora.Part) -> tuple[Path, Path]:
    root = raw / f"{part.archive}.d"
    paths = (root / part.src, root / part.tgt)
    for p in paths:
        if not p.exists():
            raise NmtError(f"{raw / part.archive}: member '{p.relative_to(root)}' not found in the archive")
    return paths


def _gettext_sources(cfg: PrepareConfig, src: str, tgt: str) -> tuple[dict[str, list[Source]], dict]:
    folder = cfg.dest / "work" / "gettext"
    built = folder / "catalogs.json"
    if cfg.force or not built.exists():
        splits = gettext_corpus.build(src, tgt)
        for split, pairs in splits.pairs.items():
            for i, lang in enumerate((src, tgt)):
                atomic.write_text(folder / f"{split}.{lang}", "".join(p[i] + "\n" for p in pairs))
        atomic.write_json(built, splits.catalogs)  # written last: its presence means the splits are whole
    catalogs = json.loads(built.read_text())
    sources = {split: [Source(folder / f"{split}.{src}", folder / f"{split}.{tgt}")] for split in ("train", "valid", "test")}
    return sources, {"catalogs": catalogs}


def plan(cfg: PrepareConfig) -> Plan:
    """Resolve the corpus name and options into files and limits, downloading what is needed."""
    name = cfg.corpus
    if name in corpora.WMT:
        corpus = corpora.WMT[name]
        raw = _fetch_wmt(corpus, cfg)
        splits = {
            "train": [Source(*_member(raw, p), sgml=p.sgml) for p in corpus.train],
            "valid": [Source(*_member(raw, p), sgml=p.sgml) for p in corpus.valid],
        }
        for test_name, parts in corpus.tests.items():
            splits[test_name] = [Source(*_member(raw, p), sgml=p.sgml) for p in parts]
        src, tgt, limits = corpus.src, corpus.tgt, asdict(corpus)
        extra: dict = {}
    elif name in corpora.GETTEXT_PAIRS:
        src, tgt = corpora.GETTEXT_PAIRS[name]
        splits, extra = _gettext_sources(cfg, src, tgt)
        limits = dict(corpora.GETTEXT_LIMITS, dedup=False)  # already deduplicated across splits
    elif name == "local":
        if not (cfg.src and cfg.tgt and cfg.train):
            raise NmtError("nmt prepare local needs --train PREFIX, --src LANG and --tgt LANG (and usually --valid and --test)")
        src, tgt = cfg.src, cfg.tgt
        splits = {}
        for split, prefix in (("train", cfg.train), ("valid", cfg.valid), ("test", cfg.test)):
            if prefix:
                pair = Source(Path(f"{prefix}.{src}"), Path(f"{prefix}.{tgt}"))
                for p in (pair.src, pair.tgt):
                    if not p.exists():
                        raise NmtError(f"{p}: file not found (--{split} {prefix} with --src {src} --tgt {tgt})")
                splits[split] = [pair]
        limits = {"vocab_size": 8000, "max_len": 250, "max_ratio": 1.5, "dedup": False}
        extra = {}
    else:
        raise NmtError(f"unknown corpus '{name}'; known corpora: {', '.join(corpora.KNOWN)}")
    return Plan(
        src=src,
        tgt=tgt,
        splits=splits,
        vocab_size=cfg.vocab_size or limits["vocab_size"],
        max_len=cfg.max_len or limits["max_len"],
        max_ratio=cfg.max_ratio or limits["max_ratio"],
        dedup=limits["dedup"] if cfg.dedup is None else cfg.dedup,
        ratio_min_words=cfg.ratio_min_words,
        extra=extra,
    )
