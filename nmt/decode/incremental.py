"""Incremental decoding: the model's decoder one position at a time, with cached keys and values.

``decode_step`` computes exactly what ``Transformer.decode`` computes at the last position of a prefix (in
evaluation mode), but it runs thousands of times per batch on a few rows, so the number of torch calls is
what costs, not their arithmetic. It therefore reads the model's parameters directly instead of calling its
modules:

- Activations are 2-D (rows × d_model) and every projection is one call with weights arranged once
  (``StepModel``, made again only when the parameters change): on CPUs in float32 the C product of
  ``nmt.kernels.native`` on a weight stored in panels, which starts at once whatever the row count, or
  where no C compiler is, a oneDNN product on a weight packed for it (``nmt.kernels.packed``), the rows then
  padded once per step to the bucket its kernels are prepared for; the self-attention's Q, K, V
  projection is regrouped by head (``grouped_qkv``), so each head's query, key and value are slices
  already laid out as attention reads them.
- Attention in a step is two batched matrix products (``attend_heads``): faster than the fused kernel for a
  handful of queries on a CPU. One query over the first dozen positions is weighted by a sum instead, where
  torch's batched product would run a scalar loop. On CPUs in float32 both attentions go through C instead
  (``nmt.kernels.native``, where a C compiler is): the self-attention reading each hypothesis's positions
  where they were first written (a reorder reorders row numbers, not caches), the cross-attention over keys
  stored transposed; one call each instead of a dozen.
- The cross-attention keys and values are computed once per sentence, not per hypothesis, and the beam's
  queries of a sentence attend to them as one block: reordering hypotheses never copies them.
- On torch's path the self-attention caches hold exactly the positions decoded so far, contiguous: a step
  appends one position and a reorder copies what exists, never a preallocated maximum length.
- The search's sources are encoded here too (``encode``): the model's encoder with its projections packed
  the same way, which on a CPU is most of the encoder's time.

A step of the quick-start model, search bookkeeping included, is about 150 torch operations (fewer with the
C library, whose calls replace the projections' and attention's).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from nmt.kernels import native
from nmt.kernels.packed import PackedLinear, row_bucket
from nmt.model.attention import MultiHeadAttention, padding_mask
from nmt.model.layers import DecoderLayer, EncoderLayer, Residual
from nmt.model.transformer import EncoderOut, Transformer
from nmt.tokens import PAD


@dataclass
class StepWeights:
    """A decoder layer's projections as a step calls them, on (R, d) activations."""

    qkv: PackedLinear  # d → h·(2d_k + d_v), grouped by head
    self_out: PackedLinear
    cross_q: PackedLinear
    cross_out: PackedLinear
    fc1: PackedLinear  # with the ReLU
    fc2: PackedLinear


@dataclass
class EncoderWeights:
    """An encoder layer's projections as the search's encoder calls them, on (rows, d) activations."""

    qkv: PackedLinear  # d → h·(2d_k + d_v), as ``in_proj_weight`` lays them out
    out: PackedLinear
    fc1: PackedLinear  # with the ReLU
    fc2: PackedLinear


@dataclass
class StepModel:
    """A model's parameters arranged for the search: each decoder layer's projections, the output
    projection, each encoder layer's projections and the cross-attentions' key and value projections (a
    float32 model on a CPU thus holds each weight twice: the parameter and its packed copy). Packing weights
    takes milliseconds (a base model's, tens), so a searcher keeps one across batches (a translator's for
    its life, validation's for one pass) and ``arrange`` makes it again only when a parameter has changed in
    place or been replaced."""

    layers: list[StepWeights]
    project: PackedLinear  # the output projection (§3.4), decoder states (R, d) → logits (R, V)
    encoder: list[EncoderWeights]
    cross_kv: list[PackedLinear]  # each decoder layer's K, V projection of the encoder's output
    versions: tuple[tuple[int, int], ...]  # each parameter's storage and version counter when it was made

    def padded_rows(self, rows: int) -> int:
        """The rows a step computes for ``rows`` hypotheses. oneDNN prepares a kernel per row count, so its
        packed projections take rows padded to a bucket (``row_bucket``); padding once per step instead of at
        each of a step's dozen products saves two copies per product. The C products take any row count."""
        return row_bucket(rows) if self.project.pads_rows else rows


