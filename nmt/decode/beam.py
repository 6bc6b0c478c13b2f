"""Batched beam search over a model's incremental decoding.

Per step, each sentence's k live hypotheses are extended and the 2k best candidates kept: those of the
top k that end in EOS join the sentence's finished list (scored with the length penalty), and the best k
that do not stay alive. (Only the top k may finish, so that beam 1 is exactly greedy decoding.)
A sentence stops when its n-th best finished score (n = ``nbest``) can no longer be beaten:
tensor2tensor's rule, comparing it with the best live log-probability under the penalty of the maximum
length (log-probabilities only fall, and the penalty only grows). Finished sentences leave the batch, so no
work is spent on them.

The bookkeeping stays on the device as tensors; only the few hypotheses that finish at a step are read back
to the host, so the per-step cost does not grow with the number of sentences in Python.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from nmt.decode.penalty import length_penalty
from nmt.model.transformer import DecoderState, EncoderOut, Transformer
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

    def start(self, src: Tensor, beam: int, max_len: int) -> list[DecoderState]:
        """Encode ``src`` (N, S) once; ``beam`` decoder rows per sentence, for up to ``max_len`` steps."""
        return [model.init_state(model.encode(src), max_len, beam) for model in self.models]

    def step(self, tokens: Tensor, states: list[DecoderState]) -> Tensor:
        lprobs = [model.decode_step(tokens, state) for model, state in zip(self.models, states)]
        if len(lprobs) == 1:
            return lprobs[0]
        return torch.logsumexp(torch.stack(lprobs), dim=0) - math.log(len(lprobs))

    @staticmethod
    def reorder(states: list[DecoderState], rows: Tensor, sentences: Tensor | None) -> None:
        for s in states:
            s.reorder(rows, sentences)


@torch.no_grad()
def beam_search(
    scorer: Scorer, src: Tensor, max_lens: list[int], beam: int = 4, alpha: float = 0.6,
    penalty: str = "gnmt", nbest: int = 1,
) -> list[list[Hypothesis]]:
    """Translate a batch src (N, S); ``max_lens[i]`` counts output tokens including EOS.

    Returns, per sentence, its ``nbest`` best finished hypotheses, best first.
    """
    device = src.device
    n, k = src.size(0), beam
    steps = max(max_lens)
    states = scorer.start(src, k, steps)
    active = torch.arange(n, device=device)  # original index of each sentence still searching
    limits = torch.tensor(max_lens, device=device)
    # In float64, as the scores of finished hypotheses are: the stopping test compares the two.
    bound_penalty = torch.tensor([length_penalty(m, alpha, penalty) for m in max_lens], dtype=torch.float64, device=device)
    # The nbest-th best finished score of each sentence (-inf until it has nbest), what its search must beat.
    nth_best = torch.full((n,), float("-inf"), dtype=torch.float64, device=device)
    scores = torch.full((n, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # only the first copy of each beam is live at the start
    history = torch.zeros(n * k, 0, dtype=torch.long, device=device)
    last = torch.full((n * k,), BOS, dtype=torch.long, device=device)
    finished: list[list[Hypothesis]] = [[] for _ in range(n)]
    eos_only = torch.full((1, 1, scorer.models[0].cfg.vocab_size), float("-inf"), device=device)
    eos_only[..., EOS] = 0.0
    limit_steps = set(max_lens)  # known on the host: no device check at the steps where no sentence ends
    for t in range(steps):
        m = active.numel()
        lprobs = scorer.step(last, states).view(m, k, -1)
        vocab = lprobs.size(-1)
        lprobs[..., PAD] = float("-inf")
        lprobs[..., BOS] = float("-inf")
        if t + 1 in limit_steps:  # the last allowed position of some sentences: only EOS may come there
            lprobs = torch.where((limits == t + 1)[:, None, None], lprobs + eos_only, lprobs)
        candidates = (scores[:, :, None] + lprobs).view(m, k * vocab)
        top_scores, top_index = candidates.topk(min(2 * k, k * vocab), dim=1)
        top_beam, top_token = top_index // vocab, top_index % vocab
        is_eos = top_token == EOS
        # The best k candidates that do not end the hypothesis stay alive (stable: best first).
        order = torch.sort(is_eos.to(torch.int8), dim=1, stable=True).indices[:, :k]
        alive_scores = top_scores.gather(1, order).masked_fill(is_eos.gather(1, order), float("-inf"))
        alive_beam, alive_token = top_beam.gather(1, order), top_token.gather(1, order)

        finishing = is_eos[:, :k] & torch.isfinite(top_scores[:, :k])
        if bool(finishing.any()):
            nth_best = _finish(finishing, top_scores, top_beam, history, active, t + 1, alpha, penalty, nbest, finished, nth_best, k)
        best_alive = alive_scores[:, 0]
        done = ~torch.isfinite(best_alive) | (limits <= t + 1) | (nth_best >= best_alive.double() / bound_penalty)
        if bool(done.all()):
            break
        keep = None if not bool(done.any()) else torch.nonzero(~done).flatten()
        if keep is not None:
            alive_beam, alive_token, alive_scores = alive_beam[keep], alive_token[keep], alive_scores[keep]
            active, limits, bound_penalty, nth_best = active[keep], limits[keep], bound_penalty[keep], nth_best[keep]
            base = keep[:, None] * k
        else:
            base = torch.arange(m, device=device)[:, None] * k
        rows = (base + alive_beam).flatten()
        history = torch.cat([history.index_select(0, rows), alive_token.view(-1, 1)], dim=1)
        scorer.reorder(states, rows, keep)
        last = alive_token.flatten()
        scores = alive_scores
    for hyps in finished:
        hyps.sort(key=lambda h: -h.score)
    return finished


def _finish(finishing: Tensor, top_scores: Tensor, top_beam: Tensor, history: Tensor, active: Tensor, length: int,
            alpha: float, penalty: str, nbest: int, finished: list[list[Hypothesis]], nth_best: Tensor, k: int) -> Tensor:
    """Move the hypotheses that end with EOS at this step into their sentences' finished lists (only these
    are read back to the host); returns the updated n-th best finished score of every active sentence."""
    where = torch.nonzero(finishing)  # (F, 2): (active sentence, candidate)
    i, j = where[:, 0], where[:, 1]
    rows = i * k + top_beam[i, j]
    logprobs = top_scores[i, j].tolist()
    tokens = history.index_select(0, rows).tolist()
    lp = length_penalty(length, alpha, penalty)
    sentences = active[i].tolist()
    touched: dict[int, int] = {}
    for a, sent, toks, logprob in zip(i.tolist(), sentences, tokens, logprobs):
        finished[sent].append(Hypothesis(toks, logprob / lp, logprob))
        touched[a] = sent
    nth_best = nth_best.clone()
    for a, sent in touched.items():
        hyps = sorted(finished[sent], key=lambda h: -h.score)[:nbest]
        finished[sent] = hyps
        if len(hyps) >= nbest:
            nth_best[a] = hyps[-1].score
    return nth_best


@torch.no_grad()
def greedy_search(model: Transformer, src: Tensor, max_lens: list[int]) -> list[list[int]]:
    """Arg-max decoding, the reference that beam 1 must equal (with α = 0)."""
    n = src.size(0)
    scorer = Scorer([model])
    states = scorer.start(src, 1, max(max_lens))
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
