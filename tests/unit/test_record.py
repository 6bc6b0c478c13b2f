"""Recording attention weights (``nmt.inspect.record.attention_maps``, what ``nmt attend`` draws): the recorded
pass is the forward pass (same logits; the NumPy reference's weights on the model's own inputs), its maps
have the properties attention must have, and the normal paths never pay for it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nmt.decode.incremental import decode_step, init_state
from nmt.inspect import record
from nmt.inspect.record import attention_maps
from nmt.model import attention
from nmt.model.attention import MultiHeadAttention
from nmt.model.transformer import Transformer
from nmt.tokens import BOS, EOS, PAD
from tests.helpers import tiny_model
from tests.reference import multi_head_attention

VARIANTS = [{}, {"pre_norm": True}, {"d_k": 8, "d_v": 24}, {"positions": "learned"}]


def small(**kw: object) -> Transformer:
    return tiny_model(50, offset_vectors=True, **kw)


# Two sentences: the second has 3 padded source positions and 2 padded target positions.
SRC = torch.tensor([[5, 6, 7, 8, 9, EOS], [10, 11, EOS, PAD, PAD, PAD]])
TGT = torch.tensor([[BOS, 12, 13, 14, 15], [BOS, 16, 17, PAD, PAD]])


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items()) or "paper")
def test_recorded_pass_is_the_forward_pass(variant: dict) -> None:
    model = small(**variant)
    logits, maps = attention_maps(model, SRC, TGT)
    torch.testing.assert_close(logits, model(SRC, TGT), atol=1e-5, rtol=1e-5)
    layers, h = model.cfg.encoder_layers, model.cfg.heads
    assert [m.shape for m in maps.encoder] == [(2, h, 6, 6)] * layers
    assert [m.shape for m in maps.decoder] == [(2, h, 5, 5)] * model.cfg.decoder_layers
    assert [m.shape for m in maps.cross] == [(2, h, 5, 6)] * model.cfg.decoder_layers


def test_rows_sum_to_one_masked_positions_are_zero_and_the_decoder_is_causal() -> None:
    _, maps = attention_maps(small(), SRC, TGT)
    real_keys = (SRC != PAD)[:, None, None, :]  # (B, 1, 1, S)
    for m in maps.encoder + maps.cross:
        torch.testing.assert_close(m.sum(-1), torch.ones(m.shape[:-1]))
        assert (m.masked_select(~real_keys.expand_as(m)) == 0).all()  # exactly 0, not small
        assert (m.masked_select(real_keys.expand_as(m)) > 0).all()
    future = ~torch.ones(5, 5, dtype=torch.bool).tril()
    for m in maps.decoder:
        torch.testing.assert_close(m.sum(-1), torch.ones(m.shape[:-1]))
        assert (m[..., future] == 0).all()  # lower-triangular: no position sees a later one
        assert (m[..., ~future] > 0).all()
        torch.testing.assert_close(m[..., 0, 0], torch.ones(2, 2))  # the first position sees only itself (BOS)


@pytest.mark.parametrize("variant", [{}, {"d_k": 8, "d_v": 24}], ids=["paper", "dk!=dv"])
def test_maps_equal_the_numpy_reference_on_the_models_own_inputs(variant: dict) -> None:
    """Each attention's inputs are captured as the recorded pass runs; the float64 NumPy reference, fed the
    module's own projection weights and our masks (padding for the encoder and cross-attention, causal for
    the decoder), gives the same weights."""
    model = small(**variant)
    seen: list[tuple[str, np.ndarray, np.ndarray, MultiHeadAttention]] = []

    def capture(kind: str):
        def hook(module: MultiHeadAttention, args: tuple, kwargs: dict) -> None:
            x = args[0]
            memory = args[1] if len(args) > 1 else kwargs.get("memory")
            seen.append((kind, x.double().numpy(), (x if memory is None else memory).double().numpy(), module))
        return hook

    for layer in model.encoder:
        layer.self_attn.register_forward_pre_hook(capture("encoder"), with_kwargs=True)
    for layer in model.decoder:
        layer.self_attn.register_forward_pre_hook(capture("decoder"), with_kwargs=True)
        layer.cross_attn.register_forward_pre_hook(capture("cross"), with_kwargs=True)
    _, maps = attention_maps(model, SRC, TGT)
    recorded = {"encoder": list(maps.encoder), "decoder": list(maps.decoder), "cross": list(maps.cross)}
    real = (SRC != PAD).numpy()[:, None, None, :]
    causal = np.tril(np.ones((5, 5), dtype=bool))
    assert [k for k, *_ in seen] == ["encoder"] * 2 + ["decoder", "cross"] * 2
    for kind, x, memory, module in seen:
        w = module.in_proj_weight.detach().double().numpy()
        b = module.in_proj_bias.detach().double().numpy()
        q, k = module.sizes[0], module.sizes[0] + module.sizes[1]
        p = {"wq": w[:q], "wk": w[q:k], "wv": w[k:], "bq": b[:q], "bk": b[q:k], "bv": b[k:],
             "wo": module.out_proj.weight.detach().double().numpy(), "bo": module.out_proj.bias.detach().double().numpy()}
        _, expected = multi_head_attention(x, memory, p, module.heads, causal if kind == "decoder" else real)
        np.testing.assert_allclose(recorded[kind].pop(0).numpy(), expected, rtol=1e-4, atol=1e-6)


def test_normal_paths_never_compute_weights_explicitly(monkeypatch: pytest.MonkeyPatch) -> None:
    """forward (training too) and incremental decoding keep the fused kernel: the explicit formula is never
    evaluated, scaled_dot_product_attention runs once per attention, and recording leaves no hook behind."""
    model = small()
    attention_maps(model, SRC, TGT)
    assert not any(m._forward_hooks for m in model.modules())

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("explicit attention weights computed on a normal path")

    calls = []
    fused = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(record, "attention_weights", forbidden)
    monkeypatch.setattr(attention, "attention_weights", forbidden)
    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or fused(*a, **k))
    model.train()
    model(SRC, TGT).sum().backward()
    assert len(calls) == 2 + 2 * 2  # two encoder layers, two decoder layers of two attentions
    model.eval()
    with torch.no_grad():
        state = init_state(model, model.encode(SRC), beam=1)
        for token in (BOS, 12, 13):
            decode_step(model, torch.tensor([token, token]), state)


def test_attention_maps_refuse_training_mode() -> None:
    model = small().train()
    with pytest.raises(RuntimeError, match="evaluation mode"):
        attention_maps(model, SRC, TGT)
