"""The CPU-specific building blocks of training: dropout with a bool mask from 16-bit draws, and linear layers
whose bf16 products run on row counts padded to a bucket."""

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from nmt.model import dropout as D
from nmt.model.linear import ROW_BUCKET, linear

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
    module = D.Dropout(0.3).eval()
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
        D.Dropout(1.5)


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
