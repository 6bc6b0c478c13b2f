import copy
import math

import pytest
import torch

from nmt.model.attention import MultiHeadAttention, attend_heads, naive_attention, padding_mask
from nmt.model.config import ModelConfig, body_parameters, model_config, total_parameters
from nmt.model.layers import sinusoidal_positions
from nmt.model.transformer import Transformer


def tiny(**kw) -> Transformer:
    torch.manual_seed(0)
    return Transformer(model_config("tiny", vocab_size=40, dropout=0.0, **kw)).eval()


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


@pytest.mark.parametrize("variant", [{}, {"pre_norm": True}, {"d_k": 16, "d_v": 48}, {"positions": "learned"}])
def test_incremental_decoding_equals_full_decoder(variant: dict) -> None:
    model = tiny(**variant)
    src = torch.tensor([[5, 6, 7, 8, 3], [9, 10, 3, 0, 0]])
    tgt = torch.tensor([[2, 11, 12, 13, 14, 15], [2, 16, 17, 18, 19, 20]])
    full = model(src, tgt).log_softmax(-1)
    state = model.init_state(model.encode(src))
    steps = torch.stack([model.decode_step(tgt[:, i], state) for i in range(tgt.size(1))], 1)
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=1e-5)


def test_state_reorders_hypotheses_and_drops_sentences() -> None:
    model = tiny()
    src = torch.tensor([[5, 6, 3], [9, 3, 0]])
    with torch.no_grad():  # states are copied below, which autograd's graph would forbid
        # Two sentences, a beam of 2 each: rows (0, 1) belong to sentence 0, rows (2, 3) to sentence 1.
        state = model.init_state(model.encode(src), beam=2)
        model.decode_step(torch.tensor([2, 2, 2, 2]), state)
        model.decode_step(torch.tensor([7, 8, 9, 10]), state)
        swapped = copy.deepcopy(state)
        swapped.reorder(torch.tensor([1, 0, 3, 2]))  # beams swap within each sentence
        a = model.decode_step(torch.tensor([11, 12, 13, 14]), state)
        b = model.decode_step(torch.tensor([12, 11, 14, 13]), swapped)
        torch.testing.assert_close(a, b[[1, 0, 3, 2]], atol=1e-6, rtol=1e-6)
        # Sentence 0 leaves the batch; sentence 1 goes on with its second hypothesis twice.
        alone = copy.deepcopy(state)
        alone.reorder(torch.tensor([3, 3]), sentences=torch.tensor([1]))
        c = model.decode_step(torch.tensor([6, 6]), alone)
        d = model.decode_step(torch.tensor([20, 5, 20, 6]), state)
        torch.testing.assert_close(c, d[[3, 3]], atol=1e-6, rtol=1e-6)


def test_decoder_is_causal() -> None:
    model = tiny()
    src = torch.tensor([[5, 6, 7, 3]])
    a = torch.tensor([[2, 10, 11, 12, 13]])
    b = torch.tensor([[2, 10, 11, 30, 31]])
    torch.testing.assert_close(model(src, a)[:, :3], model(src, b)[:, :3])
    assert not torch.allclose(model(src, a)[:, 3:], model(src, b)[:, 3:])


def test_padding_does_not_change_real_positions() -> None:
    model = tiny()
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
    model = tiny()
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
    torch.manual_seed(0)
    model = Transformer(model_config("tiny", vocab_size=40, dropout=0.3))
    rates = {name: m.p for name, m in model.named_modules() if isinstance(m, torch.nn.Dropout)}
    residual = {f"encoder.{i}.{b}.dropout" for i in range(2) for b in ("attn_block", "ffn_block")}
    residual |= {f"decoder.{i}.{b}.dropout" for i in range(2) for b in ("self_block", "cross_block", "ffn_block")}
    relu = {f"{stack}.{i}.ffn.dropout" for stack in ("encoder", "decoder") for i in range(2)}
    assert rates == {"dropout": 0.3, **{n: 0.3 for n in residual}, **{n: 0.0 for n in relu}}
    assert all(m.dropout == 0.0 for m in model.modules() if isinstance(m, MultiHeadAttention))
    src, tgt = torch.tensor([[5, 6, 7, 3]]), torch.tensor([[2, 10, 11]])
    off = Transformer(model_config("tiny", vocab_size=40, dropout=0.0))
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
    q = a.project_q(x)
    k, v = a.project_kv(mem)
    assert q.shape == (2, 4, 5, 8) and k.shape == (2, 4, 7, 8) and v.shape == (2, 4, 7, 24)
    expected = a.out_proj(naive_attention(q, k, v).transpose(1, 2).reshape(2, 5, 96))
    torch.testing.assert_close(a(x, mem), expected, atol=1e-5, rtol=1e-5)  # the scale is 1/√d_k
    learned = tiny(positions="learned")
    assert learned.position_embed.weight.shape == (learned.cfg.max_positions, 128)
    tokens = torch.tensor([[5, 9, 3]])
    expected = learned.src_embed.weight[tokens[0]] * math.sqrt(128) + learned.position_embed.weight[:3]
    torch.testing.assert_close(learned.embed(learned.src_embed, tokens)[0], expected)
    with pytest.raises(ValueError, match="positions must be"):
        ModelConfig(positions="rotary")
    with pytest.raises(ValueError, match="give d_k and d_v"):
        ModelConfig(d_model=100, heads=3)
    assert ModelConfig(d_model=100, heads=3, d_k=20, d_v=20).key_dim == 20


