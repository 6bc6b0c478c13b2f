"""Packed rows through the variable-length flash attention kernel, on GPUs.

A packed batch (``--packing``) concatenates its sentences into one row per side; the model's own attention
(``nmt.model.attention``) then masks a (rows × rows) block-diagonal matrix, which costs memory and time
quadratic in the whole row. ``torch.nn.attention.varlen.varlen_attn`` takes the sentences' cumulative
starts instead and computes each sentence's attention on its own, with flash attention's kernels: no mask,
no padding, no work across sentences. Attention dropout is not among its options, so a model that asks for
attention dropout (0 in the paper) keeps the masked path, as does every CPU.
"""

from __future__ import annotations

import torch
from torch import Tensor

from nmt.model.attention import MultiHeadAttention, SegmentMask


class VarlenAttention(MultiHeadAttention):
    """``MultiHeadAttention`` (same parameters, same function) that computes packed rows on GPUs with the
    variable-length kernel."""

    def attention(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | SegmentMask | None, causal: bool) -> Tensor:
        if not isinstance(mask, SegmentMask) or not q.is_cuda or (self.training and self.dropout > 0):
            return super().attention(q, k, v, mask, causal)
        from torch.nn.attention.varlen import varlen_attn

        # (1, h, T, d) heads are views of (T, h, d) rows (MultiHeadAttention.split_heads): no copy either way.
        out = varlen_attn(q[0].transpose(0, 1), k[0].transpose(0, 1), v[0].transpose(0, 1), mask.q_starts, mask.k_starts,
                          mask.max_q, mask.max_k, window_size=(-1, 0) if mask.causal else (-1, -1))
        return out.transpose(0, 1)[None]
