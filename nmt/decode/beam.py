"""Batched beam search over a model's incremental decoding.

Per step, each sentence's k live hypotheses are extended and the 2k best candidates kept; the best k that do
not end in EOS stay alive. The two stopping rules differ in which candidates may finish, and when a
sentence's search ends:

- ``stop="beam"`` (fairseq, Marian, CTranslate2): the EOS candidates among the top k finish (so beam 1 is
  exactly greedy decoding), and a sentence stops once ``beam`` hypotheses have finished.
- ``stop="bound"`` (tensor2tensor's ``beam_search``, as the paper's Table 2 was decoded): the EOS candidates
  among all 2k are offered to the sentence's finished set, which keeps its ``beam`` best (``grow_finished``),
  and a sentence stops once the lowest score in that set is greater than its best live log-probability
  divided by the penalty of the maximum length (log-probabilities only fall, and the penalty only grows, so
  no live hypothesis can then enter the set). tensor2tensor tests the bound for the whole batch at once; here
  each sentence stops on its own, which gives each sentence the result of a batch of one, whatever else is
  in the batch. With ``nbest`` > 1, a sentence also waits for ``nbest`` finished hypotheses.

Finished sentences leave the batch, so no work is spent on them.

The bookkeeping stays on the device as tensors; only the few hypotheses that finish at a step are read back
to the host, so the per-step cost does not grow with the number of sentences in Python.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from nmt.decode.penalty import length_penalty
from nmt.decode.incremental import DecoderState, StepModel, arrange, decode_step, encode, init_state
from nmt.model.transformer import Transformer
from nmt.tokens import BOS, EOS, PAD


@dataclass
class Hypothesis:
    tokens: list[int]  # without BOS and EOS
    score: float  # log-probability divided by the length penalty
    logprob: float


class Scorer:
    """One model or an ensemble: next-token log-probabilities for a batch of prefixes.

    An ensemble scores with the log of the models' averaged probabilities (fairseq's EnsembleModel).
    """

    def __init__(self, models: list[Transformer]) -> None:
        self.models = models
        self.arranged: list[StepModel | None] = [None] * len(models)  # kept across batches
        self.lock = threading.Lock()  # workers searching batches at once arrange the weights once between them

    def start(self, src: Tensor, beam: int) -> list[DecoderState]:
        """Encode ``src`` (N, S) once; ``beam`` decoder rows per sentence."""
        with self.lock:
            self.arranged = [arrange(model, kept) for model, kept in zip(self.models, self.arranged)]
        return [init_state(model, encode(model, src, arranged), beam, arranged) for model, arranged in zip(self.models, self.arranged)]

    def step(self, tokens: Tensor, states: list[DecoderState] | list[list[DecoderState]]) -> Tensor:
        """Next-token log-probabilities (R, V) of the prefixes ending in ``tokens`` (R,): a fresh tensor.
        ``states``: each model's state, or each model's states of a search's cohorts (``decode_step``)."""
        lprobs = [decode_step(model, tokens, state) for model, state in zip(self.models, states)]
        if len(lprobs) == 1:
            return lprobs[0]
        return torch.logsumexp(torch.stack(lprobs), dim=0) - math.log(len(lprobs))

    @staticmethod
    def reorder(states: list[DecoderState], rows: Tensor, sentences: Tensor | None, beam: int) -> None:
        for s in states:
            s.reorder(rows, sentences, beam)


