"""Positional encodings (§3.5), the feed-forward network (§3.3), and the encoder and decoder layers (§3.1)
with their residual connections, layer norms and dropout (§5.4)."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nmt.model.attention import MultiHeadAttention, SegmentMask
from nmt.model.config import ModelConfig


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
    """FFN(x) = max(0, xW1 + b1)W2 + b2 (§3.3), applied to each position separately."""

    def __init__(self, d_model: int, d_ff: int, relu_dropout: float) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d_model, d_ff), nn.Linear(d_ff, d_model)
        self.dropout = nn.Dropout(relu_dropout)  # not in the paper (0 by default); tensor2tensor's relu_dropout
        for fc in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.dropout(F.relu(self.fc1(x))))


class Residual(nn.Module):
    """A sub-layer with its residual connection and layer norm: LayerNorm(x + Dropout(Sublayer(x))) (§3.1,
    §5.4: "We apply dropout to the output of each sub-layer, before it is added to the sub-layer input and
    normalized"), or, with ``pre_norm``, x + Dropout(Sublayer(LayerNorm(x)))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)
        self.pre_norm = cfg.pre_norm

    def forward(self, x: Tensor, sublayer: Callable[[Tensor], Tensor]) -> Tensor:
        if self.pre_norm:
            return x + self.dropout(sublayer(self.norm(x)))
        return self.norm(x + self.dropout(sublayer(x)))


class EncoderLayer(nn.Module):
    """Self-attention over the source, then the feed-forward network (§3.1)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.heads, cfg.attention_dropout, cfg.d_k, cfg.d_v)
        self.ffn = FeedForward(cfg.d_model, cfg.d_ff, cfg.relu_dropout)
        self.attn_block, self.ffn_block = Residual(cfg), Residual(cfg)

    def forward(self, x: Tensor, src_mask: Tensor | SegmentMask) -> Tensor:
        """x: (B, S, d); src_mask: (B, 1, 1, S), True = real token, or the sentences of a packed row."""
        x = self.attn_block(x, lambda h: self.self_attn(h, mask=src_mask))
        return self.ffn_block(x, self.ffn)


class DecoderLayer(nn.Module):
    """Masked self-attention over the target so far, attention to the encoder's output, then the
    feed-forward network (§3.1)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.heads, cfg.attention_dropout, cfg.d_k, cfg.d_v)
        self.cross_attn = MultiHeadAttention(cfg.d_model, cfg.heads, cfg.attention_dropout, cfg.d_k, cfg.d_v)
        self.ffn = FeedForward(cfg.d_model, cfg.d_ff, cfg.relu_dropout)
        self.self_block, self.cross_block, self.ffn_block = Residual(cfg), Residual(cfg), Residual(cfg)

    def forward(self, y: Tensor, memory: Tensor, src_mask: Tensor | SegmentMask, own_mask: SegmentMask | None = None) -> Tensor:
        """y: (B, T, d) the target so far (teacher forcing); memory: (B, S, d) the encoder's output. Packed
        rows bring the masks of their sentences (``own_mask`` for the self-attention)."""
        # Targets are right-padded, so the causal mask alone keeps real positions off the padding (§3.2.3).
        y = self.self_block(y, lambda h: self.self_attn(h, mask=own_mask, causal=own_mask is None))
        y = self.cross_block(y, lambda h: self.cross_attn(h, memory, mask=src_mask))
        return self.ffn_block(y, self.ffn)
