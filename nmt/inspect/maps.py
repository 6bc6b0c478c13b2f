"""A sentence pair's attention maps and what they are maps of, apart from the model that made them: numpy
arrays, no torch, so that ``nmt serve``'s process draws them without importing torch (its decoding process
computes them, ``nmt.inspect.attend``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nmt.errors import NmtError
from nmt.inspect.render import Heatmap
from nmt.inspect.render.page import KINDS


@dataclass
class SentenceAttention:
    """One sentence pair's attention maps, every layer and head, and what they are maps of."""

    source: list[str]  # the source pieces, then </s>: the encoder's positions
    target_in: list[str]  # <s>, then the target pieces: what the decoder's positions read
    target_out: list[str]  # the target pieces, then </s>: what they predict
    translation: str
    logprob: float  # log-probability of target_out, from the recorded pass
    score: float | None  # the search's length-penalised score; None when forced
    encoder: np.ndarray  # (layers, heads, S, S)
    decoder: np.ndarray  # (layers, heads, T, T)
    cross: np.ndarray  # (layers, heads, T, S)

    @property
    def forced(self) -> bool:
        return self.score is None

    def maps(self, kind: str) -> np.ndarray:
        return {"encoder": self.encoder, "decoder": self.decoder, "cross": self.cross}[kind]

    def labels(self, kind: str) -> tuple[list[str], list[str]]:
        """(row labels, column labels): queries down, keys across."""
        return {"encoder": (self.source, self.source), "decoder": (self.target_out, self.target_in),
                "cross": (self.target_out, self.source)}[kind]

    def heatmap(self, kind: str, layer: int | None = None, head: int | None = None) -> Heatmap:
        """The map of ``kind`` at ``layer`` (from 1; None: the last), for ``head`` (from 1) or the heads' average."""
        if kind not in KINDS:
            raise NmtError(f"--kind must be one of {', '.join(KINDS)}, not '{kind}'")
        stack = self.maps(kind)
        layers, heads = stack.shape[:2]
        layer = layers if layer is None else layer
        if not 1 <= layer <= layers:
            raise NmtError(f"--layer {layer}: the {'encoder' if kind == 'encoder' else 'decoder'} has layers 1 to {layers}")
        if head is not None and not 1 <= head <= heads:
            raise NmtError(f"--head {head}: the model has heads 1 to {heads}")
        weights = stack[layer - 1].mean(0) if head is None else stack[layer - 1, head - 1]
        rows, cols = self.labels(kind)
        masked = np.zeros(weights.shape, dtype=bool)
        if kind == "decoder":  # a position never sees a later one (§3.2.3); no other mask applies to one sentence
            masked = ~np.tril(np.ones(weights.shape, dtype=bool))
        which = "average of the heads" if head is None else f"head {head} of {heads}"
        return Heatmap(weights, rows, cols, masked, kind, layer, head, f"{KINDS[kind]}, layer {layer} of {layers}, {which}")

    def heatmaps(self) -> list[Heatmap]:
        """Every map: per kind and layer, the heads' average, then each head."""
        out = []
        for kind in KINDS:
            layers, heads = self.maps(kind).shape[:2]
            for layer in range(1, layers + 1):
                out += [self.heatmap(kind, layer, head) for head in (None, *range(1, heads + 1))]
        return out
