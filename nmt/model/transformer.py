"""The encoder–decoder Transformer (§3): embeddings and positions, the two stacks, the output projection.

Initialisation (as in tensor2tensor and fairseq): embeddings N(0, d_model^-0.5) with the padding row
zeroed, Xavier-uniform for every projection, zero biases.

Decoding one position at a time with cached keys and values lives beside the beam search
(``nmt.decode.incremental``); the faster CPU kernels training swaps in live in ``nmt.kernels``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nmt.model.attention import padding_mask
from nmt.model.config import ModelConfig
from nmt.model.layers import DecoderLayer, EncoderLayer, sinusoidal_positions
from nmt.tokens import PAD


@dataclass
class EncoderOut:
    memory: Tensor  # (B, S, d)
    src_mask: Tensor  # (B, 1, 1, S), True = real token


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.src_embed = nn.Embedding(cfg.vocab_size, d, padding_idx=PAD)
        # §3.4: "we share the same weight matrix between the two embedding layers and the pre-softmax
        # linear transformation"; ``share_embeddings = false`` unties all three.
        self.tgt_embed = self.src_embed if cfg.share_embeddings else nn.Embedding(cfg.vocab_size, d, padding_idx=PAD)
        for emb in {id(self.src_embed): self.src_embed, id(self.tgt_embed): self.tgt_embed}.values():
            nn.init.normal_(emb.weight, 0.0, d**-0.5)
            with torch.no_grad():
                emb.weight[PAD].zero_()
        self.output_proj = None if cfg.share_embeddings else nn.Linear(d, cfg.vocab_size, bias=False)
        if self.output_proj is not None:
            nn.init.normal_(self.output_proj.weight, 0.0, d**-0.5)
        # §3.5's sinusoids, or (Table 3, row E) a learned embedding per position.
        self.register_buffer("positions", sinusoidal_positions(cfg.max_positions, d), persistent=False)
        self.position_embed = nn.Embedding(cfg.max_positions, d) if cfg.positions == "learned" else None
        if self.position_embed is not None:
            nn.init.normal_(self.position_embed.weight, 0.0, d**-0.5)
        self.embed_scale = math.sqrt(d)  # §3.4: "we multiply those weights by √d_model"
        self.dropout = nn.Dropout(cfg.dropout)  # §5.4: on the sums of the embeddings and the positional encodings
        self.encoder = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        # Pre-norm stacks end in a layer norm; post-norm layers already end in one (§3.1).
        self.encoder_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps) if cfg.pre_norm else nn.Identity()
        self.decoder_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps) if cfg.pre_norm else nn.Identity()

    @property
    def position_table(self) -> Tensor:
        """(max_positions, d): the encodings added to the embeddings at each position."""
        return self.positions if self.position_embed is None else self.position_embed.weight

    def check_positions(self, length: int) -> None:
        if length > self.cfg.max_positions:
            raise ValueError(f"sequence of {length} positions exceeds max_positions {self.cfg.max_positions}")

    def embed(self, table: nn.Embedding, tokens: Tensor) -> Tensor:
        """Embedding × √d_model + PE, then dropout (§3.4, §3.5, §5.4). tokens: (B, T) → (B, T, d)."""
        t = tokens.size(1)
        self.check_positions(t)
        x = table(tokens) * self.embed_scale + self.position_table[:t].to(dtype=table.weight.dtype)
        return self.dropout(x)

    @property
    def output_weight(self) -> Tensor:
        """The output projection (V, d): the target embedding when they are shared (§3.4)."""
        return self.tgt_embed.weight if self.output_proj is None else self.output_proj.weight

    def logits(self, h: Tensor) -> Tensor:
        """The pre-softmax linear transformation (§3.4): decoder states (..., d) → logits (..., V)."""
        return F.linear(h, self.output_weight)

    def encode(self, src: Tensor) -> EncoderOut:
        """src: (B, S) ids, right-padded → memory (B, S, d) and its key-padding mask."""
        mask = padding_mask(src, PAD)
        x = self.embed(self.src_embed, src)
        for layer in self.encoder:
            x = layer(x, mask)
        return EncoderOut(self.encoder_norm(x), mask)

    def decode_features(self, tgt_in: Tensor, enc: EncoderOut) -> Tensor:
        """Teacher-forced decoder: tgt_in (B, T) (BOS + target) → its last layer's output (B, T, d), before
        the output projection."""
        y = self.embed(self.tgt_embed, tgt_in)
        for layer in self.decoder:
            y = layer(y, enc.memory, enc.src_mask)
        return self.decoder_norm(y)

    def decode(self, tgt_in: Tensor, enc: EncoderOut) -> Tensor:
        """``decode_features`` projected to logits (B, T, V)."""
        return self.logits(self.decode_features(tgt_in, enc))

    def features(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """The decoder's output (B, T, d) for teacher forcing, before the output projection: training takes
        it to the loss with ``output_weight`` (``nmt.kernels.output_cross_entropy``)."""
        return self.decode_features(tgt_in, self.encode(src))

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """Logits (B, T, V) of a teacher-forced pass."""
        return self.logits(self.features(src, tgt_in))
