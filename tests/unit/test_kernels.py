"""``nmt.kernels``: dropout with a bool mask from 16-bit draws, linear layers whose bf16 products run on row
counts padded to a bucket, attention in float32 under bf16 on CPUs, the output projection with the loss,
and ``install``, which swaps them into a model without changing what it computes."""

import copy
import gc
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from nmt import kernels
from nmt.kernels import dropout as D
from nmt.kernels import output_loss
from nmt.kernels import native
from nmt.kernels.linear import ROW_BUCKET, linear
from nmt.kernels.packed import PackedLinear, row_bucket
from nmt.kernels.output_loss import output_cross_entropy
from nmt.model.attention import MultiHeadAttention, padding_mask
from nmt.train.loss import label_smoothed_nll
from tests.helpers import OLDER_TARGETS, tiny_model, use_native_target

# ------------------------------------------------------------------------------------------------ dropout


def test_keep_mask_has_the_asked_probability_and_independent_halves() -> None:
    """Four million draws: the keep rate is 1 - p' within 10 standard deviations (p' is p to 1/65536), and
    the two 16-bit halves of one 32-bit draw, neighbours in the mask, are uncorrelated."""
    torch.manual_seed(0)
    for p in (0.1, 0.3, 0.5):
        keep, scale = D.keep_mask(torch.Size([2048, 2048]), p)
        kept = 1 - round(p * 65536) / 65536
        assert scale == pytest.approx(1 / kept, rel=1e-12)
        assert abs(1 / scale - kept) < 1e-12 and abs(kept - (1 - p)) <= 1 / 65536
        sd = (p * (1 - p) / keep.numel()) ** 0.5
        assert abs(keep.float().mean().item() - kept) < 10 * sd
        pairs = keep.view(-1, 2).float()
        both = (pairs[:, 0] * pairs[:, 1]).mean().item()
        assert abs(both - kept**2) < 10 * (kept**2 * (1 - kept**2) / pairs.size(0)) ** 0.5


def test_keep_mask_of_an_odd_size_and_seeding() -> None:
    torch.manual_seed(3)
    a, _ = D.keep_mask(torch.Size([7, 3]), 0.1)
    torch.manual_seed(3)
    b, _ = D.keep_mask(torch.Size([7, 3]), 0.1)
    assert a.shape == (7, 3) and a.dtype == torch.bool and torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_forward_and_backward_use_one_mask(dtype: torch.dtype) -> None:
    torch.manual_seed(1)
    x = torch.randn(300, 64, dtype=dtype, requires_grad=True)
    y = D.dropout(x, 0.25, training=True)
    keep = y != 0  # x has no zeros
    scale = 65536 / (65536 - round(0.25 * 65536))
    torch.testing.assert_close(y, torch.where(keep, x * scale, 0).detach(), rtol=0, atol=0)
    g = torch.randn_like(x)
    y.backward(g)
    torch.testing.assert_close(x.grad, torch.where(keep, g * scale, 0), rtol=0, atol=0)
    assert 0.2 < 1 - keep.float().mean().item() < 0.3


def test_dropout_is_the_identity_in_evaluation_and_at_zero() -> None:
    x = torch.randn(5, 4)
    assert D.dropout(x, 0.3, training=False) is x and D.dropout(x, 0.0, training=True) is x
    module = D.MaskDropout(0.3).eval()
    assert module(x) is x and module.state_dict() == {}


def test_dropout_at_the_ends_of_its_range() -> None:
    """p = 1 drops everything; p too close to 0 or 1 for 16-bit levels is left to torch's dropout."""
    torch.manual_seed(0)
    x = torch.randn(64, 64)
    assert torch.equal(D.dropout(x, 1.0, training=True), torch.zeros_like(x))
    near_one = D.dropout(x, 1 - 1e-6, training=True)
    assert torch.isfinite(near_one).all()
    assert torch.equal(D.dropout(x, 1e-7, training=True) != 0, x != 0)  # one drop in 10^7: none of 4096 here
    with pytest.raises(ValueError):
        D.MaskDropout(1.5)


# ------------------------------------------------------------------------------------------------- linear


def close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """Equal to bf16 rounding: both round products and gradients to bf16, in kernels that may add in
    another order (padding rows would show in the bias gradient, a wrong mask or transpose everywhere)."""
    ours, theirs = ours.detach().float(), theirs.detach().float()
    torch.testing.assert_close(ours, theirs, rtol=2e-2, atol=2e-2 * float(theirs.abs().max()))


