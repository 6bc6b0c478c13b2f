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
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from nmt.decode.penalty import length_penalty
from nmt.decode.incremental import DecoderState, decode_step, init_state
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

    def start(self, src: Tensor, beam: int) -> list[DecoderState]:
        """Encode ``src`` (N, S) once; ``beam`` decoder rows per sentence."""
        return [init_state(model, model.encode(src), beam) for model in self.models]

    def step(self, tokens: Tensor, states: list[DecoderState]) -> Tensor:
        """Next-token log-probabilities (R, V) of the prefixes ending in ``tokens`` (R,): a fresh tensor."""
        lprobs = [decode_step(model, tokens, state) for model, state in zip(self.models, states)]
        if len(lprobs) == 1:
            return lprobs[0]
        return torch.logsumexp(torch.stack(lprobs), dim=0) - math.log(len(lprobs))

    @staticmethod
    def reorder(states: list[DecoderState], rows: Tensor, sentences: Tensor | None, beam: int) -> None:
        for s in states:
            s.reorder(rows, sentences, beam)


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
    results: list[list[Hypothesis]] = [[] for _ in range(src.size(0))]

    def done(i: int, hyps: list[Hypothesis]) -> None:
        results[i] = hyps
        if on_done is not None:
            on_done(i, hyps)

    search = BeamSearch(scorer, beam, alpha, penalty, nbest, stop, done)
    search.add(src, max_lens, list(range(src.size(0))))
    while search.sentences:
        search.step()
    return results


