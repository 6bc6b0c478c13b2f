"""Scaled dot-product and multi-head attention (§3.2), through ``F.scaled_dot_product_attention``.

Mask convention, everywhere in nmt: a boolean tensor where **True means 'may attend'** (the convention of
``scaled_dot_product_attention``; ``nn.MultiheadAttention`` uses the opposite, see ``padding_mask``).

The fused kernel never materialises the attention weights. When they are wanted (``nmt attend``), a forward
pass is given an ``AttentionMaps`` to fill: only then does attention compute softmax(QKᵀ/√d_k) explicitly,
through ``attend_explicitly``, and keep it; without one, every path is the fused kernel, as before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nmt.model.linear import Linear, linear


def padding_mask(tokens: Tensor, pad_id: int) -> Tensor:
    """(B, S) token ids → (B, 1, 1, S) boolean mask, True where a key is a real token and may be attended."""
    return (tokens != pad_id)[:, None, None, :]


def naive_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, causal: bool = False) -> Tensor:
    """Reference implementation of softmax(QKᵀ/√d_k)V (§3.2.1), for tests against the fused kernel."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, h, Tq, Tk)
    if causal:
        tq, tk = scores.shape[-2:]
        scores = scores.masked_fill(~torch.ones(tq, tk, dtype=torch.bool, device=q.device).tril(tk - tq), float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(-1) @ v


@dataclass
class AttentionMaps:
    """The attention weights of one forward pass, filled layer by layer when a model is asked to record them.

    Each entry is (B, h, Tq, Tk): row i is query position i, column j key position j; a row sums to 1 over
    the positions it may attend, and masked positions are exactly 0.
    """

    encoder: list[Tensor] = field(default_factory=list)  # encoder self-attention, (B, h, S, S)
    decoder: list[Tensor] = field(default_factory=list)  # decoder (causal) self-attention, (B, h, T, T)
    cross: list[Tensor] = field(default_factory=list)  # decoder-to-encoder attention, (B, h, T, S)


def attention_weights(q: Tensor, k: Tensor, mask: Tensor | None = None, causal: bool = False) -> Tensor:
    """softmax(QKᵀ/√d_k) (§3.2.1) for heads (B, h, Tq, d_k) and keys (B, h, Tk, d_k) → (B, h, Tq, Tk), with the
    masks of ``scaled_dot_product_attention``: ``mask`` True = may attend, ``causal`` the top-left aligned lower
    triangle (query i sees keys 0..i). Masked positions are exactly 0."""
    scores = torch.matmul(q, k.transpose(-2, -1)) * q.size(-1) ** -0.5
    allowed = torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device).tril() if causal else None
    if mask is not None:
        allowed = mask if allowed is None else allowed & mask
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    half = scores.dtype in (torch.float16, torch.bfloat16)
    weights = scores.float().softmax(-1).to(q.dtype) if half else scores.softmax(-1)  # half precision: softmax in float32
    return weights if allowed is None else weights.masked_fill(~allowed, 0.0)  # a fully masked row: 0, not NaN


def attend_heads(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None) -> Tensor:
    """softmax(QKᵀ/√d_k + bias)V with the heads folded into the batch, for incremental decoding: queries
    (B, Tq, d_k) against keys (B, Tk, d_k) and values (B, Tk, d_v), any strides → (B, Tq, d_v).

    Equal to ``scaled_dot_product_attention`` in evaluation mode. For the few queries of a decoding step two
    batched matrix products beat the fused kernel on a CPU, and nothing is copied. ``bias`` (broadcast to the
    scores) is 0 where a key may be attended and -inf elsewhere.
    """
    scale = q.size(-1) ** -0.5
    kt = k.transpose(1, 2)
    # baddbmm scales and adds the bias in the product's own pass.
    scores = torch.bmm(q, kt).mul_(scale) if bias is None else torch.baddbmm(bias, q, kt, alpha=scale)
    weights = scores.softmax(-1) if scores.dtype == torch.float32 else scores.float().softmax(-1).to(v.dtype)
    return torch.bmm(weights, v)