@pytest.mark.parametrize("rows", [1, 255, 256, 700])
@pytest.mark.parametrize("bias,relu", [(True, False), (False, False), (True, True)])
def test_bucketed_linear_equals_autocast_linear(rows: int, bias: bool, relu: bool) -> None:
    """Under CPU bf16 autocast: the product and gradients of torch's own autocast ``F.linear`` (+ ReLU)."""
    torch.manual_seed(rows)
    leaves = [torch.randn(rows, 3, 96), torch.randn(40, 96)] + ([torch.randn(40)] if bias else [])
    g = torch.randn(rows, 3, 40).bfloat16()
    results = []
    for ours in (True, False):
        x, w, *b = [t.clone().requires_grad_() for t in leaves]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if ours:
                y = linear(x, w, b[0] if b else None, relu=relu)
            else:
                y = F.linear(x, w, b[0] if b else None)
                y = y.relu() if relu else y
        y.backward(g)
        results.append((y, x.grad, w.grad, b[0].grad if b else None))
    (y, gx, gw, gb), (ry, rgx, rgw, rgb) = results
    assert y.shape == ry.shape == (rows, 3, 40) and y.dtype == ry.dtype == torch.bfloat16
    assert gx.dtype == gw.dtype == torch.float32
    for a, b in ((y, ry), (gx, rgx), (gw, rgw)) + (((gb, rgb),) if bias else ()):
        close(a, b)


def test_bucketed_products_see_only_bucketed_row_counts() -> None:
    """The point of the padding: whatever the batch, every product oneDNN runs has a multiple of
    ROW_BUCKET rows (forward, and both products of the backward)."""
    w = torch.randn(32, 48, requires_grad=True)
    b = torch.randn(32, requires_grad=True)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for rows in (7, 300, 513):
            x = torch.randn(rows, 48, requires_grad=True)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y = linear(x, w, b, relu=True)
            y.float().sum().backward()
    shapes = [e.input_shapes for e in prof.events() if e.name in ("aten::mm", "aten::addmm")]
    assert len(shapes) == 9
    for s in shapes:
        a, c = (s[1], s[2]) if len(s[0]) == 1 else (s[0], s[1])  # addmm(bias, a, c) or mm(a, c)
        assert a[0] % ROW_BUCKET == 0 or a[1] % ROW_BUCKET == 0, s  # rows, or the reduction of the weight gradient
        assert c[0] % ROW_BUCKET == 0 or a[0] % ROW_BUCKET == 0, s


def test_linear_outside_cpu_autocast_is_f_linear() -> None:
    x, w, b = torch.randn(5, 8), torch.randn(3, 8), torch.randn(3)
    assert torch.equal(linear(x, w, b), F.linear(x, w, b))
    assert torch.equal(linear(x, w, b, relu=True), F.linear(x, w, b).relu())


# ---------------------------------------------------------------------------------------------- attention


