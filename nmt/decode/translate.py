"""``nmt translate``: raw text in, detokenised translations out, one line for each line, in order.

Lines are read into a buffer, sorted by length and cut into batches by tokens, so a file goes as fast as
it can; with a buffer of one line (the default when stdin is a terminal) each line is answered as soon as
it arrives. Inputs are normalised exactly as ``nmt prepare`` normalised the training data.

On a CPU the batches of a buffer are searched by several workers at once, each on its share of the threads
(Marian's ``--cpu-threads``, CTranslate2's ``inter_threads``). A step of the search is some 150 small torch
calls whose fixed cost one thread pays as fast as two, and small matrix products split poorly across
threads: on the quick-start model two workers of one thread translate 1.2-1.4x as many sentences a second
as one worker of two threads (docs/performance.md). But a worker of one thread reads all of a step's
weights itself, where two threads of one worker share them: a base-sized model (104 MiB of decoder
and output weights) ran at 0.75x with two workers. So by default a model whose step weights fit in
``SMALL_STEP_BYTES`` gets one worker per thread, and a larger one a single worker on all the threads. Each
batch is searched exactly as it would be alone.
"""

from __future__ import annotations

import queue
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, TextIO

import sentencepiece as spm
import torch

from nmt import checkpoint, kernels
from nmt.decode.config import DecodeConfig, decode_config
from nmt.console import console
from nmt.data.text import normalise
from nmt.decode.beam import Hypothesis, Scorer, beam_search
from nmt.decode.order import token_batches
from nmt.device import DTYPES, pick_device, slow_decoding_warning
from nmt.errors import NmtError
from nmt.model.transformer import Transformer
from nmt.tokens import EOS, PAD


# The decoder's and output projection's weights under which one worker per thread pays: the quick-start
# model's 4 MiB gained 1.22-1.40x, a base-sized model's 104 MiB lost (0.75x); both measured on a 2-core Zen 4.
SMALL_STEP_BYTES = 16 * 2**20


@dataclass(frozen=True)
class TranslateConfig:
    """How ``nmt translate`` runs: the search (``decode``, by default the checkpoint's) and where it runs."""

    decode: DecodeConfig | None = None  # None: the [decode] settings the checkpoint carries
    buffer_size: int = 2000
    scores: bool = False
    device: str = "auto"
    dtype: str = "fp32"
    # Batches searched at once on a CPU, each on threads ÷ workers torch threads (at least one); 0: one per
    # torch thread for a model whose step weights fit in SMALL_STEP_BYTES, else one. GPUs always search one
    # batch at a time.
    workers: int = 0


def load_models(paths: list[Path], device: torch.device, dtype: torch.dtype) -> tuple[list[Transformer], dict]:
    """Models of one or more checkpoints (an ensemble must share its vocabulary), and the first's metadata."""
    models, first = [], None
    for path in paths:
        model, meta = checkpoint.load_model(path, device, dtype)
        if device.type == "cpu":
            kernels.install(model)
        if first is None:
            first = meta
        elif checkpoint.vocab_digest(meta) != checkpoint.vocab_digest(first):
            raise NmtError(f"{path}: vocabulary differs from {paths[0]}; an ensemble needs one vocabulary")
        models.append(model)
    assert first is not None
    return models, first


