"""Attention from first principles: scaled dot-product and multi-head attention (§3.2) written in NumPy, in
float64, with no autograd and no framework, padding and causal masks included. It is the reference that our
``MultiHeadAttention`` (fused kernel and explicit weights) and ``torch.nn.MultiheadAttention`` are checked
against, on the same weights (tests/unit/test_attention_reference.py). docs/attention.md walks through the
same computation."""

from __future__ import annotations

import math

import numpy as np


def softmax(scores: np.ndarray) -> np.ndarray:
    """Softmax over the last axis; -inf scores get weight exactly 0 (a row must keep one finite score)."""
    shifted = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def scaled_dot_product_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Attention(Q, K, V) = softmax(QKᵀ/√d_k) V for q (..., Tq, d_k), k (..., Tk, d_k), v (..., Tk, d_v).

    ``allowed`` (broadcast to (..., Tq, Tk)): True where query i may attend to key j; the other scores are
    set to -inf before the softmax, so their weights are 0. Returns the output (..., Tq, d_v) and the
    weights (..., Tq, Tk)."""
    scores = q @ np.swapaxes(k, -1, -2) / math.sqrt(q.shape[-1])
    if allowed is not None:
        scores = np.where(allowed, scores, -np.inf)
    weights = softmax(scores)
    return weights @ v, weights


def causal(t: int) -> np.ndarray:
    """(T, T): query i may attend to keys 0..i, never to a later position."""
    return np.tril(np.ones((t, t), dtype=bool))


def key_padding(real: np.ndarray) -> np.ndarray:
    """(B, Tk) True for real keys → (B, 1, 1, Tk), broadcast over heads and queries."""
    return real[:, None, None, :]


def split_heads(x: np.ndarray, heads: int) -> np.ndarray:
    b, t, width = x.shape
    return x.reshape(b, t, heads, width // heads).transpose(0, 2, 1, 3)  # (B, h, T, width/h)


def multi_head_attention(x: np.ndarray, memory: np.ndarray, p: dict[str, np.ndarray], heads: int,
                         allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """MultiHead(Q, K, V) = Concat(head_1..head_h) W^O with head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V).

    Queries from ``x`` (B, Tq, d), keys and values from ``memory`` (B, Tk, d) (``x`` itself for
    self-attention). Weights in ``torch.nn.Linear``'s layout (y = x Wᵀ + b): ``wq``, ``wk`` (h·d_k, d),
    ``wv`` (h·d_v, d), ``wo`` (d, h·d_v), and biases ``bq``, ``bk``, ``bv``, ``bo``. Returns the output
    (B, Tq, d) and every head's weights (B, h, Tq, Tk)."""
    q = split_heads(x @ p["wq"].T + p["bq"], heads)
    k = split_heads(memory @ p["wk"].T + p["bk"], heads)
    v = split_heads(memory @ p["wv"].T + p["bv"], heads)
    out, weights = scaled_dot_product_attention(q, k, v, allowed)  # (B, h, Tq, d_v)
    b, _, t, _ = out.shape
    concat = out.transpose(0, 2, 1, 3).reshape(b, t, -1)
    return concat @ p["wo"].T + p["bo"], weights


def random_parameters(rng: np.random.Generator, d: int, heads: int, d_k: int, d_v: int) -> dict[str, np.ndarray]:
    shape = {"wq": (heads * d_k, d), "wk": (heads * d_k, d), "wv": (heads * d_v, d), "wo": (d, heads * d_v),
             "bq": (heads * d_k,), "bk": (heads * d_k,), "bv": (heads * d_v,), "bo": (d,)}
    return {name: rng.normal(0.0, 0.3, s) for name, s in shape.items()}
