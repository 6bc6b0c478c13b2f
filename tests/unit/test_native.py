"""The C library of decoding (``nmt.kernels.native``): its self- and cross-attention steps equal to torch's
reorder, append and attention, the same however a step is split across threads; built once into its cache,
refused when wrong, and absent (decoding on torch's path) where no compiler is. Its products are tested
with the other projections' paths in test_kernels."""

from pathlib import Path

import pytest
import torch

from nmt.decode.incremental import attend_heads, decode_step, init_state
from nmt.kernels import native
from tests.helpers import tiny_model


@pytest.fixture
def fresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A process that has loaded no library yet, with an empty cache of its own; returns the cache."""
    monkeypatch.setenv("NMT_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("NMT_NATIVE", "1")  # on unmeasured CPUs too (ARM), where it must be right
    monkeypatch.setattr(native, "_loaded", [])
    return tmp_path


@pytest.fixture
def needs_compiler() -> None:
    if native._compiler() is None:
        pytest.skip("no C compiler on this machine (decoding takes torch's path, tested in test_incremental)")


def reference(qkv: torch.Tensor, cache_k: torch.Tensor, cache_v: torch.Tensor, rows: torch.Tensor | None, heads: int, d_k: int, d_v: int):
    """torch's step: the caches reordered and extended, then ``attend_heads``."""
    r = qkv.size(0)
    parts = qkv.view(r, heads, 1, -1)
    old_k, old_v = (cache_k, cache_v) if rows is None else (cache_k[rows], cache_v[rows])
    k, v = torch.cat([old_k, parts[..., d_k : 2 * d_k]], 2), torch.cat([old_v, parts[..., 2 * d_k :]], 2)
    out = attend_heads(parts[..., :d_k].reshape(r * heads, 1, d_k), k.flatten(0, 1), v.flatten(0, 1))
    return k, v, out.view(r, heads * d_v)


@pytest.mark.parametrize("positions", [0, 1, 7, 12, 13, 40, 300])
@pytest.mark.parametrize("heads, d_k, d_v", [(4, 32, 32), (2, 16, 48), (8, 64, 64), (2, 8, 12), (1, 24, 20), (1, 16, 272)])
@pytest.mark.parametrize("reorder", [False, True])
def test_step_equals_reorder_append_and_attention(native_target: str, positions: int, heads: int, d_k: int, d_v: int, reorder: bool) -> None:
    g = torch.Generator().manual_seed(positions * 31 + heads)
    r = 5
    old_rows = 6 if reorder else r  # without a reorder each hypothesis continues its own row
    # qkv and out as views whose rows lie further apart than their width
    qkv = (torch.randn(8, heads * (2 * d_k + d_v) + 5, generator=g) * 2)[:r, : heads * (2 * d_k + d_v)]
    assert qkv.stride(0) > qkv.size(1)
    cache_k, cache_v = torch.randn(old_rows, heads, positions, d_k, generator=g), torch.randn(old_rows, heads, positions, d_v, generator=g)
    rows = torch.tensor([5, 0, 0, 3, 2]) if reorder else None
    buffer = torch.full((8, heads * d_v + 6), float("nan"))
    store, top, ancestors = native.store_of(cache_k, cache_v, rows, shift=4)  # chunks of 16 rows: positions across chunks
    before = store.rows(0, top)
    native.self_attention_step(qkv, store, top, ancestors, buffer[:r, 3 : 3 + heads * d_v], heads, d_k, d_v)
    want_k, want_v, want = reference(qkv.contiguous(), cache_k, cache_v, rows, heads, d_k, d_v)
    # The step's keys and values are the store's next rows, exactly; the rows before them unchanged.
    assert torch.equal(store.rows(top, r).view(r, heads, -1), torch.cat([want_k[:, :, -1], want_v[:, :, -1]], dim=2))
    assert torch.equal(store.rows(0, top), before)
    torch.testing.assert_close(buffer[:r, 3 : 3 + heads * d_v], want, atol=1e-5, rtol=1e-5)
    assert buffer[r:].isnan().all() and buffer[:, :3].isnan().all() and buffer[:, 3 + heads * d_v :].isnan().all()  # nothing else written


