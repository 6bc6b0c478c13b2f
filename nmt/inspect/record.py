"""The attention weights of a forward pass, recorded without touching the model's code.

The model computes attention through the fused kernel, which never stores the weights. ``attention_maps``
runs the model's own teacher-forced forward pass with a hook on every attention module: the hook takes the
module's inputs (its queries' states, the keys' states, the mask, causal or not) and computes the weights
that pass used, softmax(QKᵀ/√d_k) with the same masks (``nmt.model.attention.attention_weights``), from the
module's own projections. Without this function, nothing is hooked and nothing is computed twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from nmt.model.attention import MultiHeadAttention, attention_weights
from nmt.model.transformer import Transformer


@dataclass
class AttentionMaps:
    """The attention weights of one forward pass, layer by layer.

    Each entry is (B, h, Tq, Tk): row i is query position i, column j key position j; a row sums to 1 over
    the positions it may attend, and masked positions are exactly 0.
    """

    encoder: list[Tensor] = field(default_factory=list)  # encoder self-attention, (B, h, S, S)
    decoder: list[Tensor] = field(default_factory=list)  # decoder (causal) self-attention, (B, h, T, T)
    cross: list[Tensor] = field(default_factory=list)  # decoder-to-encoder attention, (B, h, T, S)


def _recorder(into: list[Tensor]):  # noqa: ANN202 - a forward hook
    def hook(module: MultiHeadAttention, args: tuple[Any, ...], kwargs: dict[str, Any], _output: Tensor) -> None:
        x = args[0]
        memory = args[1] if len(args) > 1 else kwargs.get("memory")
        q, k, _ = module.project(x, memory)
        into.append(attention_weights(q, k, kwargs.get("mask"), kwargs.get("causal", False)))

    return hook


@torch.no_grad()
def attention_maps(model: Transformer, src: Tensor, tgt_in: Tensor) -> tuple[Tensor, AttentionMaps]:
    """``model(src, tgt_in)`` (evaluation mode) with every layer's attention weights: the logits (B, T, V)
    and the maps, per layer (B, h, Tq, Tk) for the encoder's self-attention, the decoder's masked
    self-attention and its attention to the encoder."""
    if model.training:
        raise RuntimeError("attention_maps needs evaluation mode (model.eval()): dropout would change the maps")
    maps = AttentionMaps()
    targets = [(layer.self_attn, maps.encoder) for layer in model.encoder]
    targets += [(module, into) for layer in model.decoder for module, into in ((layer.self_attn, maps.decoder), (layer.cross_attn, maps.cross))]
    handles = [module.register_forward_hook(_recorder(into), with_kwargs=True) for module, into in targets]
    try:
        logits = model(src, tgt_in)
    finally:
        for handle in handles:
            handle.remove()
    return logits, maps
