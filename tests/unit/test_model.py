"""The Transformer against the paper: positions, embeddings, masks, dropout, parameter counts, Table 3's
variants, and attention against ``torch.nn.MultiheadAttention``."""

import math

import pytest
import torch

from nmt.model.attention import MultiHeadAttention, naive_attention, padding_mask
from nmt.model.config import ModelConfig, body_parameters, model_config, total_parameters
from nmt.model.layers import sinusoidal_positions
from nmt.model.transformer import Transformer
from tests.helpers import tiny_model


@pytest.mark.parametrize("masked", [False, True])
def test_attention_equals_torch_multihead(masked: bool) -> None:
    torch.manual_seed(0)
    d, h = 32, 4
    ours = MultiHeadAttention(d, h)
    ref = torch.nn.MultiheadAttention(d, h, batch_first=True)
    ref.load_state_dict(ours.state_dict())
    x, mem = torch.randn(3, 5, d), torch.randn(3, 7, d)
    tokens = torch.tensor([[5] * 7, [5] * 4 + [0] * 3, [5] * 6 + [0]])
    mask = padding_mask(tokens, 0) if masked else None
    # nn.MultiheadAttention's key_padding_mask means "True = ignore": the opposite convention.
    kpm = (tokens == 0) if masked else None
    expected, _ = ref(x, mem, mem, key_padding_mask=kpm, need_weights=False)
    torch.testing.assert_close(ours(x, mem, mask=mask), expected, atol=1e-5, rtol=1e-5)
    causal = torch.nn.Transformer.generate_square_subsequent_mask(5)
    expected, _ = ref(x, x, x, attn_mask=causal, need_weights=False)
    torch.testing.assert_close(ours(x, causal=True), expected, atol=1e-5, rtol=1e-5)


def test_fused_attention_equals_naive() -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 6, 8) for _ in range(3))
    mask = torch.ones(2, 1, 1, 6, dtype=torch.bool)
    mask[1, ..., 4:] = False
    got = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(got, naive_attention(q, k, v, mask), atol=1e-5, rtol=1e-5)
    got = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(got, naive_attention(q, k, v, causal=True), atol=1e-5, rtol=1e-5)


