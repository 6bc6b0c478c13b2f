"""The encoder–decoder Transformer (§3), with ``encode`` / ``decode`` for training and
``init_state`` / ``decode_step`` for incremental decoding with cached keys and values, and
``attention_maps`` for the attention weights of a teacher-forced pass (``nmt attend``).

Initialisation (as in tensor2tensor and fairseq): embeddings N(0, d_model^-0.5) with the padding row
zeroed, Xavier-uniform for every projection, zero biases.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nmt.model.attention import AttentionMaps, padding_mask
from nmt.model.config import ModelConfig
from nmt.model.dropout import Dropout
from nmt.model.linear import Linear, linear
from nmt.model.layers import DecoderLayer, EncoderLayer, StepWeights, sinusoidal_positions
from nmt.tokens import PAD


@dataclass
class EncoderOut:
    memory: Tensor  # (B, S, d)
    src_mask: Tensor  # (B, 1, 1, S), True = real token


@dataclass
class DecoderState:
    """Everything incremental decoding carries between steps.

    Rows are hypotheses, ``beam`` consecutive rows per sentence. Self-attention keys/values have one row per
    hypothesis and hold exactly the positions decoded so far, contiguous, so the batched products of attention
    read them as they are (on a CPU those products run several times slower on strided views, such as a
    cache with spare capacity or keys and values sharing one tensor); a step appends one position, and
    reordering copies only what exists. Cross-attention keys/values have one row per *sentence*: the beams of
    a sentence attend to the same source, so reordering hypotheses never copies them, and the beam's queries
    go through attention as one block. Heads are folded into the first dimension.
    """

    self_k: list[Tensor]  # per layer (R, h, step, d_k)
    self_v: list[Tensor]  # per layer (R, h, step, d_v)
    cross_k: list[Tensor]  # per layer (N·h, S, d_k), computed once
    cross_v: list[Tensor]  # per layer (N·h, S, d_v)
    cross_bias: Tensor  # (N·h, 1, S): 0 for source tokens, -inf for padding
    weights: list[StepWeights]  # per layer, the parameters arranged for steps
    positions: Tensor  # (max_positions, d) in the model's dtype
    beam: int = 1
    step: int = 0

    def append(self, i: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append layer ``i``'s keys (R, h, 1, d_k) and values (R, h, 1, d_v) at position ``step``; returns the
        layer's caches with heads folded in, (R·h, step + 1, d_k) and (R·h, step + 1, d_v)."""
        self.self_k[i] = torch.cat([self.self_k[i], k], dim=2)
        self.self_v[i] = torch.cat([self.self_v[i], v], dim=2)
        return self.self_k[i].flatten(0, 1), self.self_v[i].flatten(0, 1)

    def reorder(self, rows: Tensor, sentences: Tensor | None = None, beam: int | None = None) -> None:
        """Continue with the hypotheses ``rows`` (indices into the current rows; ``beam`` per sentence kept, if
        it changes); ``sentences`` (indices of the sentences kept) when some have left the batch."""
        if beam is not None:
            self.beam = beam
        self.self_k = [c.index_select(0, rows) for c in self.self_k]
        self.self_v = [c.index_select(0, rows) for c in self.self_v]
        if sentences is not None:
            heads = self.self_k[0].size(1)
            by_sentence = lambda c: c.unflatten(0, (-1, heads)).index_select(0, sentences).flatten(0, 1)  # noqa: E731
            self.cross_k = [by_sentence(c) for c in self.cross_k]
            self.cross_v = [by_sentence(c) for c in self.cross_v]
            self.cross_bias = by_sentence(self.cross_bias)


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.src_embed = nn.Embedding(cfg.vocab_size, d, padding_idx=PAD)
        self.tgt_embed = self.src_embed if cfg.share_embeddings else nn.Embedding(cfg.vocab_size, d, padding_idx=PAD)
        for emb in {id(self.src_embed): self.src_embed, id(self.tgt_embed): self.tgt_embed}.values():
            nn.init.normal_(emb.weight, 0.0, d**-0.5)
            with torch.no_grad():
                emb.weight[PAD].zero_()
        self.output_proj = None if cfg.share_embeddings else Linear(d, cfg.vocab_size, bias=False)
        if self.output_proj is not None:
            nn.init.normal_(self.output_proj.weight, 0.0, d**-0.5)
        # §3.5's sinusoids, or (Table 3, row E) a learned embedding per position.
        self.register_buffer("positions", sinusoidal_positions(cfg.max_positions, d), persistent=False)
        self.position_embed = nn.Embedding(cfg.max_positions, d) if cfg.positions == "learned" else None
        if self.position_embed is not None:
            nn.init.normal_(self.position_embed.weight, 0.0, d**-0.5)
        self.embed_scale = math.sqrt(d)
        self.dropout = Dropout(cfg.dropout)
        self.encoder = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        # Pre-norm stacks end in a layer norm; post-norm layers already end in one (§3.1).
        self.encoder_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps) if cfg.pre_norm else nn.Identity()
        self.decoder_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps) if cfg.pre_norm else nn.Identity()

    def embed(self, table: nn.Embedding, tokens: Tensor, offset: int = 0) -> Tensor:
        """Embedding × √d_model + PE, then dropout (§3.4, §3.5, §5.4). tokens: (B, T) → (B, T, d)."""
        t = tokens.size(1)
        self._check_positions(offset + t)
        table_pos = self.positions if self.position_embed is None else self.position_embed.weight
        x = table(tokens) * self.embed_scale + table_pos[offset : offset + t].to(dtype=table.weight.dtype)
        return self.dropout(x)

    def _check_positions(self, length: int) -> None:
        if length > self.cfg.max_positions:
            raise ValueError(f"sequence of {length} positions exceeds max_positions {self.cfg.max_positions}")

    @property
    def output_weight(self) -> Tensor:
        """The output projection (V, d): the target embedding when they are shared (§3.4)."""
        return self.tgt_embed.weight if self.output_proj is None else self.output_proj.weight

    def logits(self, h: Tensor) -> Tensor:
        return linear(h, self.output_weight)

    def encode(self, src: Tensor, maps: AttentionMaps | None = None) -> EncoderOut:
        """src: (B, S) ids, right-padded → memory (B, S, d) and its key-padding mask. ``maps``: record the
        self-attention weights there (explicitly computed; leave None for speed)."""
        mask = padding_mask(src, PAD)
        x = self.embed(self.src_embed, src)
        for layer in self.encoder:
            x = layer(x, mask, maps)
        return EncoderOut(self.encoder_norm(x), mask)

    def decode_features(self, tgt_in: Tensor, enc: EncoderOut, maps: AttentionMaps | None = None) -> Tensor:
        """Teacher-forced decoder: tgt_in (B, T) (BOS + target) → its last layer's output (B, T, d), before the
        output projection. ``maps``: record the self- and cross-attention weights there (explicitly computed;
        leave None for speed)."""
        y = self.embed(self.tgt_embed, tgt_in)
        for layer in self.decoder:
            y = layer(y, enc.memory, enc.src_mask, maps)
        return self.decoder_norm(y)

    def decode(self, tgt_in: Tensor, enc: EncoderOut, maps: AttentionMaps | None = None) -> Tensor:
        """``decode_features`` projected to logits (B, T, V)."""
        return self.logits(self.decode_features(tgt_in, enc, maps))

    def features(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """The decoder's output (B, T, d) for teacher forcing, before the output projection: training takes
        it to the loss with ``output_weight`` (``nmt.train.loss.output_cross_entropy``)."""
        return self.decode_features(tgt_in, self.encode(src))

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """Logits (B, T, V) of a teacher-forced pass."""
        return self.logits(self.features(src, tgt_in))

    @torch.no_grad()
    def attention_maps(self, src: Tensor, tgt_in: Tensor) -> tuple[Tensor, AttentionMaps]:
        """``forward(src, tgt_in)`` (evaluation mode) with every layer's attention weights: the logits
        (B, T, V) and the maps, per layer (B, h, Tq, Tk) for the encoder's self-attention, the decoder's
        masked self-attention and its attention to the encoder. The same layers run, in the same order; only
        the attention weights are computed explicitly instead of inside the fused kernel."""
        if self.training:
            raise RuntimeError("attention_maps needs evaluation mode (model.eval()): dropout would change the maps")
        maps = AttentionMaps()
        logits = self.decode(tgt_in, self.encode(src, maps), maps)
        return logits, maps

    def init_state(self, enc: EncoderOut, beam: int = 1) -> DecoderState:
        """Decoding state for ``beam`` hypotheses per sentence of ``enc``; the cross-attention keys and values
        are computed here, once per sentence, and the weights arranged for steps, once per batch (so they
        always match the parameters, also while a model trains)."""
        cfg, memory = self.cfg, enc.memory
        n, heads = memory.size(0), cfg.heads
        cross = [layer.cross_attn.project_kv(memory) for layer in self.decoder]  # (N, h, S, d_k), (N, h, S, d_v)
        bias = torch.zeros(enc.src_mask.shape, dtype=memory.dtype, device=memory.device).masked_fill_(~enc.src_mask, float("-inf"))
        table_pos = self.positions if self.position_embed is None else self.position_embed.weight
        empty = lambda width: memory.new_empty(n * beam, heads, 0, width)  # noqa: E731
        return DecoderState(
            self_k=[empty(cfg.key_dim) for _ in self.decoder], self_v=[empty(cfg.value_dim) for _ in self.decoder],
            cross_k=[k.flatten(0, 1).contiguous() for k, _ in cross], cross_v=[v.flatten(0, 1).contiguous() for _, v in cross],
            cross_bias=bias.expand(n, heads, 1, -1).reshape(n * heads, 1, -1),
            weights=[layer.step_weights() for layer in self.decoder], positions=table_pos.to(memory.dtype), beam=beam,
        )

    def decode_step(self, tokens: Tensor, state: DecoderState) -> Tensor:
        """The last tokens (R,) at position ``state.step`` → next-token log-probabilities (R, V) in float32.

        Advances ``state.step``; equal to the full decoder's output at that position.
        """
        t = state.step
        self._check_positions(t + 1)
        y = F.embedding(tokens, self.tgt_embed.weight).mul_(self.embed_scale).add_(state.positions[t])  # (R, d)
        for i, layer in enumerate(self.decoder):
            y = layer.step(y, state, i)
        state.step = t + 1
        logits = self.logits(self.decoder_norm(y)).float()  # a fresh tensor (R, V)
        # In place: a second (R, V) tensor per step is a large allocation, whose fresh pages cost as much as
        # the softmax itself.
        return torch.log_softmax(logits, -1, out=logits)
