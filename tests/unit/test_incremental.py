"""Incremental decoding (``nmt.decode.incremental``): one position at a time with cached keys and values, it
scores every prefix as the full decoder does, through reorders and sentences leaving the batch."""

import copy

import pytest
import torch

from nmt.decode.beam import Scorer
from nmt.decode.incremental import SOFTMAX_MIN, attend_heads, decode_step, decode_step_top, encode, fuses_top, grouped_qkv, init_state, softmax_last
from nmt.kernels import native
from nmt.model.attention import MultiHeadAttention, naive_attention
from tests.helpers import tiny_model


WIDE = {"vocab_size": 4096, "d_model": 256, "d_ff": 512, "heads": 4}


@pytest.mark.parametrize("variant", [{}, {"pre_norm": True}, {"d_k": 16, "d_v": 48}, {"positions": "learned"}, WIDE])
def test_incremental_decoding_equals_full_decoder(variant: dict, step_path: str) -> None:
    model = tiny_model(**variant, offset_vectors=True)
    # Three rows: a step pads them to four where the projections are packed.
    src = torch.tensor([[5, 6, 7, 8, 3], [9, 10, 3, 0, 0], [11, 12, 13, 3, 0]])
    tgt = torch.tensor([[2, 11, 12, 13, 14, 15], [2, 16, 17, 18, 19, 20], [2, 21, 22, 23, 24, 25]])
    full = model(src, tgt).log_softmax(-1)
    with torch.no_grad():
        enc = encode(model, src)  # 15 positions: padded to 16 where the projections are packed
        torch.testing.assert_close(enc.memory, model.encode(src).memory, atol=1e-5, rtol=1e-5)
        assert torch.equal(enc.src_mask, model.encode(src).src_mask)
        state = init_state(model, enc)
        assert state.fused_attention == (step_path == "C")
        arranged = state.arranged
        projections = [arranged.project, arranged.layers[0].qkv, arranged.layers[0].fc1, arranged.encoder[0].qkv, arranged.cross_kv[0]]
        if step_path == "C":  # the products in C too
            assert all(p.panels is not None for p in projections)
        elif torch.backends.mkldnn.is_available():  # oneDNN's packed products, on rows padded to buckets
            assert all(p.packed is not None for p in projections)
        steps = torch.stack([decode_step(model, tgt[:, i], state) for i in range(tgt.size(1))], 1)
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("vocab, k", [(4096, 8), (40, 8), (12, 16)])  # a vocabulary smaller than k: -inf after its entries
def test_a_steps_best_tokens_are_those_of_its_log_probabilities(vocab: int, k: int, step_path: str) -> None:
    """``decode_step_top`` (in one C pass where the output projection is the C product) gives each row's k
    best log-probabilities and tokens, banned tokens excluded, and the log-probability of EOS, as
    ``decode_step``'s log-probabilities give them."""
    model = tiny_model(vocab, **({"d_model": 64, "d_ff": 128} if vocab > 100 else {}), offset_vectors=True)
    src = torch.tensor([[5, 6, 7, 8, 3], [9, 10, 3, 0, 0], [11, 4, 3, 0, 0]])
    banned = torch.tensor([0, 2])
    with torch.no_grad():
        fused, plain = init_state(model, encode(model, src)), init_state(model, encode(model, src))
        assert fuses_top(fused) == (step_path == "C")
        for tokens in ([2, 2, 2], [7, 8, 9], [5, 3, 11]):
            values, columns, eos = decode_step_top(model, torch.tensor(tokens), fused, k, banned, 3)
            lprobs = decode_step(model, torch.tensor(tokens), plain)
            torch.testing.assert_close(eos, lprobs[:, 3], atol=1e-5, rtol=1e-5)
            lprobs[:, banned] = float("-inf")
            n = min(k, vocab - 2)
            want, want_columns = lprobs.topk(n, dim=1)
            torch.testing.assert_close(values[:, :n], want, atol=1e-5, rtol=1e-5)
            assert torch.equal(columns[:, :n], want_columns)
            assert (values[:, n:] == float("-inf")).all() and values.shape == columns.shape == (3, k)