def test_positional_encoding_is_the_paper_formula() -> None:
    d = 16
    pe = sinusoidal_positions(50, d)
    for pos in (0, 1, 7, 49):
        for i in range(d // 2):
            angle = pos / 10000 ** (2 * i / d)
            assert pe[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert pe[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


def test_decoder_is_causal() -> None:
    model = tiny_model()
    src = torch.tensor([[5, 6, 7, 3]])
    a = torch.tensor([[2, 10, 11, 12, 13]])
    b = torch.tensor([[2, 10, 11, 30, 31]])
    torch.testing.assert_close(model(src, a)[:, :3], model(src, b)[:, :3])
    assert not torch.allclose(model(src, a)[:, 3:], model(src, b)[:, 3:])


def test_padding_does_not_change_real_positions() -> None:
    model = tiny_model()
    src = torch.tensor([[5, 6, 7, 3]])
    tgt = torch.tensor([[2, 10, 11]])
    padded_src = torch.tensor([[5, 6, 7, 3, 0, 0, 0]])
    padded_tgt = torch.tensor([[2, 10, 11, 0, 0]])
    torch.testing.assert_close(model(padded_src, padded_tgt)[:, :3], model(src, tgt), atol=1e-5, rtol=1e-5)


def test_parameter_counts_base_and_big() -> None:
    base, big = model_config("base", vocab_size=37000), model_config("big", vocab_size=37000)
    assert body_parameters(base) == 44_138_496  # 44.14M outside the embedding
    assert body_parameters(big) == 176_357_376
    assert round(total_parameters(base) / 1e6, 1) == 63.1
    assert round(total_parameters(big) / 1e6, 1) == 214.2
    # The paper's "65M" matches tensor2tensor's padded vocabulary of 40960.
    assert round(total_parameters(model_config("base", vocab_size=40960)) / 1e6, 1) == 65.1
    variants = [model_config("tiny", vocab_size=100, **kw) for kw in ({"pre_norm": True}, {"share_embeddings": False},
                                                                      {"d_k": 16, "d_v": 64}, {"heads": 1, "d_k": 128, "d_v": 128},
                                                                      {"positions": "learned"})]
    for cfg in (base, *variants):
        if cfg.d_model > 256:
            with torch.device("meta"):
                model = Transformer(cfg)
        else:
            model = Transformer(cfg)
        assert sum(p.numel() for p in model.parameters()) == total_parameters(cfg)


def test_embeddings_are_tied_and_scaled() -> None:
    """§3.4: one matrix for source, target and pre-softmax; embeddings multiplied by √d_model; PE added (§3.5)."""
    model = tiny_model()
    assert model.src_embed.weight is model.tgt_embed.weight
    assert model.src_embed.weight[0].abs().sum() == 0  # padding row
    assert not hasattr(model, "output_proj") or model.output_proj is None
    tokens = torch.tensor([[5, 9, 3]])
    d = model.cfg.d_model
    expected = model.src_embed.weight[tokens[0]] * math.sqrt(d) + sinusoidal_positions(3, d)
    torch.testing.assert_close(model.embed(model.tgt_embed, tokens)[0], expected)
    h = torch.randn(1, 2, d)
    torch.testing.assert_close(model.logits(h), h @ model.src_embed.weight.T)  # no output bias


def test_dropout_only_where_the_paper_puts_it() -> None:
    """§5.4: P_drop on the embeddings+PE and on each sub-layer's output before the residual add; no attention
    or ReLU dropout by default. Every Dropout module and rate is listed, and a model whose P_drop is 0
    computes the same in training mode as in evaluation mode."""
    model = tiny_model(dropout=0.3)
    rates = {name: m.p for name, m in model.named_modules() if isinstance(m, torch.nn.Dropout)}
    residual = {f"encoder.{i}.{b}.dropout" for i in range(2) for b in ("attn_block", "ffn_block")}
    residual |= {f"decoder.{i}.{b}.dropout" for i in range(2) for b in ("self_block", "cross_block", "ffn_block")}
    relu = {f"{stack}.{i}.ffn.dropout" for stack in ("encoder", "decoder") for i in range(2)}
    assert rates == {"dropout": 0.3, **{n: 0.3 for n in residual}, **{n: 0.0 for n in relu}}
    assert all(m.dropout == 0.0 for m in model.modules() if isinstance(m, MultiHeadAttention))
    src, tgt = torch.tensor([[5, 6, 7, 3]]), torch.tensor([[2, 10, 11]])
    off = tiny_model()
    torch.testing.assert_close(off.train()(src, tgt), off.eval()(src, tgt))
    assert not torch.allclose(model.train()(src, tgt), model.eval()(src, tgt))


def test_bad_config_is_rejected() -> None:
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(d_model=100, heads=3)
    with pytest.raises(ValueError, match="unknown architecture"):
        model_config("huge")


def test_table3_variants_change_what_they_should() -> None:
    """Rows (A)/(B) of Table 3 vary heads, d_k and d_v; row (E) learns the positions (§3.5, [9])."""
    torch.manual_seed(0)
    a = MultiHeadAttention(64, 4, d_k=8, d_v=24)
    assert a.in_proj_weight.shape == (4 * (8 + 8 + 24), 64) and a.out_proj.weight.shape == (64, 4 * 24)
    x, mem = torch.randn(2, 5, 64), torch.randn(2, 7, 64)
    q, k, v = a.project(x, mem)
    assert q.shape == (2, 4, 5, 8) and k.shape == (2, 4, 7, 8) and v.shape == (2, 4, 7, 24)
    expected = a.out_proj(naive_attention(q, k, v).transpose(1, 2).reshape(2, 5, 96))
    torch.testing.assert_close(a(x, mem), expected, atol=1e-5, rtol=1e-5)  # the scale is 1/√d_k
    learned = tiny_model(positions="learned")
    d = learned.cfg.d_model
    assert learned.position_embed.weight.shape == (learned.cfg.max_positions, d)
    tokens = torch.tensor([[5, 9, 3]])
    expected = learned.src_embed.weight[tokens[0]] * math.sqrt(d) + learned.position_embed.weight[:3]
    torch.testing.assert_close(learned.embed(learned.src_embed, tokens)[0], expected)
    with pytest.raises(ValueError, match="positions must be"):
        ModelConfig(positions="rotary")
    with pytest.raises(ValueError, match="give d_k and d_v"):
        ModelConfig(d_model=100, heads=3)
    assert ModelConfig(d_model=100, heads=3, d_k=20, d_v=20).key_dim == 20


def test_positions_beyond_the_table_are_refused() -> None:
    model = tiny_model(max_positions=4)
    with pytest.raises(ValueError, match="5 positions exceeds max_positions 4"):
        model.embed(model.src_embed, torch.tensor([[5, 6, 7, 8, 3]]))
