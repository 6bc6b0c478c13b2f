"""Batched beam search over a model's incremental decoding.

Per step, each sentence's k live hypotheses are extended and the 2k best candidates kept: those of the
top k that end in EOS join the sentence's finished list (scored with the length penalty), and the best k
that do not stay alive. (Only the top k may finish, so that beam 1 is exactly greedy decoding.)
A sentence stops when its best finished score can no longer be beaten: tensor2tensor's rule, comparing it
with the best live log-probability under the penalty of the maximum length (log-probabilities only fall,
and the penalty only grows). Finished sentences leave the batch, so no work is spent on them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from nmt.tokens import BOS, EOS, PAD
from nmt.decode.penalty import length_penalty
from nmt.model.transformer import DecoderState, EncoderOut, Transformer


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

    def start(self, src: Tensor, rows: Tensor, max_len: int) -> list[DecoderState]:
        """Encode ``src`` (B, S) once; decoder rows are ``rows`` (indices into the batch, e.g. repeated k times)."""
        states = []
        for model in self.models:
            enc = model.encode(src)
            enc = EncoderOut(enc.memory.index_select(0, rows), enc.src_mask.index_select(0, rows))
            states.append(model.init_state(enc, max_len))
        return states

    def step(self, tokens: Tensor, states: list[DecoderState]) -> Tensor:
        lprobs = [model.decode_step(tokens, state) for model, state in zip(self.models, states)]
        if len(lprobs) == 1:
            return lprobs[0]
        return torch.logsumexp(torch.stack(lprobs), dim=0) - math.log(len(lprobs))

    @staticmethod
    def select(states: list[DecoderState], rows: Tensor) -> list[DecoderState]:
        return [s.select(rows) for s in states]


@torch.no_grad()
def beam_search(
    scorer: Scorer, src: Tensor, max_lens: list[int], beam: int = 4, alpha: float = 0.6,
    penalty: str = "gnmt", nbest: int = 1,
) -> list[list[Hypothesis]]:
    """Translate a batch src (B, S); ``max_lens[i]`` counts output tokens including EOS.

    Returns, per sentence, its ``nbest`` best finished hypotheses, best first.
    """
    device = src.device
    n, k = src.size(0), beam
    rows = torch.arange(n, device=device).repeat_interleave(k)
    states = scorer.start(src, rows, max(max_lens))
    active = list(range(n))  # original index of each active sentence
    limits = torch.tensor(max_lens, device=device)
    scores = torch.full((n, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # only the first copy of each beam is live at the start
    history = torch.zeros(n * k, 0, dtype=torch.long, device=device)
    last = torch.full((n * k,), BOS, dtype=torch.long, device=device)
    finished: list[list[Hypothesis]] = [[] for _ in range(n)]
    max_penalty = [length_penalty(m, alpha, penalty) for m in max_lens]
    t = 0
    while active:
        m = len(active)
        lprobs = scorer.step(last, states).view(m, k, -1)
        vocab = lprobs.size(-1)
        lprobs[..., PAD] = float("-inf")
        lprobs[..., BOS] = float("-inf")
        at_limit = limits == t + 1  # (m,) the last allowed position: only EOS may come
        if at_limit.any():
            forced = torch.full_like(lprobs[0], float("-inf"))
            forced[:, EOS] = 0.0
            lprobs = torch.where(at_limit[:, None, None], lprobs + forced, lprobs)
        candidates = (scores[:, :, None] + lprobs).view(m, k * vocab)
        top_scores, top_index = candidates.topk(min(2 * k, k * vocab), dim=1)
        top_beam, top_token = top_index // vocab, top_index % vocab
        is_eos = top_token == EOS
        # The best k candidates that do not end the hypothesis stay alive (stable: best first).
        order = torch.sort(is_eos.to(torch.int8), dim=1, stable=True).indices[:, :k]
        alive_scores = top_scores.gather(1, order)
        alive_beam, alive_token = top_beam.gather(1, order), top_token.gather(1, order)
        alive_scores = torch.where(is_eos.gather(1, order), torch.full_like(alive_scores, float("-inf")), alive_scores)

        # Bookkeeping of finished hypotheses on the host: one transfer per step.
        finishing = is_eos & (torch.arange(is_eos.size(1), device=device) < k)
        eos_cpu, top_cpu, beam_cpu = finishing.cpu(), top_scores.cpu(), top_beam.cpu()
        hist_cpu = history.cpu() if eos_cpu.any() else None
        best_alive = alive_scores[:, 0].cpu()
        keep: list[int] = []
        for i in range(m):
            sent = active[i]
            for j in torch.nonzero(eos_cpu[i]).flatten().tolist():
                logprob = top_cpu[i, j].item()
                if math.isfinite(logprob):
                    tokens = hist_cpu[i * k + beam_cpu[i, j].item()].tolist()
                    finished[sent].append(Hypothesis(tokens, logprob / length_penalty(t + 1, alpha, penalty), logprob))
            if finished[sent]:
                finished[sent].sort(key=lambda h: -h.score)
                del finished[sent][max(nbest, 1):]
            bound = best_alive[i].item() / max_penalty[sent]
            done = (
                not math.isfinite(best_alive[i].item())
                or max_lens[sent] <= t + 1
                or (len(finished[sent]) >= nbest and finished[sent][0].score >= bound)
            )
            if not done:
                keep.append(i)
        if not keep:
            break
        keep_t = torch.tensor(keep, device=device)
        rows = (keep_t[:, None] * k + alive_beam.index_select(0, keep_t)).flatten()
        history = torch.cat([history.index_select(0, rows), alive_token.index_select(0, keep_t).view(-1, 1)], dim=1)
        states = scorer.select(states, rows)
        last = alive_token.index_select(0, keep_t).flatten()
        scores = alive_scores.index_select(0, keep_t)
        limits = limits.index_select(0, keep_t)
        active = [active[i] for i in keep]
        t += 1
    return finished


@torch.no_grad()
def greedy_search(model: Transformer, src: Tensor, max_lens: list[int]) -> list[list[int]]:
    """Arg-max decoding, the reference that beam 1 must equal (with α = 0)."""
    n = src.size(0)
    scorer = Scorer([model])
    states = scorer.start(src, torch.arange(n, device=src.device), max(max_lens))
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