def test_attend_heads_equals_reference_attention_on_strided_inputs() -> None:
    """Decoding's attention: heads folded into the batch, keys and values read through views, an additive
    padding bias; equal to softmax(QKᵀ/√d_k)V with the mask."""
    torch.manual_seed(0)
    q = torch.randn(6, 3, 40)[..., :8]  # strided views, as the step's slices of a projection are
    kv = torch.randn(6, 5, 20)
    k, v = kv[..., :8], kv[..., 8:]
    allowed = torch.tensor([True, True, True, False, False]).expand(6, 1, 5)
    bias = torch.zeros(6, 1, 5).masked_fill(~allowed, float("-inf"))
    torch.testing.assert_close(attend_heads(q, k, v, bias), naive_attention(q, k, v, allowed), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attend_heads(q, k, v), naive_attention(q, k, v), atol=1e-5, rtol=1e-5)


def test_grouped_qkv_puts_each_heads_query_key_value_side_by_side() -> None:
    torch.manual_seed(0)
    a = MultiHeadAttention(64, 4, d_k=8, d_v=24)
    x = torch.randn(3, 64)
    q, k, v = a.project_qkv(x[:, None])  # (3, h, 1, d_k or d_v)
    weight, bias = a.grouped_qkv()
    grouped = torch.addmm(bias, x, weight).view(3, 4, 8 + 8 + 24)
    torch.testing.assert_close(grouped[..., :8], q[:, :, 0])
    torch.testing.assert_close(grouped[..., 8:16], k[:, :, 0])
    torch.testing.assert_close(grouped[..., 16:], v[:, :, 0])


def test_incremental_decoding_through_many_reorders_equals_full_decoder() -> None:
    """Forty steps of a beam of 3 whose rows swap at every step still score every row as the full decoder
    scores its own prefix."""
    torch.manual_seed(0)
    model = tiny()
    src = torch.tensor([[5, 6, 7, 8, 3], [9, 10, 3, 0, 0]])
    with torch.no_grad():
        state = model.init_state(model.encode(src), beam=3)
        prefixes = torch.full((6, 1), 2)
        for _ in range(40):
            model.decode_step(prefixes[:, -1], state)
            rows = torch.randint(0, 3, (6,)) + torch.arange(6) // 3 * 3  # each row continues a row of its sentence
            tokens = torch.randint(3, 40, (6, 1))  # random, so the rows of a sentence differ
            prefixes = torch.cat([prefixes[rows], tokens], dim=1)
            state.reorder(rows)
        full = model(src.repeat_interleave(3, 0), prefixes).log_softmax(-1)[:, -1]
        torch.testing.assert_close(model.decode_step(prefixes[:, -1], state), full, atol=1e-4, rtol=1e-4)


def test_positions_beyond_the_table_are_refused() -> None:
    model = Transformer(model_config("tiny", vocab_size=40, max_positions=4))
    with pytest.raises(ValueError, match="5 positions exceeds max_positions 4"):
        model.embed(model.src_embed, torch.tensor([[5, 6, 7, 8, 3]]))
    with torch.no_grad():
        state = model.init_state(model.encode(torch.tensor([[5, 3]])))
        for token in (2, 5, 6, 7):
            model.decode_step(torch.tensor([token]), state)
        with pytest.raises(ValueError, match="5 positions exceeds max_positions 4"):
            model.decode_step(torch.tensor([8]), state)
