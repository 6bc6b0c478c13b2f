"""Encoder and decoder layers (§3.1), the feed-forward network (§3.3) and positional encodings (§3.5)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nmt.model.attention import AttentionMaps, MultiHeadAttention, attend_heads
from nmt.model.config import ModelConfig
from nmt.model.dropout import Dropout
from nmt.model.linear import Linear, linear

if TYPE_CHECKING:
    from nmt.model.transformer import DecoderState


def sinusoidal_positions(length: int, d_model: int) -> Tensor:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d)), positions from 0.

    The paper's layout (interleaved), not tensor2tensor's/fairseq's concatenated [sin, cos] with d/2-1.
    """
    position = torch.arange(length, dtype=torch.float64)[:, None]
    div = torch.pow(10000.0, torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    pe = torch.zeros(length, d_model, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(position / div)
    pe[:, 1::2] = torch.cos(position / div)
    return pe.float()


class FeedForward(nn.Module):
    """FFN(x) = max(0, xW1 + b1)W2 + b2 (§3.3)."""

    def __init__(self, d_model: int, d_ff: int, relu_dropout: float) -> None:
        super().__init__()
        self.fc1, self.fc2 = Linear(d_model, d_ff), Linear(d_ff, d_model)
        self.dropout = Dropout(relu_dropout)
        for fc in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.dropout(linear(x, self.fc1.weight, self.fc1.bias, relu=True)))


class Residual(nn.Module):
    """A sub-layer with its residual connection and layer norm: post-norm LN(x + drop(f(x))) as in §3.1,
    or pre-norm x + drop(f(LN(x)))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.dropout = Dropout(cfg.dropout)
        self.pre_norm = cfg.pre_norm

    def forward(self, x: Tensor, sublayer: Callable[[Tensor], Tensor]) -> Tensor:
        if self.pre_norm:
            return x + self.dropout(sublayer(self.norm(x)))
        return self.norm(x + self.dropout(sublayer(x)))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.heads, cfg.attention_dropout, cfg.d_k, cfg.d_v)
        self.ffn = FeedForward(cfg.d_model, cfg.d_ff, cfg.relu_dropout)
        self.attn_block, self.ffn_block = Residual(cfg), Residual(cfg)

    def forward(self, x: Tensor, src_mask: Tensor, maps: AttentionMaps | None = None) -> Tensor:
        """x: (B, S, d); src_mask: (B, 1, 1, S), True = real token. ``maps``: record the weights there."""
        record = None if maps is None else maps.encoder
        x = self.attn_block(x, lambda h: self.self_attn(h, mask=src_mask, record=record))
        return self.ffn_block(x, self.ffn)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.heads, cfg.attention_dropout, cfg.d_k, cfg.d_v)
        self.cross_attn = MultiHeadAttention(cfg.d_model, cfg.heads, cfg.attention_dropout, cfg.d_k, cfg.d_v)
        self.ffn = FeedForward(cfg.d_model, cfg.d_ff, cfg.relu_dropout)
        self.self_block, self.cross_block, self.ffn_block = Residual(cfg), Residual(cfg), Residual(cfg)

    def forward(self, y: Tensor, memory: Tensor, src_mask: Tensor, maps: AttentionMaps | None = None) -> Tensor:
        """Full-sequence decoding (training). y: (B, T, d); memory: (B, S, d). ``maps``: record the weights there."""
        own, cross = (None, None) if maps is None else (maps.decoder, maps.cross)
        # Targets are right-padded, so the causal mask alone keeps real positions off the padding.
        y = self.self_block(y, lambda h: self.self_attn(h, causal=True, record=own))
        y = self.cross_block(y, lambda h: self.cross_attn(h, memory, mask=src_mask, record=cross))
        return self.ffn_block(y, self.ffn)

    def step_weights(self) -> "StepWeights":
        """This layer's weights arranged for ``step``: views of the parameters, except the self-attention's
        Q, K, V projection, regrouped by head (a copy; see ``MultiHeadAttention.grouped_qkv``)."""
        sa, ca, ffn = self.self_attn, self.cross_attn, self.ffn
        qkv_w, qkv_b = sa.grouped_qkv()
        q = ca.sizes[0]
        return StepWeights(
            qkv_w, qkv_b, sa.out_proj.weight.t(), sa.out_proj.bias,
            ca.in_proj_weight[:q].t(), ca.in_proj_bias[:q], ca.out_proj.weight.t(), ca.out_proj.bias,
            ffn.fc1.weight.t(), ffn.fc1.bias, ffn.fc2.weight.t(), ffn.fc2.bias,
        )

    def step(self, y: Tensor, state: "DecoderState", i: int) -> Tensor:
        """One position y (R, d), R = sentences × beam, with this layer's (``i``) part of ``state``: appends its
        keys and values to the self-attention cache. Decoding only (no dropout): the same function as
        ``forward`` in evaluation mode, written with 2-D activations and batched matrix products because a
        step is small and runs thousands of times, so the number of operations is what costs."""
        w, sa = state.weights[i], self.self_attn
        r, heads, dk, dv = y.size(0), sa.heads, sa.d_k, sa.d_v

        def self_attention(h: Tensor) -> Tensor:
            qkv = torch.addmm(w.qkv_b, h, w.qkv_w).view(r, heads, 1, 2 * dk + dv)  # a head's q, k, v side by side
            k, v = state.append(i, qkv[..., dk : 2 * dk], qkv[..., 2 * dk :])  # (R·h, t + 1, d_k or d_v)
            out = attend_heads(qkv.view(r * heads, 1, -1)[..., :dk], k, v)  # (R·h, 1, d_v)
            return torch.addmm(w.self_out_b, out.view(r, heads * dv), w.self_out_w)

        def cross_attention(h: Tensor) -> Tensor:
            # The beam's queries of a sentence attend as one block: (R, h·d_k) → (N·h, beam, d_k).
            n, beam = r // state.beam, state.beam
            q = torch.addmm(w.cross_q_b, h, w.cross_q_w).view(n, beam, heads, dk).transpose(1, 2).reshape(n * heads, beam, dk)
            out = attend_heads(q, state.cross_k[i], state.cross_v[i], state.cross_bias)  # (N·h, beam, d_v)
            out = out.view(n, heads, beam, dv).transpose(1, 2).reshape(r, heads * dv)
            return torch.addmm(w.cross_out_b, out, w.cross_out_w)

        def feed_forward(h: Tensor) -> Tensor:
            return torch.addmm(w.fc2_b, torch.addmm(w.fc1_b, h, w.fc1_w).relu_(), w.fc2_w)

        y = _residual_step(self.self_block, y, self_attention)
        y = _residual_step(self.cross_block, y, cross_attention)
        return _residual_step(self.ffn_block, y, feed_forward)


@dataclass
class StepWeights:
    """A decoder layer's weights as ``DecoderLayer.step`` uses them: matrices (in, out), so every projection
    is one ``addmm`` on (R, d) activations."""

    qkv_w: Tensor  # (d, h·(2d_k + d_v)), grouped by head
    qkv_b: Tensor
    self_out_w: Tensor
    self_out_b: Tensor
    cross_q_w: Tensor
    cross_q_b: Tensor
    cross_out_w: Tensor
    cross_out_b: Tensor
    fc1_w: Tensor
    fc1_b: Tensor
    fc2_w: Tensor
    fc2_b: Tensor


def _residual_step(block: Residual, x: Tensor, sublayer: Callable[[Tensor], Tensor]) -> Tensor:
    """``block(x, sublayer)`` without dropout, its layer norm called as a function (decoding steps)."""
    n = block.norm
    if block.pre_norm:
        return x + sublayer(F.layer_norm(x, n.normalized_shape, n.weight, n.bias, n.eps))
    return F.layer_norm(sublayer(x).add_(x), n.normalized_shape, n.weight, n.bias, n.eps)
