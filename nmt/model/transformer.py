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

from nmt.model.attention import SegmentMask, padding_mask, segment_ids
from nmt.model.config import ModelConfig
from nmt.model.layers import DecoderLayer, EncoderLayer, sinusoidal_positions
from nmt.tokens import PAD


@dataclass
class EncoderOut:
    memory: Tensor  # (B, S, d)
    src_mask: Tensor | SegmentMask  # (B, 1, 1, S), True = real token; or, packed, the sentences' cross-attention mask


@dataclass(eq=False)
class Packing:
    """Sentence pairs concatenated into one row per side (a packed batch, B = 1) instead of padded rows: pair n
    holds the source positions ``src_starts[n]`` to ``src_starts[n + 1] - 1`` and likewise on the target side.
    Each sentence attends within itself only, and positions count from 0 at each sentence's start, so every
    sentence computes what it would alone (and every slot of the batch can be a real token)."""

    src_starts: Tensor  # (N+1,) int32 cumulative lengths, the last the source row's length
    tgt_starts: Tensor  # (N+1,) int32, the same pairs on the target side
    max_src: int  # at least the longest source sentence
    max_tgt: int

    def __post_init__(self) -> None:
        self.encoder = SegmentMask(self.src_starts, self.src_starts, self.max_src, self.max_src)
        self.decoder = SegmentMask(self.tgt_starts, self.tgt_starts, self.max_tgt, self.max_tgt, causal=True)
        self.cross = SegmentMask(self.tgt_starts, self.src_starts, self.max_tgt, self.max_src)

    @staticmethod
    def positions(starts: Tensor) -> Tensor:
        """(1, T) the position of each token within its sentence."""
        length = int(starts[-1])
        ids = segment_ids(starts, length)
        return (torch.arange(length, device=starts.device) - starts[ids])[None]


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

    def embed(self, table: nn.Embedding, tokens: Tensor, starts: Tensor | None = None) -> Tensor:
        """Embedding × √d_model + PE, then dropout (§3.4, §3.5, §5.4). tokens: (B, T) → (B, T, d). Positions
        count from the row's start, or, packed, from each sentence's ``starts``."""
        t = tokens.size(1)
        if starts is None:
            self.check_positions(t)
            pe = self.position_table[:t]
        else:
            self.check_positions(int((starts[1:] - starts[:-1]).max()))
            pe = self.position_table[Packing.positions(starts)]
        return self.dropout(table(tokens) * self.embed_scale + pe.to(dtype=table.weight.dtype))

    @property
    def output_weight(self) -> Tensor:
        """The output projection (V, d): the target embedding when they are shared (§3.4)."""
        return self.tgt_embed.weight if self.output_proj is None else self.output_proj.weight

    def logits(self, h: Tensor) -> Tensor:
        """The pre-softmax linear transformation (§3.4): decoder states (..., d) → logits (..., V)."""
        return F.linear(h, self.output_weight)

    def encode(self, src: Tensor, packing: Packing | None = None) -> EncoderOut:
        """src: (B, S) ids, right-padded (or one packed row) → memory (B, S, d) and the mask the decoder's
        attention to it needs."""
        if packing is None:
            mask = cross = padding_mask(src, PAD)
            x = self.embed(self.src_embed, src)
        else:
            mask, cross = packing.encoder, packing.cross
            x = self.embed(self.src_embed, src, packing.src_starts)
        for layer in self.encoder:
            x = layer(x, mask)
        return EncoderOut(self.encoder_norm(x), cross)

    def decode_features(self, tgt_in: Tensor, enc: EncoderOut, packing: Packing | None = None) -> Tensor:
        """Teacher-forced decoder: tgt_in (B, T) (BOS + target, or one packed row) → its last layer's output
        (B, T, d), before the output projection."""
        y = self.embed(self.tgt_embed, tgt_in, None if packing is None else packing.tgt_starts)
        own = None if packing is None else packing.decoder
        for layer in self.decoder:
            y = layer(y, enc.memory, enc.src_mask, own)
        return self.decoder_norm(y)

    def decode(self, tgt_in: Tensor, enc: EncoderOut) -> Tensor:
        """``decode_features`` projected to logits (B, T, V)."""
        return self.logits(self.decode_features(tgt_in, enc))

    def features(self, src: Tensor, tgt_in: Tensor, packing: Packing | None = None) -> Tensor:
        """The decoder's output (B, T, d) for teacher forcing, before the output projection: training takes
        it to the loss with ``output_weight`` (``nmt.kernels.output_cross_entropy``)."""
        return self.decode_features(tgt_in, self.encode(src, packing), packing)

    def forward(self, src: Tensor, tgt_in: Tensor, packing: Packing | None = None) -> Tensor:
        """Logits (B, T, V) of a teacher-forced pass."""
        return self.logits(self.features(src, tgt_in, packing))