class MultiHeadAttention(nn.Module):
    """MultiHead(Q, K, V) = Concat(head_1..head_h) W^O (§3.2.2).

    The Q, K and V projections are one (h·(2d_k + d_v), d) matrix, laid out as ``nn.MultiheadAttention``'s
    ``in_proj_weight``: self-attention does one matmul, cross-attention splits it into Q and KV. d_k and d_v
    are d_model / h unless given (Table 3 varies them).
    """

    def __init__(self, d_model: int, heads: int, dropout: float = 0.0, d_k: int | None = None, d_v: int | None = None) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.d_k, self.d_v = d_k or d_model // heads, d_v or d_model // heads
        self.sizes = [heads * self.d_k, heads * self.d_k, heads * self.d_v]  # rows of Q, K and V in in_proj
        self.in_proj_weight = nn.Parameter(torch.empty(sum(self.sizes), d_model))
        self.in_proj_bias = nn.Parameter(torch.zeros(sum(self.sizes)))
        self.out_proj = Linear(heads * self.d_v, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Xavier on the fused (3d, d) matrix equals Xavier with gain 1/√2 on each of Q, K, V (fairseq's init).
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.xavier_uniform_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)

    def split_heads(self, x: Tensor) -> Tensor:
        b, t, width = x.shape
        return x.view(b, t, self.heads, width // self.heads).transpose(1, 2)  # (B, h, T, d_k or d_v)

    def project_q(self, x: Tensor) -> Tensor:
        q = self.sizes[0]
        return self.split_heads(linear(x, self.in_proj_weight[:q], self.in_proj_bias[:q]))

    def project_kv(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        q = self.sizes[0]
        k, v = linear(memory, self.in_proj_weight[q:], self.in_proj_bias[q:]).split(self.sizes[1:], dim=-1)
        return self.split_heads(k), self.split_heads(v)

    def project_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v = linear(x, self.in_proj_weight, self.in_proj_bias).split(self.sizes, dim=-1)
        return self.split_heads(q), self.split_heads(k), self.split_heads(v)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, causal: bool = False) -> Tensor:
        """Heads (B, h, Tq, d_k) against keys (B, h, Tk, d_k) and values (B, h, Tk, d_v) → (B, Tq, d_model) after W^O."""
        dtype = q.dtype
        dropout = self.dropout if self.training else 0.0
        if q.device.type == "cpu" and dtype in (torch.bfloat16, torch.float16):
            # The CPU's fused kernel is about 10× slower in bf16 than in float32 (forward + backward, heads
            # of 12 positions, torch 2.13); the casts cost far less. The projections stay in bf16, and
            # autocast, which would cast the inputs back, is off for this call.
            with torch.autocast("cpu", enabled=False):
                out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask, is_causal=causal, dropout_p=dropout).to(dtype)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, dropout_p=dropout)
        b, _, t, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, t, self.heads * self.d_v))

    def attend_explicitly(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, causal: bool = False) -> tuple[Tensor, Tensor]:
        """``attend`` in evaluation mode, with the weights (B, h, Tq, Tk) computed explicitly and returned too.

        For recording attention only: slower than the fused kernel, and it drops no attention weights
        (the model must be in evaluation mode)."""
        if self.training and self.dropout > 0:
            raise RuntimeError("attention weights are recorded in evaluation mode only")
        weights = attention_weights(q, k, mask, causal)
        out = torch.matmul(weights, v)
        b, _, t, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, t, self.heads * self.d_v)), weights

    def grouped_qkv(self) -> tuple[Tensor, Tensor]:
        """The Q, K, V projection with each head's query, key and value columns side by side, for decoding
        steps: weight (d_model, h·(2d_k + d_v)) and bias. A step's output viewed as (R·h, 2d_k + d_v) holds a
        head's query, key and value in one row, so each is a slice already laid out as attention reads it
        (heads folded into the batch) and no head needs transposing."""
        w, b = self.in_proj_weight.split(self.sizes), self.in_proj_bias.split(self.sizes)
        h = self.heads
        weight = torch.cat([w[0].view(h, self.d_k, -1), w[1].view(h, self.d_k, -1), w[2].view(h, self.d_v, -1)], dim=1)
        bias = torch.cat([b[0].view(h, self.d_k), b[1].view(h, self.d_k), b[2].view(h, self.d_v)], dim=1)
        return weight.flatten(0, 1).t(), bias.flatten()

    def forward(
        self, x: Tensor, memory: Tensor | None = None, mask: Tensor | None = None, causal: bool = False, record: list[Tensor] | None = None
    ) -> Tensor:
        """Self-attention when ``memory`` is None, else attention from ``x`` to ``memory``. With ``record`` (a list),
        the weights are computed explicitly and appended to it; without, the fused kernel runs."""
        if memory is None:
            q, k, v = self.project_qkv(x)
        else:
            q = self.project_q(x)
            k, v = self.project_kv(memory)
        if record is None:
            return self.attend(q, k, v, mask, causal)
        out, weights = self.attend_explicitly(q, k, v, mask, causal)
        record.append(weights)
        return out