def test_state_reorders_hypotheses_and_drops_sentences(step_path: str) -> None:
    model = tiny_model()
    src = torch.tensor([[5, 6, 3], [9, 3, 0]])
    with torch.no_grad():  # states are copied below, which autograd's graph would forbid
        # Two sentences, a beam of 2 each: rows (0, 1) belong to sentence 0, rows (2, 3) to sentence 1.
        state = init_state(model, model.encode(src), beam=2)
        decode_step(model, torch.tensor([2, 2, 2, 2]), state)
        decode_step(model, torch.tensor([7, 8, 9, 10]), state)
        swapped = copy.deepcopy(state)
        if state.fused_attention:  # the copy's C steps write into its own keys and values, not the original's
            own = [[c.data_ptr() for c in s.chunks] for s in swapped.store]
            assert [s.table.tolist() for s in swapped.store] == own != [s.table.tolist() for s in state.store]
        swapped.reorder(torch.tensor([1, 0, 3, 2]))  # beams swap within each sentence
        a = decode_step(model, torch.tensor([11, 12, 13, 14]), state)
        b = decode_step(model, torch.tensor([12, 11, 14, 13]), swapped)
        torch.testing.assert_close(a, b[[1, 0, 3, 2]], atol=1e-6, rtol=1e-6)
        # Sentence 0 leaves the batch; sentence 1 goes on with its second hypothesis twice.
        alone = copy.deepcopy(state)
        alone.reorder(torch.tensor([3, 3]), sentences=torch.tensor([1]))
        c = decode_step(model, torch.tensor([6, 6]), alone)
        d = decode_step(model, torch.tensor([20, 5, 20, 6]), state)
        torch.testing.assert_close(c, d[[3, 3]], atol=1e-6, rtol=1e-6)


def test_incremental_decoding_through_many_reorders_equals_full_decoder(step_path: str) -> None:
    """Forty steps of a beam of 3 whose rows swap at every step still score every row as the full decoder
    scores its own prefix."""
    model = tiny_model()
    src = torch.tensor([[5, 6, 7, 8, 3], [9, 10, 3, 0, 0]])
    with torch.no_grad():
        state = init_state(model, model.encode(src), beam=3)
        prefixes = torch.full((6, 1), 2)
        for _ in range(40):
            decode_step(model, prefixes[:, -1], state)
            rows = torch.randint(0, 3, (6,)) + torch.arange(6) // 3 * 3  # each row continues a row of its sentence
            tokens = torch.randint(3, 40, (6, 1))  # random, so the rows of a sentence differ
            prefixes = torch.cat([prefixes[rows], tokens], dim=1)
            state.reorder(rows)
        full = model(src.repeat_interleave(3, 0), prefixes).log_softmax(-1)[:, -1]
        torch.testing.assert_close(decode_step(model, prefixes[:, -1], state), full, atol=1e-4, rtol=1e-4)


def test_rows_shrinking_within_a_bucket_still_score_as_the_full_decoder(step_path: str) -> None:
    """20 rows and then 18 (a sentence leaves), both padded to 32 for oneDNN's products, the C products' 18
    the first of the 20 rows kept: the rows the attention buffer keeps from the step before never reach the
    hypotheses' scores."""
    torch.manual_seed(0)
    model = tiny_model()
    src = torch.randint(5, 40, (10, 6))
    src[:, -1] = 3
    with torch.no_grad():
        state = init_state(model, encode(model, src), beam=2)
        prefixes = torch.full((20, 1), 2)
        for _ in range(3):
            decode_step(model, prefixes[:, -1], state)
            prefixes = torch.cat([prefixes, torch.randint(5, 40, (20, 1))], dim=1)
        kept = 20 if step_path == "C" else 32 if torch.backends.mkldnn.is_available() else None
        if kept:
            assert state.scratch is not None and state.scratch.size(0) == kept
            buffer = state.scratch
        state.reorder(torch.arange(2, 20), sentences=torch.arange(1, 10))  # sentence 0 leaves
        got = decode_step(model, prefixes[2:, -1], state)
        if kept:
            assert state.scratch is buffer  # the same buffer, its last rows from the step before
        full = model(src[1:].repeat_interleave(2, 0), prefixes[2:]).log_softmax(-1)[:, -1]
    torch.testing.assert_close(got, full, atol=1e-5, rtol=1e-5)


