"""Token-based batches: sentences grouped by length so padding stays small, batch order shuffled per epoch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from nmt.tokens import BOS, EOS, PAD


def padded(length: int, multiple: int) -> int:
    return -(-length // multiple) * multiple


def token_batches(
    src_lengths: np.ndarray, tgt_lengths: np.ndarray, max_tokens: int, seed: int, epoch: int,
    multiple: int = 8, shuffle: bool = True,
) -> list[np.ndarray]:
    """Indices of each batch, such that (sentences × longest padded side) ≤ ``max_tokens`` (fairseq's rule).

    Sentences are sorted by target then source length (ties broken at random per epoch), cut greedily into
    batches, and the batch order is shuffled with a generator seeded by (seed, epoch): every rank computes
    the same list, and a resumed run recomputes it exactly.
    """
    rng = np.random.default_rng([seed, epoch])
    n = len(src_lengths)
    # +1 for the EOS/BOS each side gets at batch time.
    sizes = np.maximum(src_lengths, tgt_lengths).astype(np.int64) + 1
    tie = rng.permutation(n) if shuffle else np.arange(n)
    order = np.lexsort((tie, src_lengths, tgt_lengths))
    batches: list[np.ndarray] = []
    start, longest = 0, 0
    for i, idx in enumerate(order):
        size = padded(int(sizes[idx]), multiple)
        if size > max_tokens:
            raise ValueError(f"sentence {idx} needs {size} tokens, more than --max-tokens {max_tokens}")
        candidate = max(longest, size)
        if i > start and candidate * (i - start + 1) > max_tokens:
            batches.append(order[start:i])
            start, candidate = i, size
        longest = candidate
    if start < n:
        batches.append(order[start:])
    if shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


@dataclass
class Batch:
    src: Tensor  # (B, S) ids + EOS, right-padded
    tgt_in: Tensor  # (B, T) BOS + ids
    tgt_out: Tensor  # (B, T) ids + EOS
    src_tokens: int  # real (non-pad) tokens, EOS included
    tgt_tokens: int

    @property
    def slots(self) -> int:
        return self.src.numel() + self.tgt_in.numel()

    def to(self, device: torch.device) -> "Batch":
        if device.type == "cpu":
            return self
        move = lambda t: t.pin_memory().to(device, non_blocking=True)  # noqa: E731
        return Batch(move(self.src), move(self.tgt_in), move(self.tgt_out), self.src_tokens, self.tgt_tokens)


def collate(pairs: list[tuple[np.ndarray, np.ndarray]], multiple: int = 8) -> Batch:
    """Pad a list of (source ids, target ids) to multiples of ``multiple`` (tensor-core friendly)."""
    b = len(pairs)
    s = padded(max(len(x) for x, _ in pairs) + 1, multiple)
    t = padded(max(len(y) for _, y in pairs) + 1, multiple)
    src = np.full((b, s), PAD, dtype=np.int64)
    tgt_in = np.full((b, t), PAD, dtype=np.int64)
    tgt_out = np.full((b, t), PAD, dtype=np.int64)
    for i, (x, y) in enumerate(pairs):
        src[i, : len(x)] = x
        src[i, len(x)] = EOS
        tgt_in[i, 0] = BOS
        tgt_in[i, 1 : len(y) + 1] = y
        tgt_out[i, : len(y)] = y
        tgt_out[i, len(y)] = EOS
    n_src = sum(len(x) + 1 for x, _ in pairs)
    n_tgt = sum(len(y) + 1 for _, y in pairs)
    return Batch(torch.from_numpy(src), torch.from_numpy(tgt_in), torch.from_numpy(tgt_out), n_src, n_tgt)