class Translator:
    def __init__(self, checkpoints: list[Path], cfg: TranslateConfig, **decode_overrides: object) -> None:
        """``cfg.decode`` if given, else the first checkpoint's [decode] settings with ``decode_overrides`` on top."""
        if cfg.dtype not in DTYPES:
            raise NmtError(f"--dtype must be fp32, bf16 or fp16, not '{cfg.dtype}'")
        if cfg.workers < 0:
            raise NmtError(f"--workers must be at least 1 (or 0 for nmt's choice by model size), not {cfg.workers}")
        self.device = pick_device(cfg.device)
        if warning := slow_decoding_warning(cfg.dtype, self.device):
            console.print(f"[yellow]--dtype {cfg.dtype}: {warning}")
        self.models, meta = load_models(checkpoints, self.device, DTYPES[cfg.dtype])
        self.cfg = cfg
        self.decode = cfg.decode or decode_config(meta.get("config"), **decode_overrides)
        self.scorer = Scorer(self.models)
        self.spm = spm.SentencePieceProcessor(model_proto=meta["vocab"].numpy().tobytes())
        self.src_lang = meta["manifest"].get("src", "en")
        self.tgt_lang = meta["manifest"].get("tgt", "de")
        self.max_src = min(m.cfg.max_positions for m in self.models) - 1  # room for EOS
        step_bytes = sum(sum(p.numel() * p.element_size() for p in m.decoder.parameters()) + m.output_weight.numel() * m.output_weight.element_size()
                         for m in self.models)
        self.small = step_bytes <= SMALL_STEP_BYTES  # one worker per thread by default

    def tokenize(self, text: str) -> list[int]:
        """SentencePiece ids of ``text``, normalised as ``nmt prepare`` normalised the training data; not truncated."""
        return self.spm.encode(normalise(text, self.src_lang))

    def encode(self, line_no: int, text: str) -> list[int]:
        """``tokenize``, cut to the model's limit (with a warning naming the line)."""
        ids = self.tokenize(text)
        if len(ids) > self.max_src:
            console.print(f"[yellow]line {line_no}: {len(ids)} tokens exceed the model's limit of {self.max_src}; truncated")
            ids = ids[: self.max_src]
        return ids

    def max_len(self, n_src: int, decode: DecodeConfig | None = None) -> int:
        return (decode or self.decode).max_output_len(n_src, min(m.cfg.max_positions for m in self.models))

    def translate_ids(self, sources: list[list[int]], decode: DecodeConfig | None = None,
                      on_done: Callable[[int, list[Hypothesis]], None] | None = None) -> list[list[Hypothesis]]:
        """Hypotheses for each source (ids without EOS), batched by tokens, in input order; searched with
        ``decode`` (``nmt serve``'s per-request settings) instead of the translator's own when given, and
        handed to ``on_done(source index, hypotheses)`` as each source's search ends (from the worker that
        searched it)."""
        d = decode or self.decode
        results: list[list[Hypothesis]] = [[] for _ in sources]
        batches = token_batches([len(s) for s in sources], d.max_tokens)
        threads = torch.get_num_threads()
        workers = 1 if self.device.type != "cpu" else min(self.cfg.workers or (threads if self.small else 1), len(batches))
        if workers <= 1:
            self._search_batches(iter(batches), sources, d, on_done, results)
            return results
        # Longest batches first (token_batches' order), each taken by the next free worker.
        pending: queue.SimpleQueue[list[int]] = queue.SimpleQueue()
        for chunk in batches:
            pending.put(chunk)
        failures: list[BaseException] = []

        def work() -> None:
            # Threads of one's own: the count is per calling thread for torch's OpenMP loops.
            torch.set_num_threads(max(1, threads // workers))
            try:
                self._search_batches(_drain(pending), sources, d, on_done, results)
            except BaseException as e:  # noqa: BLE001 - handed to the caller's thread below
                failures.append(e)
                while _drain_one(pending) is not None:  # the others stop at their next batch
                    pass

        pool = [threading.Thread(target=work, name=f"nmt-search-{i}", daemon=True) for i in range(workers)]
        try:
            for thread in pool:
                thread.start()
            for thread in pool:
                thread.join()
        finally:
            torch.set_num_threads(threads)  # torch's own count, which new threads start from, is global: the workers changed it
        if failures:
            raise failures[0]
        return results

    @torch.inference_mode()
    def _search_batches(self, batches: Iterator[list[int]], sources: list[list[int]], d: DecodeConfig,
                        on_done: Callable[[int, list[Hypothesis]], None] | None, results: list[list[Hypothesis]]) -> None:
        """Search each batch of source indices, writing its sources' hypotheses into ``results``."""
        for chunk in batches:
            width = len(sources[chunk[0]]) + 1
            src = torch.full((len(chunk), width), PAD, dtype=torch.long)
            for row, i in enumerate(chunk):
                src[row, : len(sources[i])] = torch.tensor(sources[i], dtype=torch.long)
                src[row, len(sources[i])] = EOS
            done = None if on_done is None else (lambda row, hyps, chunk=chunk: on_done(chunk[row], hyps))
            hyps = beam_search(self.scorer, src.to(self.device), [self.max_len(len(sources[i]), d) for i in chunk],
                               beam=d.beam, alpha=d.lenpen, penalty=d.penalty, nbest=d.nbest, stop=d.stop, on_done=done)
            for i, h in zip(chunk, hyps):
                results[i] = h

    def format(self, line_no: int, hyps: list[Hypothesis], empty: bool) -> str:
        if empty:
            hyps = [Hypothesis([], 0.0, 0.0)] * self.decode.nbest
        texts = [(h.score, self.spm.decode(h.tokens)) for h in hyps[: self.decode.nbest]]
        if self.decode.nbest > 1:
            return "".join(f"{line_no}\t{score:.4f}\t{text}\n" for score, text in texts)
        score, text = texts[0] if texts else (0.0, "")
        return f"{score:.4f}\t{text}\n" if self.cfg.scores else text + "\n"

    def translate_buffer(self, lines: list[tuple[int, str]]) -> list[str]:
        """Formatted output for numbered input lines; empty lines give empty translations without the model."""
        sources = [self.encode(n, text) if text.strip() else [] for n, text in lines]
        real = [i for i, (_, text) in enumerate(lines) if text.strip()]
        hyps = self.translate_ids([sources[i] for i in real])
        by_line: dict[int, list[Hypothesis]] = dict(zip(real, hyps))
        return [self.format(n, by_line.get(i, []), i not in by_line) for i, (n, _) in enumerate(lines)]

    def translate_stream(self, source: BinaryIO, out: TextIO, buffer_size: int) -> int:
        """Translate every line of ``source`` to ``out`` in order; returns the number of lines."""
        count = 0
        buffer: list[tuple[int, str]] = []
        for line_no, text in read_lines(source):
            buffer.append((line_no, text))
            if len(buffer) >= buffer_size:
                count += self._flush(buffer, out)
        return count + self._flush(buffer, out)

    def _flush(self, buffer: list[tuple[int, str]], out: TextIO) -> int:
        if not buffer:
            return 0
        out.write("".join(self.translate_buffer(buffer)))
        out.flush()
        n = len(buffer)
        buffer.clear()
        return n


def _drain(pending: queue.SimpleQueue[list[int]]) -> Iterator[list[int]]:
    """What is left in ``pending``, one item at a time, until it is empty."""
    while (item := _drain_one(pending)) is not None:
        yield item


def _drain_one(pending: queue.SimpleQueue[list[int]]) -> list[int] | None:
    try:
        return pending.get_nowait()
    except queue.Empty:
        return None


def read_lines(source: BinaryIO) -> Iterator[tuple[int, str]]:
    """Numbered lines (from 1) of a byte stream; invalid UTF-8 is replaced and reported on stderr."""
    for line_no, raw in enumerate(iter(source.readline, b""), start=1):
        raw = raw.rstrip(b"\r\n")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("utf-8", errors="replace")
            print(f"nmt: warning: line {line_no}: invalid UTF-8 replaced by U+FFFD", file=sys.stderr)
        yield line_no, text