def test_a_store_that_grows_past_its_first_chunk_scores_as_the_full_decoder(step_path: str) -> None:
    """40 sentences of 4 hypotheses a step: the C steps' store of keys and values (chunks of 1,024 rows)
    takes new chunks on the seventh step; every row still scores its own prefix, through reorders."""
    torch.manual_seed(1)
    model = tiny_model()
    src = torch.randint(5, 40, (40, 5))
    src[:, -1] = 3
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        state = init_state(model, encode(model, src), beam=4)
        prefixes = torch.full((160, 1), 2)
        for _ in range(9):
            decode_step(model, prefixes[:, -1], state)
            rows = (torch.arange(160) // 4) * 4 + torch.randint(0, 4, (160,), generator=g)  # hypotheses continue others of their sentence
            state.reorder(rows)
            prefixes = torch.cat([prefixes[rows], torch.randint(5, 40, (160, 1), generator=g)], dim=1)
        got = decode_step(model, prefixes[:, -1], state)
        if step_path == "C":
            assert state.stored == 1600 and len(state.store[0].chunks) == 2
        full = model(src.repeat_interleave(4, 0), prefixes).log_softmax(-1)[:, -1]
    torch.testing.assert_close(got, full, atol=1e-5, rtol=1e-5)


def test_search_encoder_needs_evaluation_mode() -> None:
    model = tiny_model().train()
    with torch.no_grad(), pytest.raises(RuntimeError, match="evaluation mode"):
        encode(model, torch.tensor([[5, 6, 3]]))


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
    # One query, as a self-attention step has: over few positions a weighted sum, over many a product.
    for positions in (1, 3, 12, 13, 40):
        q1, k1, v1 = torch.randn(6, 1, 32), torch.randn(6, positions, 32), torch.randn(6, positions, 32)
        out = torch.full((6, 1, 32), float("nan"))
        assert attend_heads(q1, k1, v1, out=out) is out
        torch.testing.assert_close(out, naive_attention(q1, k1, v1), atol=1e-5, rtol=1e-5)


def test_softmax_of_short_rows_equals_softmax() -> None:
    """Rows shorter than ``SOFTMAX_MIN`` go through -inf padding: the same weights, summing to 1, masked
    positions exactly 0, on contiguous and strided scores."""
    torch.manual_seed(0)
    for width in (1, 2, 7, 12, SOFTMAX_MIN - 1, SOFTMAX_MIN, 40):
        scores = torch.randn(30, 3, 2 * width)[..., ::2] * 4  # strided
        if width > 1:
            scores[0, 0, -1] = float("-inf")  # a masked position
        got = softmax_last(scores)
        assert got.shape == scores.shape
        torch.testing.assert_close(got, torch.softmax(scores, -1), atol=1e-7, rtol=1e-6)
        torch.testing.assert_close(got.sum(-1), torch.ones(30, 3))
        if width > 1:
            assert got[0, 0, -1] == 0
    half = torch.randn(4, 1, 5, dtype=torch.bfloat16)
    assert softmax_last(half).dtype == torch.bfloat16


def test_short_sources_get_padding_positions_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """On torch's path a source batch narrower than ``SOFTMAX_MIN`` has its cross-attention keys and values
    padded once, at the start, with zeros and a -inf bias; the steps still score as the full decoder (tested
    above)."""
    monkeypatch.setattr(native, "_loaded", [None])
    model = tiny_model()
    src = torch.tensor([[5, 6, 7, 3], [9, 3, 0, 0]])
    with torch.no_grad():
        state = init_state(model, model.encode(src))
    heads = model.cfg.heads
    assert state.cross_k[0].shape[:2] == (2 * heads, SOFTMAX_MIN) and state.cross_v[0].size(1) == SOFTMAX_MIN
    for padded in (state.cross_k[0][:, 4:], state.cross_v[0][:, 4:]):
        assert torch.equal(padded, torch.zeros_like(padded))
    assert (state.cross_bias[:, :, 4:] == float("-inf")).all() and (state.cross_bias[heads:, :, 2:] == float("-inf")).all()
    assert (state.cross_bias[:heads, :, :4] == 0).all()


def test_the_c_steps_read_sources_padded_to_16_keys_transposed(step_path: str) -> None:
    """With the C steps, each sentence's cross-attention keys are stored transposed, (d_k, S), and every
    source is padded to a multiple of 16 positions (keys and values 0, bias -inf)."""
    if step_path == "torch":
        return
    model = tiny_model(d_k=8, d_v=24)
    src = torch.randint(5, 30, (2, 19))
    src[1, 5:] = 0
    with torch.no_grad():
        state = init_state(model, model.encode(src))
        assert state.fused_attention
        memory = model.encode(src).memory
    heads, attn = model.cfg.heads, model.decoder[0].cross_attn
    keys = slice(attn.sizes[0], attn.sizes[0] + attn.sizes[1])
    k = (memory @ attn.in_proj_weight[keys].T + attn.in_proj_bias[keys]).view(2, 19, heads, 8).transpose(1, 2).reshape(2 * heads, 19, 8)
    assert state.cross_k[0].shape == (2 * heads, 8, 32) and state.cross_v[0].shape == (2 * heads, 32, 24)
    torch.testing.assert_close(state.cross_k[0][:, :, :19], k.transpose(1, 2), atol=1e-5, rtol=1e-5)
    assert (state.cross_k[0][:, :, 19:] == 0).all() and (state.cross_v[0][:, 19:] == 0).all()
    assert state.cross_bias.shape == (2 * heads, 1, 32)
    assert (state.cross_bias[:heads, :, :19] == 0).all() and (state.cross_bias[:heads, :, 19:] == float("-inf")).all()
    assert (state.cross_bias[heads:, :, 5:] == float("-inf")).all()


def test_grouped_qkv_puts_each_heads_query_key_value_side_by_side() -> None:
    torch.manual_seed(0)
    a = MultiHeadAttention(64, 4, d_k=8, d_v=24)
    x = torch.randn(3, 64)
    q, k, v = a.project(x[:, None])  # (3, h, 1, d_k or d_v)
    weight, bias = grouped_qkv(a)
    grouped = torch.nn.functional.linear(x, weight, bias).view(3, 4, 8 + 8 + 24)
    torch.testing.assert_close(grouped[..., :8], q[:, :, 0])
    torch.testing.assert_close(grouped[..., 8:16], k[:, :, 0])
    torch.testing.assert_close(grouped[..., 16:], v[:, :, 0])


def test_positions_beyond_the_table_are_refused() -> None:
    model = tiny_model(max_positions=4)
    with torch.no_grad():
        state = init_state(model, model.encode(torch.tensor([[5, 3]])))
        for token in (2, 5, 6, 7):
            decode_step(model, torch.tensor([token]), state)
        with pytest.raises(ValueError, match="5 positions exceeds max_positions 4"):
            decode_step(model, torch.tensor([8]), state)


def test_arranged_weights_are_kept_until_a_parameter_changes() -> None:
    """A searcher packs the weights once for all its batches, and again after an in-place update (an
    optimizer step between validations), after which it decodes with the new weights."""
    model = tiny_model(offset_vectors=True)
    src = torch.tensor([[5, 6, 7, 3], [9, 10, 3, 0]])
    scorer = Scorer([model])
    with torch.no_grad():
        scorer.start(src, 2)
        first = scorer.arranged[0]
        scorer.start(src, 2)
        assert scorer.arranged[0] is first
        model.decoder[0].ffn.fc2.weight.mul_(-1.5)
        state = scorer.start(src, 1)[0]
        assert scorer.arranged[0] is not first
        got = torch.stack([decode_step(model, t, state) for t in torch.tensor([[2, 2], [11, 16], [12, 17]])], 1)
    full = model(src, torch.tensor([[2, 11, 12], [2, 16, 17]])).log_softmax(-1)
    torch.testing.assert_close(got, full, atol=1e-5, rtol=1e-5)
    changed = scorer.arranged[0]
    weight = model.decoder[1].self_attn.in_proj_weight
    version = weight._version
    weight.data = -weight.data  # other storage, same version counter (as load_state_dict(assign=True) can leave it)
    assert weight._version == version
    with torch.no_grad():
        scorer.start(src, 1)
    assert scorer.arranged[0] is not changed
