"""Label-smoothed cross-entropy (§5.4) in the paper's and fairseq's convention."""

from __future__ import annotations

import torch
from torch import Tensor


def label_smoothed_nll(lprobs: Tensor, target: Tensor, epsilon: float, pad_id: int) -> tuple[Tensor, Tensor, Tensor]:
    """Sums over non-padding positions: (smoothed loss, plain NLL, number of tokens).

    The smoothed target puts 1-ε on the gold token and ε/(V-1) on each of the V-1 others (t2t, fairseq):
    loss = (1-ε-ε/(V-1))·nll + ε/(V-1)·Σ_j -log p_j. PyTorch's ``label_smoothing`` spreads ε/V instead.
    Sums, not means, so normalisation stays right under gradient accumulation and across ranks.

    lprobs: (N, V) log-probabilities; target: (N,).
    """
    vocab = lprobs.size(-1)
    keep = target != pad_id
    nll = -lprobs.gather(-1, target[:, None]).squeeze(-1)
    smooth = -lprobs.sum(-1)
    eps_i = epsilon / (vocab - 1)
    loss = (1.0 - epsilon - eps_i) * nll + eps_i * smooth
    zero = torch.zeros((), dtype=lprobs.dtype, device=lprobs.device)
    return torch.where(keep, loss, zero).sum(), torch.where(keep, nll, zero).sum(), keep.sum()
