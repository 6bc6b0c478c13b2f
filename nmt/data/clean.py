"""The cleaning stage of ``nmt prepare``: normalise every split, drop empty (and duplicate) training pairs,
and draw the bounded sample SentencePiece is trained on. Streams in chunks through a worker pool."""

from __future__ import annotations

import hashlib
import itertools
import json
import multiprocessing as mp
import multiprocessing.pool
import random
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

from nmt import __version__, atomic
from nmt.console import progress
from nmt.data.plan import Plan, PrepareConfig, SplitStats, file_id, fingerprint, is_test
from nmt.data.text import normalise, read_parallel
from nmt.errors import NmtError

CHUNK = 5000
T = TypeVar("T")
R = TypeVar("R")


def chunks(items: Iterable[T], size: int = CHUNK) -> Iterator[list[T]]:
    """Consecutive lists of ``size`` items (the last one shorter)."""
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def pool_map(pool: multiprocessing.pool.Pool | None, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
    """``fn`` over ``items`` in order, in the pool's workers when there is a pool."""
    return pool.imap(fn, items) if pool else map(fn, items)


def make_pool(workers: int, initializer: Callable[..., None] | None = None, initargs: tuple = ()) -> multiprocessing.pool.Pool | None:
    """A pool of ``workers`` spawned processes, or None for one worker (work in this process)."""
    if workers <= 1:
        if initializer:
            initializer(*initargs)
        return None
    return mp.get_context("spawn").Pool(workers, initializer, initargs)


def _normalise_chunk(args: tuple[list[tuple[str, str]], str, str]) -> list[tuple[str, str]]:
    pairs, src, tgt = args
    return [(normalise(a, src), normalise(b, tgt)) for a, b in pairs]


def _tee_raw(stream: Iterator[tuple[str, str]], files: list) -> Iterator[tuple[str, str]]:
    for a, b in stream:
        files[0].write(a.replace("\n", " ") + "\n")
        files[1].write(b.replace("\n", " ") + "\n")
        yield a, b


class Reservoir:
    """A uniform sample of at most ``size`` texts from a stream of unknown length (Algorithm R)."""

    def __init__(self, size: int, seed: int = 1234) -> None:
        self.size, self.seen, self.items = size, 0, []
        self.rng = random.Random(seed)

    def add(self, text: str) -> None:
        self.seen += 1
        if len(self.items) < self.size:
            self.items.append(text)
        elif (j := self.rng.randrange(self.seen)) < self.size:
            self.items[j] = text


def clean(cfg: PrepareConfig, p: Plan, work: Path, workers: int) -> tuple[dict[str, SplitStats], Path]:
    """Normalise every split, drop empty pairs (and duplicates with --dedup) outside test sets.

    Writes ``work/{split}.{lang}`` and, for test sets, the original text as ``dest/{split}.{lang}``
    (references for scoring must be the untouched text). Returns per-split stats and the SentencePiece sample.
    """
    stamp = work / "clean.json"
    key = fingerprint({"v": __version__, "splits": {s: [[file_id(x.src), file_id(x.tgt), x.sgml] for x in v] for s, v in p.splits.items()},
                       "dedup": p.dedup, "sample": cfg.spm_sample, "langs": [p.src, p.tgt]})
    sample = work / "spm.sample.txt"
    if not cfg.force and stamp.exists() and sample.exists() and json.loads(stamp.read_text())["key"] == key:
        saved = json.loads(stamp.read_text())["stats"]
        return {s: SplitStats(**v) for s, v in saved.items()}, sample
    stats: dict[str, SplitStats] = {}
    reservoir = Reservoir(cfg.spm_sample)
    pool = make_pool(workers)
    try:
        with progress() as bars:
            for split, sources in p.splits.items():
                st = stats[split] = SplitStats()
                task = bars.add_task(f"clean {split}", total=None, info="")
                with ExitStack() as files:
                    fs, ft = (files.enter_context(atomic.atomic_open(work / f"{split}.{lang}")) for lang in (p.src, p.tgt))
                    raw_files = [files.enter_context(atomic.atomic_open(cfg.dest / f"{split}.{lang}")) for lang in (p.src, p.tgt)] if is_test(split) else []
                    seen: set[bytes] = set()
                    for source in sources:
                        stream = read_parallel(source.src, source.tgt, source.sgml)
                        if raw_files:
                            stream = _tee_raw(stream, raw_files)
                        for chunk in pool_map(pool, _normalise_chunk, ((c, p.src, p.tgt) for c in chunks(stream))):
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
                                    reservoir.add(a)
                                    reservoir.add(b)
                            bars.update(task, advance=len(chunk), info=f"{st.pairs:,} kept")
    finally:
        if pool:
            pool.close()
            pool.join()
    if "train" not in stats or stats["train"].pairs == 0:
        raise NmtError("no training pairs left after cleaning; check the input files")
    atomic.write_text(sample, "".join(t + "\n" for t in reservoir.items if t))
    atomic.write_json(stamp, {"key": key, "stats": {s: asdict(v) for s, v in stats.items()}}, indent=None)
    return stats, sample
