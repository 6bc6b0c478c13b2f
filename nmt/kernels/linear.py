"""Linear layers that keep bf16 training on CPUs fast when batch shapes change.

Under CPU autocast, torch runs bf16 matrix products through oneDNN, which builds a kernel for every new
matrix shape (its cache holds them by shape). Token-based batches change the number of rows (sentences ×
length) at every update, so every product of every update paid that preparation: on a 2-core Sapphire
Rapids, a (4095 × 128) · (128 × 4000) product took 7 ms with a new row count against 4.3 ms with a cached
one, and (4095 × 4000) · (4000 × 128) 15 ms against 2.4. Here the rows are padded with zeros to a multiple
of ``ROW_BUCKET``, so a run sees a handful of shapes that stay cached; the padded rows' outputs are dropped
and their gradients are zero, so the result is the unpadded product's.

Everywhere else (float32, GPUs) this is ``F.linear``: MKL's float32 kernels and cuBLAS pay no such cost.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROW_BUCKET = 256  # rows are padded to a multiple of this: at most 16 shapes per product up to 4096 rows


def _padded(x: Tensor, rows: int, dtype: torch.dtype) -> Tensor:
    """``x`` (m, k) cast to ``dtype`` in the first m rows of a (rows, k) tensor whose other rows are 0."""
    out = x.new_empty(rows, x.size(1), dtype=dtype)
    out[: x.size(0)].copy_(x)
    out[x.size(0) :].zero_()
    return out


class _BucketedLinear(torch.autograd.Function):
    """x wᵀ + b for x (m, k) in ``dtype``, then ReLU if ``relu``, every product on rows padded to a multiple
    of ``ROW_BUCKET``. The ReLU is inside, in place on the padded result: the returned rows are a view of it
    and must not be changed in place."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, dtype: torch.dtype, relu: bool) -> Tensor:  # noqa: ANN001
        m = x.size(0)
        rows = -(-m // ROW_BUCKET) * ROW_BUCKET
        xp, w = _padded(x, rows, dtype), weight.to(dtype)
        y = torch.mm(xp, w.t()) if bias is None else torch.addmm(bias.to(dtype), xp, w.t())
        if relu:
            y.relu_()
        ctx.save_for_backward(xp, w, y if relu else None)
        ctx.m, ctx.has_bias, ctx.x_dtype, ctx.w_dtype = m, bias is not None, x.dtype, weight.dtype
        return y[:m]

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None, None, None]:  # noqa: ANN001
        xp, w, y = ctx.saved_tensors
        gp = _padded(grad, xp.size(0), w.dtype)  # zero rows: the padding adds nothing to the weight's gradient
        if y is not None:  # relu's own backward (masked_fill_ is 8x slower in bf16)
            gp = torch.ops.aten.threshold_backward(gp, y, 0)
        grad_x = torch.mm(gp, w)[: ctx.m].to(ctx.x_dtype) if ctx.needs_input_grad[0] else None
        grad_w = torch.mm(gp.t(), xp).to(ctx.w_dtype) if ctx.needs_input_grad[1] else None
        # Summed in the products' dtype (accumulated in float32 inside, rounded once), as autocast's own addmm
        # backward does: a float32 ``dtype`` would first copy the whole gradient to float32 (3 % of a tiny update).
        grad_b = gp[: ctx.m].sum(0).to(ctx.w_dtype) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b, None, None


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, relu: bool = False) -> Tensor:
    """``F.linear(x, weight, bias)``, then ReLU if ``relu``; under CPU autocast with row-bucketed products
    (see the module)."""
    if x.device.type != "cpu" or not torch.is_autocast_enabled("cpu"):
        y = F.linear(x, weight, bias)
        # In place: the hidden layer of an FFN is the largest activation of a layer, and autograd keeps what
        # relu's backward needs (its output) either way.
        return y.relu_() if relu else y
    k = x.size(-1)
    y = _BucketedLinear.apply(x.reshape(-1, k), weight, bias, torch.get_autocast_dtype("cpu"), relu)
    return y.view(*x.shape[:-1], weight.size(0))


class BucketedLinear(nn.Linear):
    """``nn.Linear`` computing through ``linear`` (same parameters and state dict)."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)