class BeamSearch:
    """A batched beam search that sentences can join between steps (continuous batching).

    ``add`` encodes sentences and lets them join the search at the next step; ``step`` extends every live
    sentence's hypotheses by one token and hands each sentence whose search ended to ``on_done(key,
    hypotheses)``, where ``key`` is what ``add`` was given for it. Each sentence is searched as a batch of one
    would search it (its rows only ever compete with each other; a late joiner's rows attend to their own
    positions only), so what it gets does not depend on what shared the batch, nor on when it joined.
    """

    def __init__(self, scorer: Scorer, beam: int = 4, alpha: float = 0.6, penalty: str = "gnmt", nbest: int = 1,
                 stop: str = "beam", on_done: Callable[[int, list[Hypothesis]], None] | None = None) -> None:
        self.scorer, self.k, self.alpha, self.penalty, self.nbest, self.stop = scorer, beam, alpha, penalty, nbest, stop
        self.on_done = on_done
        self.states: list[DecoderState] = []
        self.vocab = scorer.models[0].cfg.vocab_size
        self._never: Tensor | None = None  # tokens no output contains, on the device
        self._eos_only: Tensor | None = None  # 0 at EOS, -inf elsewhere: what a row at its limit may add
        self.finished: dict[int, list[Hypothesis]] = {}

    @property
    def sentences(self) -> int:
        """How many sentences are still searching."""
        return len(self.keys) if self.states else 0

    @property
    def width(self) -> int:
        """The longest live source, EOS included (0 when none): the padded source tokens of the batch are
        ``sentences × width``."""
        return max(self.src_lens) if self.sentences else 0

    def add(self, src: Tensor, max_lens: list[int], keys: list[int]) -> None:
        """Let the sentences ``src`` (N, S) join, with output limits ``max_lens`` (EOS included) and keys."""
        device, n, k = src.device, src.size(0), self.k
        lens = (src != PAD).sum(1).tolist()
        if not self.sentences:  # a fresh search: the first step decodes one row per sentence, as a batch of one does
            self.states = self.scorer.start(src, 1)
            self.t = 0  # the search's step
            self.r = 1  # rows per sentence
            self.keys, self.src_lens = list(keys), lens
            self.begin = torch.zeros(n, dtype=torch.long, device=device)
            self.limits = torch.tensor(max_lens, device=device)
            self.bound_penalty = self._bound_penalty(max_lens, device)
            self.lowest = torch.full((n,), float("-inf"), dtype=torch.float64, device=device)
            self.count = torch.zeros(n, dtype=torch.long, device=device)
            self.scores = torch.zeros(n, 1, device=device)
            self.history = torch.zeros(n, 0, dtype=torch.long, device=device)
            self.history_base = 0  # the step of the history's first column
            self.last = torch.full((n,), BOS, dtype=torch.long, device=device)
            self.limit_steps = set(max_lens)  # known on the host: no device check at steps where no sentence ends
            self._never = torch.tensor([PAD, BOS], device=device)
            self._eos_only = torch.full((self.vocab,), float("-inf"), device=device)
            self._eos_only[EOS] = 0.0
            for key in keys:
                self.finished[key] = []
            return
        if self.r < k:  # the rows of the sentences already here open to the beam first (the extra ones dead)
            self._open_beam()
        # The joiners get k rows at once, all BOS, the first alive and the others dead (-inf): their first
        # step then extends the one row only, as a fresh search's does.
        for state, joining in zip(self.states, self.scorer.start(src, k)):
            state.join(joining)
        self.keys += keys
        self.src_lens += lens
        self.begin = torch.cat([self.begin, self.begin.new_full((n,), self.t)])
        self.limits = torch.cat([self.limits, torch.tensor(max_lens, device=device) + self.t])
        self.bound_penalty = torch.cat([self.bound_penalty, self._bound_penalty(max_lens, device)])
        self.lowest = torch.cat([self.lowest, self.lowest.new_full((n,), float("-inf"))])
        self.count = torch.cat([self.count, self.count.new_zeros(n)])
        first = self.scores.new_full((n, k), float("-inf"))
        first[:, 0] = 0.0
        self.scores = torch.cat([self.scores, first])
        self.history = torch.cat([self.history, self.history.new_full((n * k, self.history.size(1)), PAD)])
        self.last = torch.cat([self.last, self.last.new_full((n * k,), BOS)])
        self.limit_steps |= {m + self.t for m in max_lens}
        for key in keys:
            self.finished[key] = []

    def _bound_penalty(self, max_lens: list[int], device: torch.device) -> Tensor:
        # In float64, as the scores of finished hypotheses are: the stopping test compares the two.
        return torch.tensor([length_penalty(m, self.alpha, self.penalty) for m in max_lens], dtype=torch.float64, device=device)

    def _open_beam(self) -> None:
        """Rows per sentence 1 → k before the first step (a second ``add`` before any step)."""
        m, k = self.scores.size(0), self.k
        rows = torch.arange(m, device=self.scores.device).repeat_interleave(k)
        self.scorer.reorder(self.states, rows, None, k)
        self.scores = torch.cat([self.scores, self.scores.new_full((m, k - 1), float("-inf"))], 1)
        self.history, self.last = self.history[rows], self.last[rows]
        self.r = k

    def step(self) -> None:
        """Extend every live sentence by one token; hand over those whose search ended."""
        k, t, alpha, penalty = self.k, self.t, self.alpha, self.penalty
        scores = self.scores
        m, r = scores.shape
        device = scores.device
        lprobs = self.scorer.step(self.last, self.states)  # a fresh tensor, changed in place below
        vocab = lprobs.size(-1)
        assert self._never is not None
        lprobs.index_fill_(1, self._never, float("-inf"))
        if t + 1 in self.limit_steps:  # the last allowed position of some sentences: only EOS may come there
            at_limit = (self.limits == t + 1).repeat_interleave(r)
            lprobs = torch.where(at_limit[:, None], lprobs + self._eos_only, lprobs)
        # The best 2k extensions of a sentence are among the best 2k of each of its r rows: a top-k per row
        # first, then over the r × 2k survivors (cheaper than one over r × V).
        width = min(2 * k, vocab)
        row_top, row_token = lprobs.topk(width, dim=1)  # (m·r, 2k)
        candidates = scores[:, :, None] + row_top.view(m, r, width)
        top_scores, flat = candidates.view(m, r * width).topk(min(2 * k, r * width), dim=1)
        if flat.size(1) < 2 * k:  # fewer candidates than 2k (a tiny vocabulary): the rest are dead ends
            missing = 2 * k - flat.size(1)
            top_scores = torch.cat([top_scores, top_scores.new_full((m, missing), float("-inf"))], 1)
            flat = torch.cat([flat, flat.new_zeros(m, missing)], 1)
        top_beam, top_token = flat // width, row_token.view(m, r * width).gather(1, flat)
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
        finished_now = int(done.sum())
        if finished_now:
            gone = torch.nonzero(done).flatten().tolist()
            for i in gone:
                key = self.keys[i]
                hyps = sorted(self.finished.pop(key), key=lambda h: -h.score)[: self.nbest]
                if self.on_done is not None:
                    self.on_done(key, hyps)
        if finished_now == m:
            self.states = []
            return
        if finished_now:
            keep = torch.nonzero(~done).flatten()
            kept = keep.tolist()
            self.keys = [self.keys[i] for i in kept]
            self.src_lens = [self.src_lens[i] for i in kept]
            alive_beam, alive_token, alive_scores = alive_beam[keep], alive_token[keep], alive_scores[keep]
            self.limits, self.bound_penalty = self.limits[keep], self.bound_penalty[keep]
            self.lowest, self.count, self.begin = self.lowest[keep], self.count[keep], self.begin[keep]
            base = keep[:, None] * r
        else:
            keep = None
            base = torch.arange(m, device=device)[:, None] * r
        rows = (base + alive_beam).flatten()
        history = self.history.index_select(0, rows)
        if keep is not None:  # the columns before the oldest remaining sentence's start hold no token of anyone's
            first = int(self.begin.min())
            if first > self.history_base:
                history, self.history_base = history[:, first - self.history_base :], first
        self.history = torch.cat([history, alive_token.view(-1, 1)], dim=1)
        width = max(self.src_lens) if keep is not None else None
        for state in self.states:
            state.reorder(rows, keep, k, width)
        self.last = alive_token.flatten()
        self.scores = alive_scores
        self.r = k

    def _finish(self, finishing: Tensor, top_scores: Tensor, top_beam: Tensor, r: int) -> None:
        """Move the hypotheses that end with EOS at this step into their sentences' finished lists, which keep
        their ``k`` best (only these hypotheses are read back to the host), and update the lowest score of
        every live sentence's finished list (-inf while it holds fewer than ``nbest``)."""
        where = torch.nonzero(finishing)  # (F, 2): (live sentence, candidate)
        i, j = where[:, 0], where[:, 1]
        rows = i * r + top_beam[i, j]  # r rows per sentence
        logprobs = top_scores[i, j].tolist()
        tokens = self.history.index_select(0, rows).tolist()
        begins = self.begin[i].tolist()
        touched: dict[int, int] = {}
        for a, toks, logprob, begin in zip(i.tolist(), tokens, logprobs, begins):
            length = self.t + 1 - begin  # tokens with EOS
            key = self.keys[a]
            self.finished[key].append(Hypothesis(toks[begin - self.history_base :], logprob / length_penalty(length, self.alpha, self.penalty), logprob))
            touched[a] = key
        lowest = self.lowest.clone()
        for a, key in touched.items():
            hyps = sorted(self.finished[key], key=lambda h: -h.score)[: self.k]
            self.finished[key] = hyps
            if len(hyps) >= self.nbest:
                lowest[a] = hyps[-1].score
        self.lowest = lowest


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