@pytest.mark.parametrize("positions", [1, 5, 16, 17, 40])
@pytest.mark.parametrize("heads, d_k, d_v", [(4, 32, 32), (2, 16, 48), (2, 8, 12)])
@pytest.mark.parametrize("beam", [1, 4, 6])  # queries share loads in groups of 4: one, one whole, one and a part
def test_cross_step_equals_attention_over_each_sentences_source(native_target: str, positions: int, heads: int, d_k: int, d_v: int, beam: int) -> None:
    g = torch.Generator().manual_seed(positions * 7 + beam)
    n = 3
    keys, values = torch.randn(n * heads, positions, d_k, generator=g), torch.randn(n * heads, positions, d_v, generator=g)
    bias = torch.zeros(n * heads, 1, positions)
    bias[heads : 2 * heads, :, (positions + 1) // 2 :] = float("-inf")  # the second source is shorter
    q = torch.randn(n * beam + 3, heads * d_k * 2, generator=g)[: n * beam, : heads * d_k]  # strided rows, as a step's
    buffer = torch.full((n * beam + 3, heads * d_v + 4), float("nan"))
    keys_t, padded_values, padded_bias = native.cross_layout(keys, values, bias)
    assert keys_t.size(2) % 16 == 0 and keys_t.size(2) - positions < 16
    native.cross_attention_step(q, keys_t, padded_values, padded_bias, buffer[: n * beam, 2 : 2 + heads * d_v], heads, beam)
    queries = q.reshape(n, beam, heads, d_k).transpose(1, 2).reshape(n * heads, beam, d_k)
    want = attend_heads(queries, keys, values, bias).view(n, heads, beam, d_v).transpose(1, 2).reshape(n * beam, heads * d_v)
    torch.testing.assert_close(buffer[: n * beam, 2 : 2 + heads * d_v], want, atol=1e-5, rtol=1e-5)
    assert buffer[n * beam :].isnan().all() and buffer[:, :2].isnan().all() and buffer[:, 2 + heads * d_v :].isnan().all()


def test_cross_step_is_the_same_whatever_the_batchs_longest_source(native_target: str) -> None:
    """A sentence's cross-attention does not depend on how far its batch pads the sources: padding positions
    weigh exactly 0, and whole blocks of them are skipped (bitwise the same result)."""
    g = torch.Generator().manual_seed(5)
    heads, d_k, d_v, beam, length = 2, 16, 32, 4, 21
    keys, values = torch.randn(heads, length, d_k, generator=g), torch.randn(heads, length, d_v, generator=g)
    q = torch.randn(beam, heads * d_k, generator=g)
    outputs = []
    for padded in (length, 32, 33, 100):  # the batch's longest source
        extra = padded - length
        k = torch.cat([keys, torch.randn(heads, extra, d_k, generator=g)], 1)  # padding positions: whatever the encoder gave
        v = torch.cat([values, torch.randn(heads, extra, d_v, generator=g)], 1)
        bias = torch.zeros(heads, 1, padded)
        bias[..., length:] = float("-inf")
        outputs.append(torch.empty(beam, heads * d_v))
        native.cross_attention_step(q, *native.cross_layout(k, v, bias), outputs[-1], heads, beam)
    assert all(torch.equal(o, outputs[0]) for o in outputs[1:])


@pytest.mark.parametrize("vocab, width, rows", [(4000, 128, 131), (37, 24, 5), (1000, 160, 300), (70, 16, 13), (3, 8, 2), (9000, 128, 7)])
def test_output_top_k_equals_projection_log_softmax_and_top_k(native_target: str, vocab: int, width: int, rows: int) -> None:
    """One pass over the output projection gives each row's best log-probabilities (banned tokens out of the
    top but in the softmax's sum), in order, lower columns first among equals, and the log-probability at
    one column; each row's results bitwise the same alone, among other rows, on 1 or 2 threads. A vocabulary
    of 9,000 has three column groups (merged in order), a few rows of it shared among threads by groups."""
    g = torch.Generator().manual_seed(vocab + rows)
    weight, bias, x = torch.randn(vocab, width, generator=g) * 0.3, torch.randn(vocab, generator=g), torch.randn(rows, width, generator=g)
    ties = [c for c in (5, 17, 4100) if c < vocab] if vocab > 20 else []  # none in the third group: its maximum is lower
    for c in ties:  # equal logits, the best: in one group, and across groups
        weight[c], bias[c] = weight[5], 30.0
    panels = native.pack_linear(weight, bias)
    banned = torch.tensor([0, 2])
    lprobs = torch.nn.functional.linear(x, weight, bias).log_softmax(-1)
    for k in (1, 8):
        values, columns, also = native.output_top_k(x, panels, k, banned, 1)
        torch.testing.assert_close(also, lprobs[:, 1], atol=2e-6, rtol=1e-6)
        kept = lprobs.index_fill(1, banned, float("-inf"))
        n = min(k, vocab - 2)
        want, want_columns = kept.topk(n, dim=1)
        torch.testing.assert_close(values[:, :n], want, atol=2e-6, rtol=1e-6)
        assert (values[:, n:] == float("-inf")).all()
        if ties:  # the lower column first
            assert torch.equal(columns[:, :n], kept.sort(dim=1, descending=True, stable=True).indices[:, :n])
            assert (columns[:, : min(k, len(ties))] == torch.tensor(ties[:k])).all()
        else:
            assert torch.equal(columns[:, :n], want_columns)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = [native.output_top_k(x[i : i + 1], panels, 8, banned, 1) for i in range(rows)]
        for n in (1, 2):
            torch.set_num_threads(n)
            together = native.output_top_k(x, panels, 8, banned, 1)
            for i, one in enumerate(alone):
                assert all(torch.equal(a[i], b[0]) for a, b in zip(together, one))
    finally:
        torch.set_num_threads(threads)
    with pytest.raises(ValueError, match="k 1-64"):
        native.output_top_k(x, panels, 65, banned, 1)


def test_panels_not_made_for_this_library_are_refused(needs_compiler: None) -> None:
    """The C product reads whole panels: panels of another width (a library built for another -march packs
    other widths) or layout are refused before any call."""
    panels = native.pack_linear(torch.randn(100, 32), torch.randn(100))
    x = torch.randn(3, 32)
    width = panels.weight.size(2)
    for weight, bias in ((panels.weight[:, :, : width // 2].contiguous(), panels.bias), (panels.weight.transpose(1, 2).contiguous().transpose(1, 2), panels.bias),
                         (panels.weight, panels.bias[:-1]), (panels.weight.double(), panels.bias)):
        with pytest.raises(ValueError, match="panels other than pack_linear makes"):  # refused when made
            native.Panels(weight, bias, 100, 32)
    # Panels in themselves right, of another build's width: refused by the product.
    half = width // 2
    narrow = torch.nn.functional.pad(torch.randn(100, 32), (0, 0, 0, -100 % half)).view(-1, half, 32).transpose(1, 2).contiguous()
    other = native.Panels(narrow, torch.zeros(narrow.size(0) * half), 100, 32)
    with pytest.raises(ValueError, match="panels other than pack_linear makes for this library"):
        native.linear(x, other)
    with pytest.raises(ValueError, match="panels other than pack_linear makes for this library"):
        native.output_top_k(x, other, 4, torch.tensor([0]), 3)


def test_very_large_scores_and_many_positions(native_target: str) -> None:
    """Scores far apart (weights under e^-87 of the largest are 0) and more positions than the function's
    stack buffer holds: as close to the result in float64 as torch's float32 path is."""
    g = torch.Generator().manual_seed(1)
    heads, d, r = 2, 32, 3
    qkv = torch.randn(r, heads * 3 * d, generator=g) * 30
    cache_k, cache_v = torch.randn(r, heads, 5000, d, generator=g) * 3, torch.randn(r, heads, 5000, d, generator=g)
    out = torch.empty(r, heads * d)
    native.self_attention_step(qkv, *native.store_of(cache_k, cache_v, None), out, heads, d, d)
    exact = reference(qkv.double(), cache_k.double(), cache_v.double(), None, heads, d, d)[2]
    torch_error = (reference(qkv, cache_k, cache_v, None, heads, d, d)[2] - exact).abs().max()
    assert (out - exact).abs().max() <= 2 * torch_error + 1e-6


def test_a_step_split_across_threads_is_the_same_to_the_bit(native_target: str) -> None:
    """Steps large enough to be shared among torch's threads (OpenMP, where the compiler has it: GCC does)."""
    lib = native.library()
    threads = torch.get_num_threads()
    if "gcc" in Path(native._compiler()[0]).resolve().name:  # GCC has OpenMP: the library is on torch's threads
        try:
            for n in (1, 3):
                torch.set_num_threads(n)
                assert lib.nmt_threads() == n
        finally:
            torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(2)
    heads, d, r = 4, 32, 256  # 16 times the work under which a step stays on one thread
    qkv = torch.randn(r, heads * 3 * d, generator=g)
    cache_k, cache_v = torch.randn(300, heads, 63, d, generator=g), torch.randn(300, heads, 63, d, generator=g)
    rows = torch.randint(0, 300, (r,), generator=g)
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            out = torch.empty(r, heads * d)
            store, top, ancestors = native.store_of(cache_k, cache_v, rows)
            native.self_attention_step(qkv, store, top, ancestors, out, heads, d, d)
            results.append((store.rows(top, r), out))
    finally:
        torch.set_num_threads(threads)
    for stored, out in results[1:]:
        assert torch.equal(stored, results[0][0]) and torch.equal(out, results[0][1])
    keys, values, bias = native.cross_layout(torch.randn(100 * 4, 100, d, generator=g), torch.randn(100 * 4, 100, d, generator=g),
                                             torch.zeros(100 * 4, 1, 100))
    q = torch.randn(100 * 3, heads * d, generator=g)
    crossed = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            crossed.append(torch.empty(100 * 3, heads * d))
            native.cross_attention_step(q, keys, values, bias, crossed[-1], heads, 3)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(c, crossed[0]) for c in crossed[1:])


def test_built_once_then_loaded_from_the_cache(fresh: Path, needs_compiler: None, monkeypatch: pytest.MonkeyPatch) -> None:
    assert native.library() is not None
    built = list((fresh / "kernels").glob("decode_step-*.so"))
    assert len(built) == 1 and not list((fresh / "kernels").glob(".build-*"))  # no temporary file left
    assert built[0].stat().st_mode & 0o555 == 0o555  # readable and loadable by everyone, not the temporary file's 0600
    stamp = built[0].stat().st_mtime_ns
    monkeypatch.setattr(native, "_loaded", [])
    monkeypatch.setattr(native.subprocess, "run", lambda *a, **k: pytest.fail("compiled again"))
    assert native.library() is not None
    assert built[0].stat().st_mtime_ns == stamp


def test_a_compiler_command_with_arguments(fresh: Path, needs_compiler: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """``CC`` as ccache users set it: a program and its arguments."""
    monkeypatch.setenv("CC", f"{native._compiler()[0]} -DNMT_CC_ARGUMENTS=1")
    assert native._compiler()[1:] == ["-DNMT_CC_ARGUMENTS=1"]
    assert native.library() is not None


@pytest.mark.parametrize("right, wrong", [("ws[j] = dot(q, STORE_ROW(from[j]) + head, dk) * scale;", "ws[j] = dot(q, STORE_ROW(from[j]) + head, dk) * scale * 1.01f;"),
                                          ("w[i * blocks + b] = acc[i] * scale + B[b]", "w[i * blocks + b] = acc[i] * scale * 1.01f + B[b]"),
                                          ("vf v = acc[r][c] + *(const vf *)(bias + VW * c);", "vf v = acc[r][c];"),
                                          ("if (relu) v = (vf)((vi)v & ~(v < splat(0.0f)));", ""),
                                          ("const int64_t *from = ancestors + b * t;", "const int64_t *from = ancestors;")])
def test_a_library_that_computes_wrong_is_refused(fresh: Path, needs_compiler: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  right: str, wrong: str) -> None:
    source = native.SOURCE.read_text()
    assert right in source
    wrong_source = tmp_path / "wrong.c"
    wrong_source.write_text(source.replace(right, wrong))
    monkeypatch.setattr(native, "SOURCE", wrong_source)
    with pytest.warns(RuntimeWarning, match="computed other values than torch"):
        assert native.library() is None
    assert list((fresh / "kernels").glob("decode_step-*.so"))  # built, loaded, checked, not used


@pytest.mark.parametrize("wide", [True, False])
def test_by_default_only_cpus_whose_vectors_were_measured_use_the_library(fresh: Path, needs_compiler: None, monkeypatch: pytest.MonkeyPatch,
                                                                          wide: bool) -> None:
    """Without NMT_NATIVE, the library is used where it was measured faster than torch's path (x86-64 with
    SSE4.2 or newer) and silently not elsewhere; NMT_NATIVE=1 forces it."""
    monkeypatch.delenv("NMT_NATIVE")
    monkeypatch.setattr(native, "fast_vectors", lambda: wide)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning either way
        assert (native.library() is not None) == wide
    monkeypatch.setattr(native, "_loaded", [])
    monkeypatch.setenv("NMT_NATIVE", "1")
    assert native.library() is not None


@pytest.mark.parametrize("flags, fast", [("fpu sse4_2 avx avx2 fma avx512f avx512bw", True), ("fpu sse4_2 avx avx2 fma bmi2", True),
                                         ("fpu sse2 ssse3 sse4_1 sse4_2 popcnt", True), ("fpu sse2 ssse3", False), ("fp asimd", False)])
def test_fast_vectors_are_those_of_x86_64_with_sse4_2_or_newer(monkeypatch: pytest.MonkeyPatch, flags: str, fast: bool) -> None:
    monkeypatch.setattr(native, "_cpu_signature", lambda: f"x86_64model name\t: Some CPUflags\t\t: {flags}")
    assert native.fast_vectors() is fast


@pytest.mark.parametrize("setting", ["CC=/nonexistent/cc", "CC=false", "NMT_NATIVE=0"])
def test_without_the_library_decoding_takes_torchs_path(fresh: Path, monkeypatch: pytest.MonkeyPatch, setting: str) -> None:
    """No compiler, a compiler that fails, or the library turned off: torch's calls, and the same scores."""
    name, value = setting.split("=")
    monkeypatch.setenv(name, value)
    if setting == "CC=false":  # a compiler that fails: said once, in one line
        with pytest.warns(RuntimeWarning, match="are not used, CalledProcessError"):
            assert native.library() is None
    else:
        assert native.library() is None
    with pytest.raises(RuntimeError, match="not available"):
        native.self_attention_step(torch.zeros(1, 6), native.Store(4), 0, torch.zeros(1, 0, dtype=torch.long), torch.zeros(1, 2), 1, 2, 2)
    model = tiny_model()
    src = torch.tensor([[5, 6, 7, 3]])
    tgt = torch.tensor([[2, 11, 12, 13]])
    with torch.no_grad():
        state = init_state(model, model.encode(src))
        assert not state.fused_attention
        steps = torch.stack([decode_step(model, tgt[:, i], state) for i in range(tgt.size(1))], 1)
    torch.testing.assert_close(steps, model(src, tgt).log_softmax(-1), atol=1e-5, rtol=1e-5)


def test_inputs_it_cannot_take_are_refused(needs_compiler: None) -> None:
    qkv, ancestors = torch.zeros(2, 6), torch.tensor([[0, 2], [1, 3]])
    store, _, _ = native.store_of(torch.zeros(2, 1, 2, 2), torch.zeros(2, 1, 2, 2), None, shift=3)  # 4 rows written
    store.chunks[0][4:] = 7.0  # the rows not yet written, known
    with pytest.raises(ValueError, match="float32"):
        native.self_attention_step(qkv.double(), store, 4, ancestors, torch.zeros(2, 2), 1, 2, 2)
    with pytest.raises(ValueError, match="float32"):
        native.self_attention_step(qkv, native.Store(4, torch.float64), 4, ancestors, torch.zeros(2, 2), 1, 2, 2)
    with pytest.raises(ValueError, match="shapes or strides"):
        native.self_attention_step(qkv, store, 4, ancestors, torch.zeros(2, 3), 3, 1, 1)  # heads and widths that do not fit qkv
    with pytest.raises(ValueError, match="int64"):
        native.self_attention_step(qkv, store, 4, ancestors.int(), torch.zeros(2, 2), 1, 2, 2)
    with pytest.raises(ValueError, match="shapes or strides"):
        native.self_attention_step(qkv, store, 4, ancestors[:1], torch.zeros(2, 2), 1, 2, 2)  # ancestors for one hypothesis of two
    out, kept = torch.full((2, 2), 7.0), store.rows(0, 8)
    for outside in (4, -1):  # a row not yet written, a negative one
        with pytest.raises(IndexError, match="outside the store's 4 written rows"):
            native.self_attention_step(qkv, store, 4, torch.tensor([[0, 2], [1, outside]]), out, 1, 2, 2)
    for top in (-1, 9, 2**63 - 1):  # rows written before the store's start, or beyond its end
        with pytest.raises(IndexError, match=f"{top} rows written, in a store of 8"):
            native.self_attention_step(qkv, store, top, ancestors, out, 1, 2, 2)
    with pytest.raises(ValueError, match="out shares memory with qkv"):
        native.self_attention_step(qkv, store, 4, ancestors, qkv[:, :2], 1, 2, 2)
    assert (out == 7).all() and torch.equal(store.rows(0, 8), kept)  # nothing written
    keys, values, bias = native.cross_layout(torch.zeros(4, 5, 2), torch.zeros(4, 5, 2), torch.zeros(4, 1, 5))
    with pytest.raises(ValueError, match="3 queries for 2 sentences of beam 2"):
        native.cross_attention_step(torch.zeros(3, 4), keys, values, bias, torch.zeros(3, 4), 2, 2)
    with pytest.raises(ValueError, match="out shares memory with an input"):
        native.cross_attention_step(torch.zeros(4, 4), keys, values, bias, keys.view(-1)[:16].view(4, 4), 2, 2)
    with pytest.raises(ValueError, match="cross_layout"):
        native.cross_attention_step(torch.zeros(4, 4), keys[:, :, :15], values, bias, torch.zeros(4, 4), 2, 2)
