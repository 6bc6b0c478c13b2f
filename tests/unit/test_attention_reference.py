"""Attention from first principles: scaled dot-product and multi-head attention (§3.2) written in NumPy, in
float64, with no autograd and no framework, padding and causal masks included. It is the reference that our
``MultiHeadAttention`` (fused kernel and explicit weights) and ``torch.nn.MultiheadAttention`` are checked
against, on the same weights. docs/attention.md walks through the same computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nmt.model.attention import MultiHeadAttention, attention_weights, padding_mask


# ------------------------------------------------------------------------------------------------ the reference


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


# ------------------------------------------------------------------------------ the reference, checked by hand


def test_reference_on_a_hand_computed_example() -> None:
    q = np.array([[1.0, 0.0]])
    k = np.array([[1.0, 0.0], [0.0, 1.0]])
    v = np.array([[1.0, 2.0], [3.0, 4.0]])
    # Scores q·k / √2 = [1/√2, 0]; softmax → [e^(1/√2), 1] / (e^(1/√2) + 1).
    w0 = math.exp(1 / math.sqrt(2)) / (math.exp(1 / math.sqrt(2)) + 1)
    out, weights = scaled_dot_product_attention(q, k, v)
    np.testing.assert_allclose(weights, [[w0, 1 - w0]])
    np.testing.assert_allclose(out, [[w0 * 1 + (1 - w0) * 3, w0 * 2 + (1 - w0) * 4]])
    out, weights = scaled_dot_product_attention(q, k, v, np.array([[True, False]]))
    np.testing.assert_array_equal(weights, [[1.0, 0.0]])
    np.testing.assert_array_equal(out, [[1.0, 2.0]])


def test_reference_masks() -> None:
    rng = np.random.default_rng(0)
    real = np.array([[True] * 5, [True] * 3 + [False] * 2])
    q, k, v = rng.normal(size=(2, 2, 5, 4)), rng.normal(size=(2, 2, 5, 4)), rng.normal(size=(2, 2, 5, 3))
    allowed = key_padding(real) & causal(5)
    _, weights = scaled_dot_product_attention(q, k, v, allowed)
    np.testing.assert_allclose(weights.sum(-1), 1.0)
    assert (weights[np.broadcast_to(~allowed, weights.shape)] == 0).all()
    assert (weights[np.broadcast_to(allowed, weights.shape)] > 0).all()
    np.testing.assert_array_equal(weights[..., 0, :], np.eye(5)[0].reshape(1, 1, 5).repeat(2, 0).repeat(2, 1))
    # Changing a masked key or value changes nothing.
    k2, v2 = k.copy(), v.copy()
    k2[1, :, 4], v2[1, :, 4] = 100.0, -100.0
    np.testing.assert_array_equal(scaled_dot_product_attention(q, k2, v2, allowed)[0], scaled_dot_product_attention(q, k, v, allowed)[0])


# ------------------------------------------------------------------------- ours and torch's, against the reference

D, HEADS, B, TQ, TK = 12, 3, 2, 5, 6
CASES = {
    "self": dict(cross=False, pad=False, causal=False),
    "self-padded": dict(cross=False, pad=True, causal=False),
    "causal": dict(cross=False, pad=False, causal=True),
    "cross-padded": dict(cross=True, pad=True, causal=False),
}


def example(case: dict, d_k: int = D // HEADS, d_v: int = D // HEADS, seed: int = 0):
    """Random inputs, weights and masks for one case: (x, memory, parameters, key-is-real (B, Tk) or None)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(B, TQ, D))
    memory = rng.normal(size=(B, TK, D)) if case["cross"] else x
    tk = memory.shape[1]
    real = np.ones((B, tk), dtype=bool)
    if case["pad"]:
        real[1, tk - 2 :] = False  # the second sentence is 2 positions shorter
    return x, memory, random_parameters(rng, D, HEADS, d_k, d_v), (real if case["pad"] else None)


def reference_allowed(case: dict, real: np.ndarray | None) -> np.ndarray | None:
    allowed = None if real is None else key_padding(real)
    if case["causal"]:
        allowed = causal(TQ) if allowed is None else allowed & causal(TQ)
    return allowed


def load_reference(mha: torch.nn.Module, p: dict[str, np.ndarray]) -> torch.nn.Module:
    """The reference's weights into ours or ``nn.MultiheadAttention`` (both keep Q, K, V fused in ``in_proj``)."""
    t = {k: torch.from_numpy(v) for k, v in p.items()}
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([t["wq"], t["wk"], t["wv"]]))
        mha.in_proj_bias.copy_(torch.cat([t["bq"], t["bk"], t["bv"]]))
        mha.out_proj.weight.copy_(t["wo"])
        mha.out_proj.bias.copy_(t["bo"])
    return mha