def arrange(model: Transformer, kept: StepModel | None = None) -> StepModel:
    """``model``'s parameters arranged for steps: ``kept`` if they have not changed since it was made (in
    place, or replaced by other tensors)."""
    versions = tuple((p.data_ptr(), p._version) for p in model.parameters())
    if kept is not None and kept.versions == versions:
        return kept
    return StepModel([step_weights(layer) for layer in model.decoder], PackedLinear(model.output_weight),
                     [encoder_weights(layer) for layer in model.encoder], [keys_values(layer.cross_attn) for layer in model.decoder], versions)


@dataclass
class DecoderState:
    """Everything incremental decoding carries between steps. What follows is torch's path; the C steps keep
    the self-attention's keys and values otherwise (below).

    Rows are hypotheses, ``beam`` consecutive rows per sentence. Self-attention keys/values have one row per
    hypothesis and hold exactly the positions decoded so far, contiguous, so the batched products of attention
    read them as they are (on a CPU those products run several times slower on strided views, such as a
    cache with spare capacity or keys and values sharing one tensor). Cross-attention keys/values have one
    row per *sentence*. Heads are folded into the first dimension.

    Reordering hypotheses is deferred to the next step's append, which writes the reordered cache and the
    new position into one new tensor: one copy of a layer's cache per step instead of two.

    With the C steps (``fused_attention``) nothing is reordered: each layer's keys and values stay in the rows
    of ``store`` where they were first written, one row per hypothesis and step, and ``ancestors`` holds the
    row of each hypothesis's every position, so that a reorder is a reorder of R × step integers, not of
    every layer's cache (a base model's 44 sentences of 4 hypotheses at step 25: 35 KB against 18 MB a layer). ``self_k`` and
    ``self_v`` are then empty.
    """

    self_k: list[Tensor]  # per layer (R, h, step, d_k), rows as of the last append
    self_v: list[Tensor]  # per layer (R, h, step, d_v)
    cross_k: list[Tensor]  # per layer (N·h, S, d_k), computed once; (N·h, d_k, S) with the C steps (``native.cross_layout``)
    cross_v: list[Tensor]  # per layer (N·h, S, d_v)
    cross_bias: Tensor  # (N·h, 1, S): 0 for source tokens, -inf for padding
    arranged: StepModel  # the parameters arranged for steps
    positions: Tensor  # (max_positions, d) in the model's dtype
    beam: int = 1
    step: int = 0
    rows: list[Tensor | None] = field(default_factory=list)  # per layer: the rows its cache continues with, not yet applied
    scratch: Tensor | None = None  # (padded rows, h·d_v): attention's output as the next projection reads it
    fused_attention: bool = False  # attention through the C steps (``nmt.kernels.native``)
    heads: int = 1  # attention heads: the cross-attention tensors fold sentences × heads into their first dimension
    store: list[native.Store] = field(default_factory=list)  # per layer with the C steps: each step's keys and values
    stored: int = 0  # the store's rows written so far (the same in every layer)
    ancestors: Tensor | None = None  # (R, step) int64 with the C steps: the store row of each hypothesis's positions

    def attention_out(self, padded: int, width: int, like: Tensor) -> Tensor:
        """A (padded, width) tensor for attention's output: the first rows of one kept across a search's steps
        (rows only ever shrink after the first steps). The rows beyond the hypotheses' only ever hold zeros or
        earlier steps' outputs, finite values whose projections are dropped."""
        if self.scratch is None or self.scratch.size(0) < padded:
            self.scratch = like.new_zeros(padded, width)
        return self.scratch[:padded]

    def advance(self, rows: int) -> None:
        """After a step's layers with the C steps: the ``rows`` hypotheses' new positions are the store's next
        rows, in order."""
        assert self.ancestors is not None
        written = torch.arange(self.stored, self.stored + rows, device=self.ancestors.device)
        self.ancestors = torch.cat([self.ancestors, written[:, None]], dim=1)
        self.stored += rows

    def take_rows(self, i: int) -> Tensor | None:
        """The rows layer ``i``'s cache continues with, not yet applied (None: as it stands), which the caller
        applies now."""
        rows = self.rows[i] if self.rows else None
        if rows is not None:
            self.rows[i] = None
        return rows

    def append(self, i: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append layer ``i``'s keys (R, h, 1, d_k) and values (R, h, 1, d_v) at position ``step``, its cache
        reordered first if hypotheses were; returns the layer's caches with heads folded in,
        (R·h, step + 1, d_k) and (R·h, step + 1, d_v)."""
        rows = self.take_rows(i)
        self.self_k[i] = _extend(self.self_k[i], rows, k)
        self.self_v[i] = _extend(self.self_v[i], rows, v)
        return self.self_k[i].flatten(0, 1), self.self_v[i].flatten(0, 1)

    def reorder(self, rows: Tensor, sentences: Tensor | None = None, beam: int | None = None) -> None:
        """Continue with the hypotheses ``rows`` (indices into the current rows; ``beam`` per sentence kept, if
        it changes); ``sentences`` (indices of the sentences kept) when some have left the batch."""
        if self.ancestors is not None:
            self.ancestors = self.ancestors.index_select(0, rows)
        else:
            # Composed with a reorder not yet applied: the new rows index the rows as they stand now.
            pending = self.rows or [None] * len(self.self_k)
            self.rows = [rows if p is None else p.index_select(0, rows) for p in pending]
        if beam is not None:
            self.beam = beam
        if sentences is not None:
            heads = self.heads
            by_sentence = lambda c: c.unflatten(0, (-1, heads)).index_select(0, sentences).flatten(0, 1)  # noqa: E731
            self.cross_k = [by_sentence(c) for c in self.cross_k]
            self.cross_v = [by_sentence(c) for c in self.cross_v]
            self.cross_bias = by_sentence(self.cross_bias)


def _extend(cache: Tensor, rows: Tensor | None, new: Tensor) -> Tensor:
    """``cat([cache[rows], new], 2)`` (``cache`` itself when ``rows`` is None) written in one pass."""
    if rows is None:
        return torch.cat([cache, new], dim=2)
    r, h, t, d = new.size(0), cache.size(1), cache.size(2), cache.size(3)
    out = cache.new_empty(r, h, t + 1, d)
    torch.index_select(cache, 0, rows, out=out[:, :, :t])
    out[:, :, t:] = new
    return out


# ATen's batched product (bmm_out_or_baddbmm_) loops over scalars when a product has fewer multiply-adds
# than this (the scores' product QKᵀ too, which the weighted sum below does not replace: it gained nothing).
SCALAR_BMM = 400
# ATen's softmax over a last dimension shorter than this runs a scalar loop: on a Zen 5 core, 2,400 rows of 12
# scores took 358 µs, of 16 scores 34 µs. Shorter rows of scores are padded to it with -inf (weight 0).
SOFTMAX_MIN = 16


def softmax_last(scores: Tensor) -> Tensor:
    """``scores.softmax(-1)``, on rows shorter than ``SOFTMAX_MIN`` through -inf padding on float32 CPU
    tensors (a strided view of the padded weights then). The padding's weights are exactly 0; the others
    differ from ATen's scalar loop in the last bit (its vectorised ``exp``), the same for every batch."""
    t = scores.size(-1)
    if t >= SOFTMAX_MIN or scores.dtype != torch.float32 or scores.device.type != "cpu":
        return scores.softmax(-1) if scores.dtype == torch.float32 else scores.float().softmax(-1).to(scores.dtype)
    return F.pad(scores, (0, SOFTMAX_MIN - t), value=float("-inf")).softmax(-1)[..., :t]


def attend_heads(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None, out: Tensor | None = None) -> Tensor:
    """softmax(QKᵀ/√d_k + bias)V with the heads folded into the batch: queries (B, Tq, d_k) against keys
    (B, Tk, d_k) and values (B, Tk, d_v), any strides → (B, Tq, d_v), written into ``out`` if given.

    Equal to ``scaled_dot_product_attention`` in evaluation mode. For the few queries of a decoding step two
    batched matrix products beat the fused kernel on a CPU, and the keys and values are read where they
    are. ``bias`` (broadcast to the scores) is 0 where a key may be attended and -inf elsewhere.
    """
    scale = q.size(-1) ** -0.5
    kt = k.transpose(1, 2)
    # baddbmm scales and adds the bias in the product's own pass.
    scores = torch.bmm(q, kt).mul_(scale) if bias is None else torch.baddbmm(bias, q, kt, alpha=scale)
    weights = softmax_last(scores)
    if q.size(1) == 1 and v.size(1) * v.size(2) < SCALAR_BMM and v.dtype == torch.float32 and v.device.type == "cpu":
        # A weighted sum instead: torch computes a batch of products this small in a scalar loop, which took
        # 4-7x longer for the first dozen positions of a step (600 rows × 4 heads of 32 on a Zen 5 core:
        # 548 against 149 µs at 8 positions). Only in float32 on CPUs: in bf16 each product would be
        # rounded before the sum, and GPUs have no scalar loop to avoid.
        return torch.sum(weights.transpose(1, 2) * v, dim=1, keepdim=True, out=out)
    return torch.bmm(weights, v, out=out)


def grouped_qkv(attn: MultiHeadAttention) -> tuple[Tensor, Tensor]:
    """The Q, K, V projection with each head's query, key and value rows side by side: weight
    (h·(2d_k + d_v), d_model) and bias, for ``F.linear``. A step's output viewed as (R·h, 2d_k + d_v) holds a
    head's query, key and value in one row, so each is a slice already laid out as attention reads it (heads
    folded into the batch) and no head needs transposing."""
    w, b = attn.in_proj_weight.split(attn.sizes), attn.in_proj_bias.split(attn.sizes)
    h = attn.heads
    weight = torch.cat([w[0].view(h, attn.d_k, -1), w[1].view(h, attn.d_k, -1), w[2].view(h, attn.d_v, -1)], dim=1)
    bias = torch.cat([b[0].view(h, attn.d_k), b[1].view(h, attn.d_k), b[2].view(h, attn.d_v)], dim=1)
    return weight.flatten(0, 1), bias.flatten()


def step_weights(layer: DecoderLayer) -> StepWeights:
    """``layer``'s projections arranged for steps (the self-attention's Q, K, V regrouped by head)."""
    sa, ca, ffn = layer.self_attn, layer.cross_attn, layer.ffn
    q = ca.sizes[0]
    return StepWeights(
        PackedLinear(*grouped_qkv(sa)), PackedLinear(sa.out_proj.weight, sa.out_proj.bias),
        PackedLinear(ca.in_proj_weight[:q], ca.in_proj_bias[:q]), PackedLinear(ca.out_proj.weight, ca.out_proj.bias),
        PackedLinear(ffn.fc1.weight, ffn.fc1.bias, relu=True), PackedLinear(ffn.fc2.weight, ffn.fc2.bias),
    )


def encoder_weights(layer: EncoderLayer) -> EncoderWeights:
    """``layer``'s projections arranged for the search's encoder."""
    sa, ffn = layer.self_attn, layer.ffn
    return EncoderWeights(PackedLinear(sa.in_proj_weight, sa.in_proj_bias), PackedLinear(sa.out_proj.weight, sa.out_proj.bias),
                          PackedLinear(ffn.fc1.weight, ffn.fc1.bias, relu=True), PackedLinear(ffn.fc2.weight, ffn.fc2.bias))


def keys_values(attn: MultiHeadAttention) -> PackedLinear:
    """The K and V rows of a cross-attention's fused projection: the encoder's output (rows, d) → its keys
    and values side by side (rows, h·(d_k + d_v))."""
    q = attn.sizes[0]
    return PackedLinear(attn.in_proj_weight[q:], attn.in_proj_bias[q:])


def encode(model: Transformer, src: Tensor, arranged: StepModel | None = None) -> EncoderOut:
    """``model.encode(src)`` in evaluation mode, src (N, S) right-padded, with the projections through
    ``arranged`` (as ``arrange`` returned it; arranged here if None): on CPUs, packed weights, the N·S
    positions padded once to a bucket. Inference only, as ``decode_step``, with the model in evaluation
    mode (as every search sets it)."""
    if model.training:
        raise RuntimeError("encode needs evaluation mode (model.eval()): dropout would change the search")
    arranged = arranged or arrange(model)
    mask = padding_mask(src, PAD)  # (N, 1, 1, S)
    x = model.embed(model.src_embed, src)  # (N, S, d)
    n, s, d = x.shape
    rows = n * s
    padded = arranged.padded_rows(rows)
    x = F.pad(x.view(rows, d), (0, 0, 0, padded - rows))  # padding rows: zeros, outputs dropped
    out = x.new_empty(padded, model.cfg.heads * model.cfg.value_dim)  # every layer's attention output in turn
    out[rows:].zero_()
    for layer, w in zip(model.encoder, arranged.encoder):
        x = _encoder_layer(layer, w, x, out, mask, n, s)
    return EncoderOut(model.encoder_norm(x[:rows]).view(n, s, d), mask)


def _encoder_layer(layer: EncoderLayer, w: EncoderWeights, x: Tensor, out: Tensor, mask: Tensor, n: int, s: int) -> Tensor:
    """``EncoderLayer.forward`` in evaluation mode on x (padded, d), whose first N·S rows are the positions
    of N sentences of S; attention's output goes into the first N·S rows of ``out`` (padded, h·d_v)."""
    sa, rows = layer.self_attn, n * s

    def self_attention(h: Tensor) -> Tensor:
        q, k, v = (sa.split_heads(p) for p in w.qkv(h)[:rows].view(n, s, -1).split(sa.sizes, dim=-1))
        heads = sa.attention(q, k, v, mask, False)  # (N, h, S, d_v)
        out[:rows].view(n, s, sa.heads, sa.d_v).copy_(heads.transpose(1, 2))
        return w.out(out)

    x = _residual_step(layer.attn_block, x, self_attention)
    return _residual_step(layer.ffn_block, x, lambda h: w.fc2(w.fc1(h)))


def init_state(model: Transformer, enc: EncoderOut, beam: int = 1, arranged: StepModel | None = None) -> DecoderState:
    """Decoding state for ``beam`` hypotheses per sentence of ``enc``; the cross-attention keys and values
    are computed here, once per sentence. ``arranged``: the model's parameters arranged for steps, as
    ``arrange`` returned them (the caller keeps them across batches); arranged here if None."""
    cfg, memory = model.cfg, enc.memory
    arranged = arranged or arrange(model)
    n, s, heads = memory.size(0), memory.size(1), cfg.heads
    cross_k, cross_v = [], []
    for layer, kv in zip(model.decoder, arranged.cross_kv):
        attn = layer.cross_attn
        k, v = kv(memory.reshape(n * s, -1)).view(n, s, -1).split(attn.sizes[1:], dim=-1)
        cross_k.append(attn.split_heads(k).flatten(0, 1).contiguous())  # (N·h, S, d_k)
        cross_v.append(attn.split_heads(v).flatten(0, 1).contiguous())
    bias = torch.zeros(enc.src_mask.shape, dtype=memory.dtype, device=memory.device).masked_fill_(~enc.src_mask, float("-inf"))
    bias = bias.expand(n, heads, 1, -1).reshape(n * heads, 1, -1)
    cpu_float32 = memory.dtype == torch.float32 and memory.device.type == "cpu"
    # Per process, never per batch: the C steps round differently from torch's.
    fused = cpu_float32 and native.library() is not None
    if fused:
        layout = [native.cross_layout(k, v, bias) for k, v in zip(cross_k, cross_v)]
        cross_k, cross_v, bias = [k for k, _, _ in layout], [v for _, v, _ in layout], layout[0][2]
    elif s < SOFTMAX_MIN and cpu_float32:
        # Sources shorter than softmax's scalar-loop threshold get padding positions once here (keys and values
        # 0, bias -inf, so weight 0), rather than their scores padded at every step (``softmax_last``).
        extra = SOFTMAX_MIN - s
        cross_k = [F.pad(c, (0, 0, 0, extra)) for c in cross_k]
        cross_v = [F.pad(c, (0, 0, 0, extra)) for c in cross_v]
        bias = F.pad(bias, (0, extra), value=float("-inf"))
    empty = lambda width: memory.new_empty(n * beam, heads, 0, width)  # noqa: E731
    layers = 0 if fused else len(model.decoder)
    store = [native.Store(heads * (cfg.key_dim + cfg.value_dim), memory.dtype, memory.device) for _ in model.decoder] if fused else []
    return DecoderState(
        self_k=[empty(cfg.key_dim) for _ in range(layers)], self_v=[empty(cfg.value_dim) for _ in range(layers)],
        cross_k=cross_k, cross_v=cross_v, cross_bias=bias,
        arranged=arranged, positions=model.position_table.to(memory.dtype), beam=beam, fused_attention=fused, heads=heads,
        store=store, ancestors=torch.empty(n * beam, 0, dtype=torch.long, device=memory.device) if fused else None,
    )


def decode_step(model: Transformer, tokens: Tensor, state: DecoderState) -> Tensor:
    """The last tokens (R,) at position ``state.step`` → next-token log-probabilities (R, V) in float32.

    Advances ``state.step``; equal to the full decoder's output at that position. Inference only: call it
    without autograd (``torch.no_grad``), as the searches do.
    """
    h, r = _decoder_output(model, tokens, state)
    logits = state.arranged.project(h)[:r].float()  # the first rows of a fresh tensor (R, V)
    # In place: a second (R, V) tensor per step is a large allocation, whose fresh pages cost as much as
    # the softmax itself.
    return torch.log_softmax(logits, -1, out=logits)


def decode_step_top(model: Transformer, tokens: Tensor, state: DecoderState, k: int, banned: Tensor, also: int) -> tuple[Tensor, Tensor, Tensor]:
    """What a beam search takes of ``decode_step``'s log-probabilities: each row's ``k`` best, largest first,
    with their tokens (R, k), ``banned`` tokens excluded, and each row's log-probability of token ``also``
    (R,). Through ``native.output_top_k`` where the output projection is the C product (``fuses_top``), so
    that the (R, V) log-probabilities are never written; else from ``decode_step``'s."""
    if fuses_top(state):
        h, r = _decoder_output(model, tokens, state)
        return native.output_top_k(h[:r], state.arranged.project.panels, k, banned, also)
    lprobs = decode_step(model, tokens, state)
    also_lprobs = lprobs[:, also].clone()
    lprobs.index_fill_(1, banned, float("-inf"))
    values, columns = lprobs.topk(min(k, lprobs.size(1)), dim=1)
    if values.size(1) < k:  # a vocabulary smaller than k: the rest are -inf
        extra = k - values.size(1)
        values, columns = F.pad(values, (0, extra), value=float("-inf")), F.pad(columns, (0, extra))
    return values, columns, also_lprobs


def fuses_top(state: DecoderState) -> bool:
    """Whether ``decode_step_top`` goes through the C library's fused output projection, log-softmax and top-k."""
    return state.fused_attention and state.arranged.project.panels is not None


def _decoder_output(model: Transformer, tokens: Tensor, state: DecoderState) -> tuple[Tensor, int]:
    """The decoder's normalised output for the last tokens (R,) at position ``state.step`` (advanced):
    (padded rows, d), of which the first R are the hypotheses'; and R."""
    t = state.step
    model.check_positions(t + 1)
    r = tokens.size(0)
    padded = state.arranged.padded_rows(r)
    if padded != r:  # the padding rows read token 0; their outputs are dropped
        tokens = F.pad(tokens, (0, padded - r))
    y = F.embedding(tokens, model.tgt_embed.weight).mul_(model.embed_scale).add_(state.positions[t])  # (padded, d)
    for i, layer in enumerate(model.decoder):
        y = _layer_step(layer, y, state, i, r)
    if state.fused_attention:
        state.advance(r)
    state.step = t + 1
    return model.decoder_norm(y), r


def _layer_step(layer: DecoderLayer, y: Tensor, state: DecoderState, i: int, r: int) -> Tensor:
    """Decoder layer ``i`` at one position: y (padded, d) holds R = sentences × beam hypotheses in its first
    rows, then padding rows (``StepModel.padded_rows``); appends the hypotheses' keys and values to the
    self-attention cache. The function of ``DecoderLayer.forward`` in evaluation mode."""
    w, sa = state.arranged.layers[i], layer.self_attn
    padded, heads, dk, dv = y.size(0), sa.heads, sa.d_k, sa.d_v
    out = state.attention_out(padded, heads * dv, y)  # the hypotheses' rows are written, the padding rows kept

    def self_attention(h: Tensor) -> Tensor:
        if state.fused_attention:  # the step's keys and values stored, each hypothesis's positions attended, in C
            qkv = w.qkv(h)[:r]
            native.self_attention_step(qkv, state.store[i], state.stored, state.ancestors, out[:r], heads, dk, dv)
            return w.self_out(out)
        qkv = w.qkv(h)[:r].view(r, heads, 1, 2 * dk + dv)  # a head's q, k, v side by side
        k, v = state.append(i, qkv[..., dk : 2 * dk], qkv[..., 2 * dk :])  # (R·h, t + 1, d_k or d_v)
        attend_heads(qkv.view(r * heads, 1, -1)[..., :dk], k, v, out=out[:r].view(r * heads, 1, dv))
        return w.self_out(out)

    def cross_attention(h: Tensor) -> Tensor:
        if state.fused_attention:
            native.cross_attention_step(w.cross_q(h)[:r], state.cross_k[i], state.cross_v[i], state.cross_bias, out[:r], heads, state.beam)
            return w.cross_out(out)
        # The beam's queries of a sentence attend as one block: (R, h·d_k) → (N·h, beam, d_k).
        n, beam = r // state.beam, state.beam
        q = w.cross_q(h)[:r].view(n, beam, heads, dk).transpose(1, 2).reshape(n * heads, beam, dk)
        heads_out = attend_heads(q, state.cross_k[i], state.cross_v[i], state.cross_bias)  # (N·h, beam, d_v)
        out[:r].view(n, beam, heads, dv).copy_(heads_out.view(n, heads, beam, dv).transpose(1, 2))
        return w.cross_out(out)

    def feed_forward(h: Tensor) -> Tensor:
        return w.fc2(w.fc1(h))

    y = _residual_step(layer.self_block, y, self_attention)
    y = _residual_step(layer.cross_block, y, cross_attention)
    return _residual_step(layer.ffn_block, y, feed_forward)


def _residual_step(block: Residual, x: Tensor, sublayer: Callable[[Tensor], Tensor]) -> Tensor:
    """``block(x, sublayer)`` without dropout, its layer norm called as a function."""
    n = block.norm
    if block.pre_norm:
        return x + sublayer(F.layer_norm(x, n.normalized_shape, n.weight, n.bias, n.eps))
    return F.layer_norm(sublayer(x).add_(x), n.normalized_shape, n.weight, n.bias, n.eps)
