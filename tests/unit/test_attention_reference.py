"""The NumPy reference of attention (tests/reference.py), checked by hand, and our ``MultiHeadAttention`` and
``torch.nn.MultiheadAttention`` checked against it on the same weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nmt.model.attention import MultiHeadAttention, attention_weights, padding_mask
from tests.reference import causal, key_padding, multi_head_attention, random_parameters, scaled_dot_product_attention


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
        q, k, _ = mha.project(tx, tm)
        weights = attention_weights(q, k, mask, case["causal"])  # the formula written out, as nmt attend records it
    np.testing.assert_allclose(fused.numpy(), expected, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(weights.numpy(), expected_weights, rtol=1e-10, atol=1e-12)
    assert (weights.numpy()[expected_weights == 0] == 0).all()  # masked positions exactly 0


def test_our_weights_in_float32_equal_reference() -> None:
    """What a checkpoint runs in: float32, against the float64 reference, on a padded causal example."""
    case = dict(cross=False, pad=True, causal=True)
    x, _, p, real = example(case, seed=1)
    _, expected = multi_head_attention(x, x, p, HEADS, reference_allowed(case, real))
    mha = ours_with(p, 4, 4).float()
    q, k, _ = mha.project(torch.from_numpy(x).float())
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