def ours_with(p: dict[str, np.ndarray], d_k: int, d_v: int) -> MultiHeadAttention:
    return load_reference(MultiHeadAttention(D, HEADS, d_k=d_k, d_v=d_v).double().eval(), p)


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("dims", [(4, 4), (2, 6)], ids=["dk=dv", "dk!=dv"])
def test_our_attention_equals_reference(name: str, dims: tuple[int, int]) -> None:
    case, (d_k, d_v) = CASES[name], dims
    x, memory, p, real = example(case, d_k, d_v)
    expected, expected_weights = multi_head_attention(x, memory, p, HEADS, reference_allowed(case, real))
    mha = ours_with(p, d_k, d_v)
    tx, tm = torch.from_numpy(x), (torch.from_numpy(memory) if case["cross"] else None)
    # Our convention is the reference's: True = may attend (padding_mask builds it from token ids).
    mask = None if real is None else padding_mask(torch.from_numpy(np.where(real, 5, 0)), 0)
    with torch.no_grad():
        fused = mha(tx, tm, mask=mask, causal=case["causal"])  # F.scaled_dot_product_attention
        record: list[torch.Tensor] = []
        explicit = mha(tx, tm, mask=mask, causal=case["causal"], record=record)
    np.testing.assert_allclose(fused.numpy(), expected, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(explicit.numpy(), expected, rtol=1e-10, atol=1e-10)
    (weights,) = record
    np.testing.assert_allclose(weights.numpy(), expected_weights, rtol=1e-10, atol=1e-12)
    assert (weights.numpy()[expected_weights == 0] == 0).all()  # masked positions exactly 0


def test_our_weights_in_float32_equal_reference() -> None:
    """What a checkpoint runs in: float32, against the float64 reference, on a padded causal example."""
    case = dict(cross=False, pad=True, causal=True)
    x, _, p, real = example(case, seed=1)
    _, expected = multi_head_attention(x, x, p, HEADS, reference_allowed(case, real))
    mha = ours_with(p, 4, 4).float()
    q, k, _ = mha.project_qkv(torch.from_numpy(x).float())
    got = attention_weights(q, k, torch.from_numpy(key_padding(real)), causal=True)
    np.testing.assert_allclose(got.detach().numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", [*CASES, "causal-padded"])
def test_torch_multihead_attention_equals_reference(name: str) -> None:
    """``nn.MultiheadAttention`` on the same weights. Its masks mean the opposite of ours and the
    reference's: ``key_padding_mask`` and a boolean ``attn_mask`` are True where a key must be *ignored*."""
    case = CASES.get(name, dict(cross=False, pad=True, causal=True))
    x, memory, p, real = example(case)
    expected, expected_weights = multi_head_attention(x, memory, p, HEADS, reference_allowed(case, real))
    mha = load_reference(torch.nn.MultiheadAttention(D, HEADS, batch_first=True, dtype=torch.float64).eval(), p)
    tx, tm = torch.from_numpy(x), torch.from_numpy(memory)
    ignore_keys = None if real is None else torch.from_numpy(~real)
    ignore_future = torch.from_numpy(~causal(TQ)) if case["causal"] else None
    with torch.no_grad():
        out, weights = mha(tx, tm, tm, key_padding_mask=ignore_keys, attn_mask=ignore_future, need_weights=True,
                           average_attn_weights=False)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(weights.numpy(), expected_weights, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("causal", [False, True])
def test_bf16_attention_on_a_cpu_runs_the_kernel_in_float32(causal: bool) -> None:
    """On a CPU the fused kernel is about 10× slower in bf16 than in float32, so bf16 heads go through it in
    float32, also under autocast (which would otherwise cast them back to bf16): the result is exactly the
    float32 kernel's on the same bf16 values, rounded to bf16, and its gradients reach the bf16 inputs."""
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4).eval()
    q, k, v = (torch.randn(3, 4, 7, 4, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    mask = padding_mask(torch.tensor([[5] * 7, [5] * 4 + [0] * 3, [5] * 2 + [0] * 5]), 0)
    mask = None if causal else mask
    heads = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask, is_causal=causal).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mha.attend(q, k, v, mask, causal)
        expected = mha.out_proj(heads.transpose(1, 2).reshape(3, 7, 16))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    out.float().sum().backward()
    assert q.grad is not None and q.grad.dtype == torch.bfloat16 and q.grad.abs().sum() > 0


def test_bf16_attention_dropout_on_a_cpu_still_drops() -> None:
    """bf16 heads on a CPU go through the fused kernel in float32 with its attention dropout: in training
    two calls drop differently, and evaluation drops nothing."""
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4, dropout=0.5)
    q, k, v = (torch.randn(2, 4, 6, 4, dtype=torch.bfloat16) for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        dropped = [mha.train().attend(q, k, v) for _ in range(2)]
        kept = mha.eval().attend(q, k, v)
    assert not torch.equal(dropped[0], dropped[1]) and not torch.equal(dropped[0], kept)