@pytest.mark.parametrize("causal", [False, True])
def test_bf16_attention_on_a_cpu_runs_the_kernel_in_float32(causal: bool) -> None:
    """On a CPU the fused kernel is about 10× slower in bf16 than in float32, so bf16 heads go through it in
    float32, also under autocast (which would otherwise cast them back to bf16): the result is exactly the
    float32 kernel's on the same bf16 values, rounded to bf16, and its gradients reach the bf16 inputs."""
    torch.manual_seed(0)
    mha = kernels.install(MultiHeadAttention(16, 4)).eval()
    q, k, v = (torch.randn(3, 4, 7, 4, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    mask = padding_mask(torch.tensor([[5] * 7, [5] * 4 + [0] * 3, [5] * 2 + [0] * 5]), 0)
    mask = None if causal else mask
    heads = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask, is_causal=causal).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mha.attention(q, k, v, mask, causal)
        expected = heads
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    out.float().sum().backward()
    assert q.grad is not None and q.grad.dtype == torch.bfloat16 and q.grad.abs().sum() > 0


def test_bf16_attention_dropout_on_a_cpu_still_drops() -> None:
    """bf16 heads on a CPU go through the fused kernel in float32 with its attention dropout: in training
    two calls drop differently, and evaluation drops nothing."""
    torch.manual_seed(0)
    mha = kernels.install(MultiHeadAttention(16, 4, dropout=0.5))
    q, k, v = (torch.randn(2, 4, 6, 4, dtype=torch.bfloat16) for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        dropped = [mha.train().attention(q, k, v, None, False) for _ in range(2)]
        kept = mha.eval().attention(q, k, v, None, False)
    assert not torch.equal(dropped[0], dropped[1]) and not torch.equal(dropped[0], kept)


# -------------------------------------------------------------------------------- output projection and loss


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("rows", [150, 64, 5])  # three blocks of 64, the last one short; one full block; one short block
@pytest.mark.parametrize("pad_blocks", [True, False])  # the CPU's plan (the last block padded to 64 rows), a GPU's (short)
def test_output_cross_entropy_equals_projection_then_loss(precision: str, rows: int, pad_blocks: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The output projection and the loss together (logits never stored, gradients computed in the forward
    pass) against autograd through F.linear and label_smoothed_nll in float64: the sums, and the gradients
    of the hidden states and of the weight, with padding, an incoming gradient other than 1, and the weight
    used a second time (tied embeddings) so that its gradients add up."""
    monkeypatch.setattr(output_loss, "block_plan", lambda vocab, device_type: (64, pad_blocks))
    torch.manual_seed(0)
    V, d, eps, pad = 11, 16, 0.1, 0
    hidden = torch.randn(rows, d)
    weight = torch.randn(V, d)
    target = torch.randint(0, V, (rows,))
    target[::4] = pad
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss, nll, n = output_cross_entropy(h, w, target, eps, pad)
    (0.37 * loss + w.sum()).backward()
    h64, w64 = hidden.double().requires_grad_(), weight.double().requires_grad_()
    if precision == "bf16":  # the products' inputs as bf16 sees them
        h64, w64 = hidden.bfloat16().double().requires_grad_(), weight.bfloat16().double().requires_grad_()
    ref_loss, ref_nll, ref_n = label_smoothed_nll(torch.nn.functional.linear(h64, w64).log_softmax(-1), target, eps, pad)
    (0.37 * ref_loss + w64.sum()).backward()
    tol = dict(rtol=1e-5, atol=1e-5) if precision == "fp32" else dict(rtol=1.5e-2, atol=1.5e-2)
    assert n.item() == ref_n.item() == (target != pad).sum().item()
    torch.testing.assert_close((loss.double(), nll.double()), (ref_loss, ref_nll), **tol)
    assert h.grad.dtype == w.grad.dtype == torch.float32
    torch.testing.assert_close(h.grad.double(), h64.grad, **tol)
    torch.testing.assert_close(w.grad.double(), w64.grad, **tol)
    assert h.grad[target == pad].abs().max() == 0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        assert torch.equal(torch.stack(output_cross_entropy(hidden, weight, target, eps, pad)[:2]), torch.stack([loss, nll]).detach())


def test_output_loss_frees_its_gradients_after_backward() -> None:
    """The gradients computed in the forward pass are released by the backward pass, not held by the graph
    while the caller keeps the loss (with --update-freq > 1, through the next micro-batch)."""
    torch.manual_seed(0)
    h, w = torch.randn(50, 16, requires_grad=True), torch.randn(11, 16, requires_grad=True)
    loss, _, _ = output_cross_entropy(h, w, torch.randint(1, 11, (50,)), 0.1, 0)
    held = [weakref.ref(g) for g in loss.grad_fn.grads]  # the autograd context of _ProjectedCrossEntropy
    assert len(held) == 2 and all(r() is not None for r in held)
    loss.backward()
    gc.collect()
    assert all(r() is None for r in held), "the forward pass's gradients outlive the backward pass"


# ----------------------------------------------------------------------------------------------- install


@pytest.mark.parametrize("variant", [{}, {"share_embeddings": False}, {"d_k": 8, "d_v": 24}])
def test_install_keeps_the_function_and_the_state_dict(variant: dict) -> None:
    """Swapped in, the kernels compute what the plain model computes (float32: the same arithmetic; bf16
    autocast: to bf16 rounding), with the same parameters and state dict."""
    src, tgt = torch.tensor([[5, 6, 7, 3], [8, 3, 0, 0]]), torch.tensor([[2, 9, 10], [2, 11, 0]])
    plain = tiny_model(**variant)
    fast = kernels.install(tiny_model(**variant))
    attn = fast.encoder[0].self_attn
    assert type(attn) is not MultiHeadAttention and isinstance(attn, MultiHeadAttention)
    assert list(plain.state_dict()) == list(fast.state_dict())
    torch.testing.assert_close(fast(src, tgt), plain(src, tgt), rtol=1e-6, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        close(fast(src, tgt), plain(src, tgt))


def test_install_swaps_every_dropout_and_it_still_drops() -> None:
    model = kernels.install(tiny_model(dropout=0.3, relu_dropout=0.1))
    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and all(type(m) is D.MaskDropout for m in dropouts)
    src, tgt = torch.tensor([[5, 6, 7, 3]]), torch.tensor([[2, 9, 10]])
    model.train()
    assert not torch.equal(model(src, tgt), model(src, tgt))
    model.eval()
    assert torch.equal(model(src, tgt), model(src, tgt))


# ------------------------------------------------------------------------------------- packed projections


@pytest.fixture(params=["C", *(f"C {target}" for target in OLDER_TARGETS), "oneDNN"])
def product_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test using it runs with the C product where the machine's compiler builds it
    (``nmt.kernels.native``), also built for each older x86-64 level the CPU runs (their narrower vectors),
    then with oneDNN's, the path of machines without a compiler. Returns "C" or "oneDNN"."""
    if request.param == "oneDNN":
        monkeypatch.setattr(native, "_loaded", [None])
        if not torch.backends.mkldnn.is_available():
            pytest.skip("torch is built without oneDNN here")
        return "oneDNN"
    use_native_target(request.param.partition(" ")[2] or "native", monkeypatch)
    return "C"


def _path_of(project: PackedLinear) -> str:
    return "C" if project.panels is not None else "oneDNN" if project.packed is not None else "torch"


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("rows", [1, 3, 16, 17, 100, 513, 700])
def test_packed_linear_equals_f_linear(rows: int, relu: bool, product_path: str) -> None:
    torch.manual_seed(rows)
    weight, bias = torch.randn(1000, 160), torch.randn(1000)  # 1,000 columns: the last panel partly filled
    x = torch.randn(rows, 160)
    for b in (None, bias):
        project = PackedLinear(weight, b, relu=relu)
        assert _path_of(project) == product_path and project.pads_rows == (product_path == "oneDNN")
        got = project(x)
        want = F.linear(x, weight, b)
        assert got.shape == (rows, 1000) and got.is_contiguous()
        torch.testing.assert_close(got, want.relu() if relu else want, rtol=1e-5, atol=1e-5)
    assert copy.deepcopy(project) is project  # shared by copies of a decoding state
    strided = torch.randn(rows, 320)[:, ::2]  # rows of a transposed or sliced tensor
    torch.testing.assert_close(project(strided), project(strided.contiguous()), rtol=0, atol=0)
    one = torch.randn(160, 1).t()  # one row whose row stride (1) is below its width
    torch.testing.assert_close(project(one), project(one.contiguous()), rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(1000, 160), (128, 128), (37, 512)])
def test_packed_rows_do_not_depend_on_the_other_rows_or_threads(shape: tuple[int, int], product_path: str) -> None:
    """A sentence's translation must not depend on its batch: each row of a product comes out bitwise the same
    alone, among few rows or many, and however many threads share the product."""
    torch.manual_seed(shape[0])
    weight, bias, x = torch.randn(*shape), torch.randn(shape[0]), torch.randn(300, shape[1])
    project = PackedLinear(weight, bias, relu=True)
    assert _path_of(project) == product_path
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = torch.cat([project(x[i : i + 1]) for i in range(x.size(0))])
        assert torch.equal(project(x[7:12]), alone[7:12]) and torch.equal(project(x[:13]), alone[:13])
        assert torch.equal(project(x), alone)
        torch.set_num_threads(2)
        assert torch.equal(project(x), alone) and torch.equal(project(x[100:]), alone[100:])
    finally:
        torch.set_num_threads(threads)


def test_packed_linear_falls_back_where_it_cannot_pack() -> None:
    torch.manual_seed(0)
    for dtype, size in ((torch.bfloat16, (1000, 160)), (torch.float16, (300, 32))):
        x = torch.randn(4, size[1], dtype=dtype)
        weight = torch.randn(*size, dtype=dtype)
        project = PackedLinear(weight, relu=True)
        assert project.packed is None and project.panels is None and torch.equal(project(x), F.linear(x, weight).relu())
    small = PackedLinear(torch.randn(64, 32))  # float32 of any size is packed
    assert _path_of(small) == ("C" if native.library() is not None else "oneDNN" if torch.backends.mkldnn.is_available() else "torch")


def test_row_buckets() -> None:
    assert [row_bucket(r) for r in (1, 2, 3, 5, 16, 17, 33, 512, 513, 700)] == [1, 2, 4, 8, 16, 32, 64, 512, 640, 768]