class BeamSearch:
    """A batched beam search that sentences may join while it runs: ``add`` sources (at any time between
    steps), ``step`` while ``live``; each step returns the sentences whose search ended at it.

    The sentences added at once are a cohort: decoding states of their own (``init_state``), at their own
    step, with their own sources, stepped together with the other cohorts' (``decode_step`` of several
    states: one set of projections, each cohort's attention on its own). A cohort's sentences get as many
    rows as the others' (the first row scored 0, the rest -inf, so that their first step is the one-row step
    of a search of their own). So every sentence is searched as in a batch of its own, whatever shares its
    steps: ``nmt serve`` keeps its steps full of the requests that arrive while others decode, instead of
    ending each batch with its longest sentences alone, and pays each step's fixed cost once for all.
    Attention costs a few calls per cohort and layer, so callers add in cohorts of several sentences.
    """

    def __init__(self, scorer: Scorer, beam: int = 4, alpha: float = 0.6, penalty: str = "gnmt", nbest: int = 1,
                 stop: str = "beam") -> None:
        self.scorer, self.k, self.alpha, self.penalty, self.nbest, self.stop = scorer, beam, alpha, penalty, nbest, stop
        self.cohorts: list[list[DecoderState]] = []  # per cohort, in row order: each model's state
        self.sizes: list[int] = []  # sentences per cohort
        self.t = 0  # steps taken, counted from the earliest cohort's start
        # Per sentence, host side: the caller's id, the step it joined at, its finished hypotheses.
        self.ids: list[int] = []
        self.starts: list[int] = []
        self.finished: list[list[Hypothesis]] = []
        self._firsts_made: Tensor | None = None

    @property
    def live(self) -> int:
        """Sentences still searching."""
        return len(self.ids)

    @torch.no_grad()
    def add(self, src: Tensor, max_lens: list[int], ids: list[int]) -> None:
        """Search the sentences ``src`` (N, S) too, ``max_lens[i]`` output tokens at most (EOS included); ``step``
        returns their hypotheses under ``ids``."""
        n, device = src.size(0), src.device
        limits = torch.tensor(max_lens, device=device)
        # In float64, as the scores of finished hypotheses are: the stopping test compares the two.
        bound_penalty = torch.tensor([length_penalty(m, self.alpha, self.penalty) for m in max_lens], dtype=torch.float64, device=device)
        lowest = torch.full((n,), float("-inf"), dtype=torch.float64, device=device)
        count = torch.zeros(n, dtype=torch.long, device=device)
        if not self.cohorts:
            # The k hypotheses of a sentence are all BOS at first: the first step decodes one row per sentence
            # (r = 1), and the beam opens to k rows after it.
            self.cohorts, self.sizes = [self.scorer.start(src, 1)], [n]
            self.t = 0
            self.scores = torch.zeros(n, 1, device=device)  # (sentences, rows per sentence r)
            self.history = torch.zeros(n, 0, dtype=torch.long, device=device)
            self.last = torch.full((n,), BOS, dtype=torch.long, device=device)
            self.limits, self.bound_penalty = limits, bound_penalty  # the limits count steps from the first column
            # The lowest score of each sentence's finished set (its best ``beam``), -inf until ``nbest`` have
            # finished: what the bound compares with.
            self.lowest, self.count = lowest, count  # count: hypotheses finished so far
            self.ids, self.starts, self.finished = list(ids), [0] * n, [[] for _ in range(n)]
            self.eos_only = torch.full((1, self.scorer.models[0].cfg.vocab_size), float("-inf"), device=device)
            self.eos_only[:, EOS] = 0.0
            self.never = torch.tensor([PAD, BOS], device=device)  # tokens no output contains
        else:
            r = self.scores.size(1)
            self.cohorts.append(self.scorer.start(src, r))
            self.sizes.append(n)
            fresh = torch.full((n, r), float("-inf"), device=device)
            fresh[:, 0] = 0.0  # one live row: the others are its copies, which must not be extended as well
            self.scores = torch.cat([self.scores, fresh])
            self.history = torch.cat([self.history, self.history.new_full((n * r, self.t), PAD)])
            self.last = torch.cat([self.last, self.last.new_full((n * r,), BOS)])
            self.limits = torch.cat([self.limits, limits + self.t])
            self.bound_penalty = torch.cat([self.bound_penalty, bound_penalty])
            self.lowest, self.count = torch.cat([self.lowest, lowest]), torch.cat([self.count, count])
            self.ids += ids
            self.starts += [self.t] * n
            self.finished += [[] for _ in range(n)]
        self.limit_steps = set(self.limits.tolist())  # known on the host: no device check at the steps where no sentence ends

    @torch.no_grad()
    def step(self) -> list[tuple[int, list[Hypothesis]]]:
        """One step of every live sentence; the (id, ``nbest`` best hypotheses, best first) of those whose
        search ended."""
        assert self.cohorts, "nothing to search: add sentences first"
        k, t = self.k, self.t
        m, r = self.scores.shape
        device = self.scores.device
        states = self.cohorts[0] if len(self.cohorts) == 1 else [list(s) for s in zip(*self.cohorts)]  # per model
        lprobs = self.scorer.step(self.last, states)  # a fresh tensor, changed in place below
        lprobs.index_fill_(1, self.never, float("-inf"))
        if t + 1 in self.limit_steps:  # the last allowed position of some sentences: only EOS may come there
            at_limit = (self.limits == t + 1).repeat_interleave(r)
            lprobs = torch.where(at_limit[:, None], lprobs + self.eos_only, lprobs)
        top_scores, top_beam, top_token = best_extensions(lprobs, self.scores, 2 * k)
        del lprobs  # before the next step's (R, V) tensor is made, so that it reuses this one's memory
        is_eos = top_token == EOS
        # The best k candidates that do not end the hypothesis stay alive (stable: best first).
        order = torch.sort(is_eos.to(torch.int8), dim=1, stable=True).indices[:, :k]
        alive_scores = top_scores.gather(1, order).masked_fill(is_eos.gather(1, order), float("-inf"))
        alive_beam, alive_token = top_beam.gather(1, order), top_token.gather(1, order)

        may_finish = is_eos if self.stop == "bound" else is_eos[:, :k]
        finishing = may_finish & torch.isfinite(top_scores[:, : may_finish.size(1)])
        if bool(finishing.any()):
            self._finish(finishing, top_scores, top_beam, r)
            self.count = self.count + finishing.sum(1)
        best_alive = alive_scores[:, 0]
        if self.stop == "beam":
            done = (self.count >= k) | (best_alive == float("-inf"))
        else:  # a sentence with no live hypothesis left is done too: -inf / penalty is -inf
            done = (self.lowest > best_alive.double() / self.bound_penalty) | (best_alive == float("-inf"))
        if t + 1 in self.limit_steps:
            done |= self.limits <= t + 1
        self.t = t + 1
        if not bool(done.any()):
            base = self._firsts(m) if r == k else torch.arange(m, device=device)[:, None] * r
            self._advance(base + alive_beam, None, r, alive_token, alive_scores)
            return []
        gone = done.tolist()
        ended = [(self.ids[a], sorted(self.finished[a], key=lambda h: -h.score)[: self.nbest]) for a in range(m) if gone[a]]
        kept = [a for a in range(m) if not gone[a]]
        if not kept:
            self.cohorts, self.sizes, self.ids, self.starts, self.finished = [], [], [], [], []
            return ended
        keep = torch.tensor(kept, device=device)
        alive_beam, alive_token, alive_scores = alive_beam[keep], alive_token[keep], alive_scores[keep]
        self.limits, self.bound_penalty = self.limits[keep], self.bound_penalty[keep]
        self.lowest, self.count = self.lowest[keep], self.count[keep]
        self.ids, self.starts, self.finished = [self.ids[a] for a in kept], [self.starts[a] for a in kept], [self.finished[a] for a in kept]
        self._advance(keep[:, None] * r + alive_beam, (kept, keep), r, alive_token, alive_scores)
        if self.starts[0]:  # the first cohort has left: the history's columns before the next one's start go
            self._rebase()
        return ended

    def _firsts(self, m: int) -> Tensor:
        """The first row of each of ``m`` sentences once the beam is open."""
        if self._firsts_made is None or self._firsts_made.size(0) < m:
            self._firsts_made = torch.arange(max(m, 64), device=self.scores.device)[:, None] * self.k
        return self._firsts_made[:m]

    def _advance(self, rows: Tensor, keep: tuple[list[int], Tensor] | None, r: int, alive_token: Tensor, alive_scores: Tensor) -> None:
        """Continue with the hypotheses ``rows`` (m, k) (indices into the step's rows, ``r`` per sentence) of
        the sentences ``keep`` (their indices as a list and a tensor; all if None); each cohort's states take
        theirs."""
        kept = None if keep is None else keep[0]
        rows = rows.flatten()
        self.history = torch.cat([self.history.index_select(0, rows), alive_token.view(-1, 1)], dim=1)
        self.last = alive_token.flatten()
        self.scores = alive_scores
        k = self.k
        if len(self.cohorts) == 1:
            self.scorer.reorder(self.cohorts[0], rows, None if keep is None else keep[1], k)
            if kept is not None:
                self.sizes = [len(kept)]
            return
        cohorts, sizes, old, new = [], [], 0, 0  # old, new: the cohort's first sentence before and after
        for states, size in zip(self.cohorts, self.sizes):
            here = list(range(old, old + size)) if kept is None else [a - old for a in kept if old <= a < old + size]
            if here:
                ours = rows[new * k : (new + len(here)) * k]
                sentences = None if len(here) == size else torch.tensor(here, device=rows.device)
                self.scorer.reorder(states, ours - old * r if old else ours, sentences, k)
                cohorts.append(states)
                sizes.append(len(here))
            old, new = old + size, new + len(here)
        self.cohorts, self.sizes = cohorts, sizes

    def _rebase(self) -> None:
        """Count steps from the earliest remaining sentence's start: the history's columns before it go."""
        first = min(self.starts)
        self.t -= first
        self.starts = [s - first for s in self.starts]
        self.limits = self.limits - first
        self.limit_steps = set(self.limits.tolist())
        self.history = self.history[:, first:]

    def _finish(self, finishing: Tensor, top_scores: Tensor, top_beam: Tensor, r: int) -> None:
        """Move the hypotheses that end with EOS at this step into their sentences' finished lists, which keep
        their ``beam`` best (only these hypotheses are read back to the host), and update ``lowest``: the
        lowest score of each sentence's finished list, -inf while it holds fewer than ``nbest``."""
        where = torch.nonzero(finishing)  # (F, 2): (sentence, candidate)
        i, j = where[:, 0], where[:, 1]
        rows = i * r + top_beam[i, j]  # r rows per sentence
        logprobs = top_scores[i, j].tolist()
        tokens = self.history.index_select(0, rows).tolist()
        touched: set[int] = set()
        for a, toks, logprob in zip(i.tolist(), tokens, logprobs):
            start = self.starts[a]
            lp = length_penalty(self.t + 1 - start, self.alpha, self.penalty)
            self.finished[a].append(Hypothesis(toks[start:], logprob / lp, logprob))
            touched.add(a)
        lowest = self.lowest.clone()
        for a in touched:
            hyps = sorted(self.finished[a], key=lambda h: -h.score)[: self.k]
            self.finished[a] = hyps
            if len(hyps) >= self.nbest:
                lowest[a] = hyps[-1].score
        self.lowest = lowest


