"""The encoding stage of ``nmt prepare``: SentencePiece ids for every split, length filters on training
pairs, and the memory-mapped token files. Streams in chunks through a pool of worker processes."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import sentencepiece

from nmt.console import progress
from nmt.data.binarize import TokenWriter, token_dtype
from nmt.data.clean import chunks, make_pool, pool_map
from nmt.data.plan import Plan, PrepareConfig, SplitStats
from nmt.data.spm import load_spm

_worker_spm: sentencepiece.SentencePieceProcessor | None = None  # one per worker process


def _init_encoder(model: str) -> None:
    global _worker_spm
    _worker_spm = load_spm(Path(model))


def _encode_chunk(pairs: list[tuple[str, str]]) -> list[tuple[np.ndarray, np.ndarray, int, int]]:
    """(source ids, target ids, source words, target words) for each pair; words are whitespace-separated."""
    assert _worker_spm is not None
    srcs = _worker_spm.encode([a for a, _ in pairs])
    tgts = _worker_spm.encode([b for _, b in pairs])
    return [(np.asarray(s, dtype=np.int32), np.asarray(t, dtype=np.int32), len(a.split()), len(b.split()))
            for s, t, (a, b) in zip(srcs, tgts, pairs)]


def _read_clean(work: Path, split: str, src: str, tgt: str) -> Iterator[tuple[str, str]]:
    with open(work / f"{split}.{src}", encoding="utf-8") as fs, open(work / f"{split}.{tgt}", encoding="utf-8") as ft:
        for a, b in zip(fs, ft):
            yield a.rstrip("\n"), b.rstrip("\n")


def keep_pair(n_src: int, n_tgt: int, words_src: int, words_tgt: int, max_len: int, max_ratio: float, ratio_min_words: int) -> str | None:
    """The reason to drop a training pair, or None to keep it.

    ``max_len`` bounds the subword tokens of each side (what the model must hold). The length ratio is that
    of Moses' clean-corpus-n.perl, on words, and only where it means something: a pair whose longer side has
    at most ``ratio_min_words`` words is never dropped for its ratio ("File" → "Datei" is one word against
    two subwords; "Print preview" → "Druckvorschau" two words against one).
    """
    if n_src == 0 or n_tgt == 0:
        return "empty"
    if n_src > max_len or n_tgt > max_len:
        return "too long"
    longer, shorter = max(words_src, words_tgt), min(words_src, words_tgt)
    if longer > ratio_min_words and longer > max_ratio * max(shorter, 1):
        return "length ratio"
    return None


def encode(cfg: PrepareConfig, p: Plan, work: Path, stats: dict[str, SplitStats], spm_path: Path, vocab_size: int) -> str:
    """Encode every split with SentencePiece in worker processes and write the token files; returns their dtype."""
    dtype = token_dtype(vocab_size)
    pool = make_pool(cfg.workers, _init_encoder, (str(spm_path),))
    try:
        with progress() as bars:
            for split, st in stats.items():
                task = bars.add_task(f"encode {split}", total=st.pairs, info="")
                writers = [TokenWriter(cfg.dest / f"{split}.{lang}", dtype) for lang in (p.src, p.tgt)]
                kept = 0
                try:
                    for chunk in pool_map(pool, _encode_chunk, chunks(_read_clean(work, split, p.src, p.tgt))):
                        keep_src, keep_tgt = [], []
                        for s, t, ws, wt in chunk:
                            if split == "train" and (reason := keep_pair(len(s), len(t), ws, wt, p.max_len, p.max_ratio, p.ratio_min_words)):
                                st.drop(reason)
                                continue
                            keep_src.append(s)
                            keep_tgt.append(t)
                        writers[0].add_many(keep_src)
                        writers[1].add_many(keep_tgt)
                        kept += len(keep_src)
                        bars.update(task, advance=len(chunk), info="")
                    for w in writers:
                        w.commit()
                except BaseException:  # a kill, a full disk: no temporary left behind (a committed one is gone already)
                    for w in writers:
                        w.abort()
                    raise
                st.src_tokens, st.tgt_tokens = writers[0].tokens, writers[1].tokens
                st.pairs = kept
    finally:
        if pool:
            pool.close()
            pool.join()
    return dtype
