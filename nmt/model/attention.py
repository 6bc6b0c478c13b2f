"""Scaled dot-product attention and multi-head attention (§3.2).

Mask convention, everywhere in nmt: a boolean tensor where **True means 'may attend'** (the convention of
``F.scaled_dot_product_attention``; ``nn.MultiheadAttention`` uses the opposite, see ``padding_mask``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def padding_mask(tokens: Tensor, pad_id: int) -> Tensor:
    """(B, S) token ids → (B, 1, 1, S) boolean mask, True where a key is a real token and may be attended."""
    return (tokens != pad_id)[:, None, None, :]


def segment_ids(starts: Tensor, length: int) -> Tensor:
    """The sentence each of ``length`` positions belongs to, for sentences starting at ``starts`` (N+1,), the
    last entry being where the last sentence ends (cumulative lengths, as variable-length kernels take them)."""
    return torch.searchsorted(starts, torch.arange(length, device=starts.device, dtype=starts.dtype), right=True) - 1


@dataclass(eq=False)
class SegmentMask:
    """The mask of several sentences packed into one row: query position i may attend to key position j only
    when both belong to the same sentence (and, if ``causal``, j ≤ i in that sentence). Sentence n holds the
    queries ``q_starts[n]`` to ``q_starts[n + 1] - 1`` and the keys ``k_starts[n]`` to ``k_starts[n + 1] - 1``.

    One object serves every layer of a pass; ``dense`` is built once. Faster kernels read the starts
    directly (``nmt.kernels.varlen``) and never build it.
    """

    q_starts: Tensor  # (N+1,) int32, from 0 to the number of query positions
    k_starts: Tensor  # (N+1,) int32, from 0 to the number of key positions
    max_q: int  # at least the longest sentence's query positions (what variable-length kernels size by)
    max_k: int
    causal: bool = False

    @cached_property
    def dense(self) -> Tensor:
        """(1, 1, Tq, Tk) boolean, True = may attend: block-diagonal, lower-triangular blocks when causal."""
        tq, tk = int(self.q_starts[-1]), int(self.k_starts[-1])
        q, k = segment_ids(self.q_starts, tq), segment_ids(self.k_starts, tk)
        allowed = q[:, None] == k[None, :]
        if self.causal:  # the same offset from each sentence's start: self-attention, equal starts
            allowed &= torch.ones(tq, tk, dtype=torch.bool, device=allowed.device).tril()
        return allowed[None, None]


def attention_weights(q: Tensor, k: Tensor, mask: Tensor | None = None, causal: bool = False) -> Tensor:
    """softmax(QKᵀ/√d_k) (§3.2.1), written out: heads (B, h, Tq, d_k) against keys (B, h, Tk, d_k) →
    (B, h, Tq, Tk). ``mask`` True = may attend; ``causal``: query i sees keys 0..i only (§3.2.3).
    Masked positions are exactly 0.

    The model computes attention through the fused kernel, which never stores these weights; this is the
    formula the kernel computes, for the tests and for ``nmt attend``.
    """
    scores = torch.matmul(q, k.transpose(-2, -1)) * q.size(-1) ** -0.5
    allowed = torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device).tril() if causal else None
    if mask is not None:
        allowed = mask if allowed is None else allowed & mask
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    half = scores.dtype in (torch.float16, torch.bfloat16)
    weights = scores.float().softmax(-1).to(q.dtype) if half else scores.softmax(-1)  # half precision: softmax in float32
    return weights if allowed is None else weights.masked_fill(~allowed, 0.0)  # a fully masked row: 0, not NaN


def naive_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, causal: bool = False) -> Tensor:
    """Attention(Q, K, V) = softmax(QKᵀ/√d_k)V (§3.2.1), written out: the reference for the fused kernel."""
    return attention_weights(q, k, mask, causal) @ v


class MultiHeadAttention(nn.Module):
    """MultiHead(Q, K, V) = Concat(head_1..head_h) W^O, head_i = Attention(QW_i^Q, KW_i^K, VW_i^V) (§3.2.2).

    The Q, K and V projections of all heads are one (h·(2d_k + d_v), d) matrix, laid out as
    ``nn.MultiheadAttention``'s ``in_proj_weight``: self-attention projects once, cross-attention takes the Q
    rows for the decoder's states and the K, V rows for the encoder's. d_k and d_v are d_model / h unless
    given (Table 3 varies them).
    """

    def __init__(self, d_model: int, heads: int, dropout: float = 0.0, d_k: int | None = None, d_v: int | None = None) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.d_k, self.d_v = d_k or d_model // heads, d_v or d_model // heads
        self.sizes = [heads * self.d_k, heads * self.d_k, heads * self.d_v]  # rows of Q, K and V in in_proj
        self.in_proj_weight = nn.Parameter(torch.empty(sum(self.sizes), d_model))
        self.in_proj_bias = nn.Parameter(torch.zeros(sum(self.sizes)))
        self.out_proj = nn.Linear(heads * self.d_v, d_model)
        # Xavier on the fused (3d, d) matrix equals Xavier with gain 1/√2 on each of Q, K, V (fairseq's init).
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.xavier_uniform_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)

    def in_projection(self, x: Tensor, rows: slice) -> Tensor:
        """``x`` times the rows ``rows`` of the fused Q, K, V projection."""
        return F.linear(x, self.in_proj_weight[rows], self.in_proj_bias[rows])

    def split_heads(self, x: Tensor) -> Tensor:
        b, t, width = x.shape
        return x.view(b, t, self.heads, width // self.heads).transpose(1, 2)  # (B, h, T, d_k or d_v)

    def project(self, x: Tensor, memory: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Queries from ``x``, keys and values from ``memory`` (``x`` itself for self-attention), as heads
        (B, h, T, d_k or d_v)."""
        q_rows = self.sizes[0]
        if memory is None:
            q, k, v = self.in_projection(x, slice(None)).split(self.sizes, dim=-1)
        else:
            q = self.in_projection(x, slice(0, q_rows))
            k, v = self.in_projection(memory, slice(q_rows, None)).split(self.sizes[1:], dim=-1)
        return self.split_heads(q), self.split_heads(k), self.split_heads(v)

    def attention(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | SegmentMask | None, causal: bool) -> Tensor:
        """softmax(QKᵀ/√d_k)V of every head at once, with dropout on the weights when training (0 in the
        paper's base and big)."""
        dropout = self.dropout if self.training else 0.0
        if isinstance(mask, SegmentMask):
            mask, causal = mask.dense, False  # the sentences' causal blocks are in the mask itself
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, dropout_p=dropout)

    def forward(self, x: Tensor, memory: Tensor | None = None, mask: Tensor | SegmentMask | None = None, causal: bool = False) -> Tensor:
        """Self-attention of ``x`` (B, T, d) when ``memory`` is None, else attention from ``x`` to ``memory``
        (B, S, d). ``mask`` (broadcast to (B, h, T, S)): True = may attend, or the sentences of a packed row;
        ``causal``: position i attends to positions up to i only."""
        q, k, v = self.project(x, memory)
        out = self.attention(q, k, v, mask, causal)  # (B, h, T, d_v)
        b, _, t, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, t, self.heads * self.d_v))
