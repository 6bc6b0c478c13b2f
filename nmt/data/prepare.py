"""``nmt prepare``: raw parallel text → cleaned text → joint SentencePiece → memory-mapped shards.

Every step streams: text goes through in chunks, the SentencePiece sample is a bounded reservoir, and
the token files are appended to. Each step's output is stamped with a fingerprint of its inputs, so a
re-run skips what is already done; everything is written under a temporary name and renamed.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import multiprocessing as mp
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from rich.table import Table

from nmt import __version__
from nmt.console import console, progress
from nmt.data import corpora, gettext_corpus
from nmt.data.binarize import TokenWriter, sha256, token_dtype
from nmt.data.download import download, extract, mirror_url, verify_archive
from nmt.data.spm import load_spm, train_spm
from nmt.data.text import normalise, read_parallel
from nmt.errors import NmtError

CHUNK = 5000
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
    extra: dict = field(default_factory=dict)


@dataclass
class SplitStats:
    pairs: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    src_tokens: int = 0
    tgt_tokens: int = 0

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1


def _fingerprint(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_id(path: Path) -> list:
    stat = path.stat()
    return [str(path.resolve()), stat.st_size, int(stat.st_mtime)]


# ---------------------------------------------------------------------------------------------- plan


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
        folder.mkdir(parents=True, exist_ok=True)
        for split, pairs in splits.pairs.items():
            for i, lang in enumerate((src, tgt)):
                tmp = folder / f"{split}.{lang}.tmp"
                tmp.write_text("".join(p[i] + "\n" for p in pairs), encoding="utf-8")
                tmp.replace(folder / f"{split}.{lang}")
        tmp = built.with_suffix(".tmp")
        tmp.write_text(json.dumps(splits.catalogs, indent=1))
        tmp.replace(built)
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
        extra=extra,
    )


# --------------------------------------------------------------------------------------------- clean


def _normalise_chunk(args: tuple[list[tuple[str, str]], str, str]) -> list[tuple[str, str]]:
    pairs, src, tgt = args
    return [(normalise(a, src), normalise(b, tgt)) for a, b in pairs]


def _chunks(pairs: Iterable[tuple[str, str]], size: int) -> Iterator[list[tuple[str, str]]]:
    it = iter(pairs)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def _pool(workers: int) -> mp.pool.Pool | None:
    return mp.get_context("spawn").Pool(workers) if workers > 1 else None


def _imap(pool: mp.pool.Pool | None, fn, items: Iterable):  # noqa: ANN001, ANN202 - thin helper
    return pool.imap(fn, items) if pool else map(fn, items)


def is_test(split: str) -> bool:
    return split.startswith(TEST_PREFIX)


def clean(cfg: PrepareConfig, p: Plan, work: Path, pool: mp.pool.Pool | None) -> tuple[dict[str, SplitStats], Path]:
    """Normalise every split, drop empty pairs (and duplicates with --dedup) outside test sets.

    Writes ``work/{split}.{lang}`` and, for test sets, the original text as ``dest/{split}.{lang}``
    (references for scoring must be the untouched text). Returns per-split stats and the SentencePiece sample.
    """
    stamp = work / "clean.json"
    key = _fingerprint({"v": __version__, "splits": {s: [[_file_id(x.src), _file_id(x.tgt), x.sgml] for x in v] for s, v in p.splits.items()},
                        "dedup": p.dedup, "sample": cfg.spm_sample, "langs": [p.src, p.tgt]})
    sample = work / "spm.sample.txt"
    if not cfg.force and stamp.exists() and json.loads(stamp.read_text())["key"] == key:
        saved = json.loads(stamp.read_text())["stats"]
        return {s: SplitStats(**v) for s, v in saved.items()}, sample
    stats: dict[str, SplitStats] = {}
    rng = random.Random(1234)
    reservoir: list[str] = []
    seen_train = 0
    with progress() as bars:
        for split, sources in p.splits.items():
            st = stats[split] = SplitStats()
            task = bars.add_task(f"clean {split}", total=None, info="")
            outs = {lang: (work / f"{split}.{lang}.tmp") for lang in (p.src, p.tgt)}
            raws = {lang: (cfg.dest / f"{split}.{lang}.tmp") for lang in (p.src, p.tgt)} if is_test(split) else {}
            seen: set[bytes] = set()
            with open(outs[p.src], "w", encoding="utf-8") as fs, open(outs[p.tgt], "w", encoding="utf-8") as ft:
                raw_files = [open(raws[lang], "w", encoding="utf-8") for lang in (p.src, p.tgt)] if raws else []
                for source in sources:
                    stream = read_parallel(source.src, source.tgt, source.sgml)
                    if raw_files:
                        stream = _tee_raw(stream, raw_files)
                    for chunk in _imap(pool, _normalise_chunk, ((c, p.src, p.tgt) for c in _chunks(stream, CHUNK))):
                        for a, b in chunk:
                            if not is_test(split):
                                if not a or not b:
                                    st.drop("empty")
                                    continue
                                if p.dedup and split == "train":
                                    h = hashlib.blake2b(f"{a}\t{b}".encode(), digest_size=8).digest()
                                    if h in seen:
                                        st.drop("duplicate")
                                        continue
                                    seen.add(h)
                            fs.write(a + "\n")
                            ft.write(b + "\n")
                            st.pairs += 1
                            if split == "train":
                                for text in (a, b):
                                    seen_train += 1
                                    if len(reservoir) < cfg.spm_sample:
                                        reservoir.append(text)
                                    elif (j := rng.randrange(seen_train)) < cfg.spm_sample:
                                        reservoir[j] = text
                        bars.update(task, advance=len(chunk), info=f"{st.pairs:,} kept")
                for f in raw_files:
                    f.close()
            for lang, tmp in outs.items():
                tmp.replace(work / f"{split}.{lang}")
            for lang, tmp in raws.items():
                tmp.replace(cfg.dest / f"{split}.{lang}")
    if "train" not in stats or stats["train"].pairs == 0:
        raise NmtError("no training pairs left after cleaning; check the input files")
    tmp = sample.with_suffix(".tmp")
    tmp.write_text("".join(t + "\n" for t in reservoir if t), encoding="utf-8")
    tmp.replace(sample)
    stamp.write_text(json.dumps({"key": key, "stats": {s: asdict(v) for s, v in stats.items()}}))
    return stats, sample


def _tee_raw(stream: Iterator[tuple[str, str]], files: list) -> Iterator[tuple[str, str]]:
    for a, b in stream:
        files[0].write(a.replace("\n", " ") + "\n")
        files[1].write(b.replace("\n", " ") + "\n")
        yield a, b


# ------------------------------------------------------------------------------------------- encode

_worker_spm = None


def _init_encoder(model: str) -> None:
    global _worker_spm
    _worker_spm = load_spm(Path(model))


def _encode_chunk(pairs: list[tuple[str, str]]) -> list[tuple[np.ndarray, np.ndarray]]:
    assert _worker_spm is not None
    srcs = _worker_spm.encode([a for a, _ in pairs])
    tgts = _worker_spm.encode([b for _, b in pairs])
    return [(np.asarray(s, dtype=np.int32), np.asarray(t, dtype=np.int32)) for s, t in zip(srcs, tgts)]


def _read_clean(work: Path, split: str, src: str, tgt: str) -> Iterator[tuple[str, str]]:
    with open(work / f"{split}.{src}", encoding="utf-8") as fs, open(work / f"{split}.{tgt}", encoding="utf-8") as ft:
        for a, b in zip(fs, ft):
            yield a.rstrip("\n"), b.rstrip("\n")


def keep_pair(n_src: int, n_tgt: int, max_len: int, max_ratio: float) -> str | None:
    """The reason to drop a training pair by its subword lengths, or None to keep it (clean-corpus-n rule)."""
    if n_src == 0 or n_tgt == 0:
        return "empty"
    if n_src > max_len or n_tgt > max_len:
        return "too long"
    if max(n_src, n_tgt) / min(n_src, n_tgt) > max_ratio:
        return "length ratio"
    return None


def encode(cfg: PrepareConfig, p: Plan, work: Path, stats: dict[str, SplitStats], spm_path: Path, vocab_size: int) -> str:
    """Encode every split with SentencePiece in worker processes and write the token files."""
    dtype = token_dtype(vocab_size)
    pool = mp.get_context("spawn").Pool(cfg.workers, _init_encoder, (str(spm_path),)) if cfg.workers > 1 else None
    if pool is None:
        _init_encoder(str(spm_path))
    try:
        with progress() as bars:
            for split, st in stats.items():
                task = bars.add_task(f"encode {split}", total=st.pairs, info="")
                writers = [TokenWriter(cfg.dest / f"{split}.{lang}", dtype) for lang in (p.src, p.tgt)]
                kept = 0
                st.src_tokens = st.tgt_tokens = 0
                try:
                    for chunk in _imap(pool, _encode_chunk, _chunks(_read_clean(work, split, p.src, p.tgt), CHUNK)):
                        keep_src, keep_tgt = [], []
                        for s, t in chunk:
                            if split == "train" and (reason := keep_pair(len(s), len(t), p.max_len, p.max_ratio)):
                                st.drop(reason)
                                continue
                            keep_src.append(s)
                            keep_tgt.append(t)
                        writers[0].add_many(keep_src)
                        writers[1].add_many(keep_tgt)
                        kept += len(keep_src)
                        bars.update(task, advance=len(chunk), info="")
                except BaseException:
                    for w in writers:
                        w.abort()
                    raise
                st.src_tokens, st.tgt_tokens = writers[0].tokens, writers[1].tokens
                st.pairs = kept
                for w in writers:
                    w.commit()
    finally:
        if pool:
            pool.close()
            pool.join()
    return dtype


# --------------------------------------------------------------------------------------------- main


def _outputs(dest: Path, stats: dict[str, SplitStats], src: str, tgt: str) -> list[Path]:
    files = [dest / "spm.model", dest / "spm.vocab"]
    for split in stats:
        for lang in (src, tgt):
            files += [dest / f"{split}.{lang}.bin", dest / f"{split}.{lang}.idx"]
            if is_test(split):
                files.append(dest / f"{split}.{lang}")
    return files


def _up_to_date(dest: Path, key: str) -> dict | None:
    path = dest / "manifest.json"
    if not path.exists():
        return None
    manifest = json.loads(path.read_text())
    if manifest.get("key") != key:
        return None
    for name, info in manifest["files"].items():
        f = dest / name
        if not f.exists() or f.stat().st_size != info["bytes"]:
            return None
    return manifest


def prepare(cfg: PrepareConfig) -> dict:
    """Run every step of ``nmt prepare`` and return the manifest it wrote (or found up to date)."""
    started = time.time()
    cfg.dest.mkdir(parents=True, exist_ok=True)
    work = cfg.dest / "work"
    work.mkdir(exist_ok=True)
    p = plan(cfg)
    if p.vocab_size < 8:
        raise NmtError(f"--vocab-size {p.vocab_size} is too small (at least 8: four special ids and some pieces)")
    pool = _pool(cfg.workers)
    try:
        stats, sample = clean(cfg, p, work, pool)
    finally:
        if pool:
            pool.close()
            pool.join()
    spm_prefix = cfg.dest / "spm"
    spm_key = _fingerprint({"sample": _file_id(sample), "vocab": p.vocab_size, "type": cfg.model_type, "coverage": cfg.character_coverage,
                            "given": _file_id(cfg.spm_model) if cfg.spm_model else None})
    spm_stamp = work / "spm.json"
    if cfg.spm_model:
        load_spm(cfg.spm_model)
        if cfg.spm_model.resolve() != spm_prefix.with_suffix(".model").resolve():
            shutil.copyfile(cfg.spm_model, spm_prefix.with_suffix(".model"))
            vocab = cfg.spm_model.with_suffix(".vocab")
            if vocab.exists():
                shutil.copyfile(vocab, spm_prefix.with_suffix(".vocab"))
            else:
                proc = load_spm(cfg.spm_model)
                spm_prefix.with_suffix(".vocab").write_text("".join(f"{proc.id_to_piece(i)}\t0\n" for i in range(proc.get_piece_size())))
    elif cfg.force or not spm_stamp.exists() or spm_stamp.read_text() != spm_key or not spm_prefix.with_suffix(".model").exists():
        with console.status(f"training SentencePiece ({cfg.model_type}, {p.vocab_size} pieces)"):
            train_spm(sample, spm_prefix, p.vocab_size, cfg.model_type, threads=max(1, cfg.workers),
                      character_coverage=cfg.character_coverage)
        spm_stamp.write_text(spm_key)
    spm_path = spm_prefix.with_suffix(".model")
    real_vocab = load_spm(spm_path).get_piece_size()

    key = _fingerprint({"clean": json.loads((work / "clean.json").read_text())["key"], "spm": sha256(spm_path),
                        "max_len": p.max_len, "max_ratio": p.max_ratio, "v": __version__})
    if not cfg.force and (manifest := _up_to_date(cfg.dest, key)):
        manifest["skipped"] = True
        return manifest
    dtype = encode(cfg, p, work, stats, spm_path, real_vocab)
    manifest = {
        "format": 1,
        "key": key,
        "corpus": cfg.corpus,
        "src": p.src,
        "tgt": p.tgt,
        "dtype": dtype,
        "vocab": {"model": "spm.model", "size": real_vocab, "type": cfg.model_type, "pad": 0, "unk": 1, "bos": 2, "eos": 3},
        "normalisation": "NFC + Moses punctuation normalisation + control characters removed",
        "limits": {"max_len": p.max_len, "max_ratio": p.max_ratio, "dedup": p.dedup},
        "splits": {s: asdict(v) for s, v in stats.items()},
        "tests": [s for s in stats if is_test(s)],
        "files": {f.name: {"bytes": f.stat().st_size, "sha256": sha256(f)} for f in _outputs(cfg.dest, stats, p.src, p.tgt) if f.exists()},
        "command": cfg.command,
        "version": __version__,
        "seconds": round(time.time() - started, 1),
        **p.extra,
    }
    tmp = cfg.dest / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(cfg.dest / "manifest.json")
    return manifest


def summary_table(manifest: dict) -> Table:
    """Pairs kept and dropped per reason, tokens per side, vocabulary and time, one row per split."""
    src, tgt = manifest["src"], manifest["tgt"]
    reasons = sorted({r for s in manifest["splits"].values() for r in s["dropped"]})
    table = Table(title=f"{manifest['corpus']} → {manifest.get('dest', '')}".rstrip(" →"))
    for col in ["split", "pairs", *[f"dropped: {r}" for r in reasons], f"{src} tokens", f"{tgt} tokens"]:
        table.add_column(col, justify="left" if col == "split" else "right")
    for name, s in manifest["splits"].items():
        table.add_row(name, f"{s['pairs']:,}", *[f"{s['dropped'].get(r, 0):,}" for r in reasons], f"{s['src_tokens']:,}", f"{s['tgt_tokens']:,}")
    v = manifest["vocab"]
    table.caption = f"vocabulary {v['size']:,} ({v['type']}, joint), ids {manifest['dtype']}; {manifest['seconds']} s" + (" (up to date, nothing redone)" if manifest.get("skipped") else "")
    return table