@torch.no_grad()
def beam_search(
    scorer: Scorer, src: Tensor, max_lens: list[int], beam: int = 4, alpha: float = 0.6,
    penalty: str = "gnmt", nbest: int = 1, stop: str = "beam", on_done: Callable[[int, list[Hypothesis]], None] | None = None,
) -> list[list[Hypothesis]]:
    """Translate a batch src (N, S); ``max_lens[i]`` counts output tokens including EOS.

    Returns, per sentence, its ``nbest`` best finished hypotheses, best first. ``on_done(i, hypotheses)``, if
    given, gets them as soon as sentence i's search ends, while the others go on (``nmt serve`` answers its
    client then).
    """
    search = BeamSearch(scorer, beam, alpha, penalty, nbest, stop)
    search.add(src, max_lens, list(range(src.size(0))))
    results: list[list[Hypothesis]] = [[] for _ in max_lens]
    while search.live:
        for i, hyps in search.step():
            results[i] = hyps
            if on_done is not None:
                on_done(i, hyps)
    return results


CHUNK = 32  # vocabulary entries per chunk in best_extensions: one amax of 32 floats is two AVX-512 registers


def best_extensions(lprobs: Tensor, scores: Tensor, count: int) -> tuple[Tensor, Tensor, Tensor]:
    """The ``count`` best extensions of each sentence: scores (m, count), best first, each with its row within
    the sentence (m, count) and its token (m, count), from the next-token log-probabilities ``lprobs``
    (m·r, V) of r rows per sentence whose scores so far are ``scores`` (m, r). Where fewer than ``count``
    exist (a tiny vocabulary), the rest score -inf.

    Equal, ties apart, to one top-k over each sentence's r × V sums, but a top-k over V entries per row is the
    dearest operation of a step after the matrix products (torch's top-k visits every entry with a branch).
    The vocabulary is cut into chunks of 32: a chunk's best sum is its maximum plus its row's score (a
    vectorised max), and the best ``count`` extensions lie in the ``count`` chunks with the best maxima
    (every chunk outside them is beaten by ``count`` other chunks' maxima, so by ``count`` extensions). Then
    one top-k over those chunks' entries. On a 2-core EPYC (one thread, V = 4,000, beam 4) this took 239 µs
    for 32 sentences instead of 727, and 1.5 ms for 128 instead of 3.6; for fewer than 4 sentences the
    extra calls cost more than they save, and the top-k of each row's best ``count`` goes first.
    """
    m, r = scores.shape
    vocab = lprobs.size(1)
    chunks = -(-vocab // CHUNK)
    if m < 4 or vocab < 4 * CHUNK or r * chunks < count:
        width = min(count, vocab)
        # The best extensions of a sentence are among the best of each of its r rows: a top-k per row first,
        # then over the r × width survivors (cheaper than one over r × V).
        row_top, row_token = lprobs.topk(width, dim=1)  # (m·r, width)
        candidates = scores[:, :, None] + row_top.view(m, r, width)
        top_scores, flat = candidates.view(m, r * width).topk(min(count, r * width), dim=1)
        top_beam, top_token = flat // width, row_token.view(m, r * width).gather(1, flat)
        if flat.size(1) < count:  # fewer candidates than count (a tiny vocabulary): the rest are dead ends
            missing = count - flat.size(1)
            top_scores = torch.cat([top_scores, top_scores.new_full((m, missing), float("-inf"))], 1)
            top_beam = torch.cat([top_beam, top_beam.new_zeros(m, missing)], 1)
            top_token = torch.cat([top_token, top_token.new_zeros(m, missing)], 1)
        return top_scores, top_beam, top_token
    full, tail = divmod(vocab, CHUNK)
    maxima = lprobs[:, : full * CHUNK].unflatten(1, (full, CHUNK)).amax(-1)  # (m·r, full)
    if tail:  # the last chunk holds the last `tail` entries
        maxima = torch.cat([maxima, lprobs[:, full * CHUNK :].amax(-1, keepdim=True)], 1)
    best = maxima.view(m, r, chunks).add_(scores[:, :, None]).view(m, r * chunks).topk(count, dim=1).indices
    row, chunk = best // chunks, best % chunks  # (m, count)
    # Each chosen chunk's 32 entries; the last chunk is read as the last 32 of the row, the entries before
    # its own masked below.
    first = (chunk * CHUNK).clamp_(max=vocab - CHUNK)
    offsets = torch.arange(CHUNK, device=lprobs.device)
    at = ((torch.arange(m, device=lprobs.device)[:, None] * r + row) * vocab + first)[:, :, None] + offsets
    values = lprobs.view(-1)[at].add_(scores.gather(1, row)[:, :, None])  # (m, count, 32)
    if tail:
        values.masked_fill_((chunk == full)[:, :, None] & (offsets < CHUNK - tail), float("-inf"))
    top_scores, pick = values.view(m, count * CHUNK).topk(count, dim=1)
    chosen = pick // CHUNK
    return top_scores, row.gather(1, chosen), first.gather(1, chosen) + pick % CHUNK


@torch.no_grad()
def greedy_search(model: Transformer, src: Tensor, max_lens: list[int]) -> list[list[int]]:
    """Arg-max decoding, the reference that beam 1 must equal (with α = 0)."""
    n = src.size(0)
    scorer = Scorer([model])
    states = scorer.start(src, 1)
    last = torch.full((n,), BOS, dtype=torch.long, device=src.device)
    out: list[list[int]] = [[] for _ in range(n)]
    done = [False] * n
    for t in range(max(max_lens)):
        lprobs = scorer.step(last, states)
        lprobs[:, PAD] = lprobs[:, BOS] = float("-inf")
        for i in range(n):
            if max_lens[i] == t + 1:
                lprobs[i, :EOS] = lprobs[i, EOS + 1 :] = float("-inf")
        last = lprobs.argmax(-1)
        for i, tok in enumerate(last.tolist()):
            if not done[i]:
                if tok == EOS:
                    done[i] = True
                else:
                    out[i].append(tok)
        if all(done):
            break
    return out
