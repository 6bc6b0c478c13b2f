"""The output projection and the label-smoothed loss together, in blocks of rows: the (tokens × vocabulary)
logits are never stored whole, and the gradients are computed in the forward pass.

Training's loss, on every device. It computes exactly ``label_smoothed_nll`` (``nmt.train.loss``, the
paper's formula) of the float32 log-softmax of ``hidden`` · ``weight``ᵀ. Measured: on a 2-core Sapphire
Rapids the projection and loss of 4,090 tokens over 4,000 pieces took 57 ms instead of 112 in float32 and
32 instead of 74 in bf16 (the tiny model trained 12 % and 19 % more tokens/s); on an H200, 32,768 tokens
over 37,000 pieces took 24 ms instead of 31 and 2 GiB of memory instead of 11 (docs/performance.md).
"""

from __future__ import annotations

import torch
from torch import Tensor

from nmt.train.loss import label_smoothed_nll

# Elements of a block of logits on a CPU: 8 MiB in float32, within a core's share of the cache.
CPU_BLOCK_ELEMENTS = 2**21
# On a GPU: 1 GiB in float32, enough rows for each product to fill the GPU, and a fraction of the memory of
# the whole (tokens × vocabulary) logits in float32 (4.8 GiB for 32k tokens over 37k pieces).
GPU_BLOCK_ELEMENTS = 2**28


def block_plan(vocab: int, device_type: str) -> tuple[int, bool]:
    """How ``output_cross_entropy`` cuts (tokens × ``vocab``) logits: the rows of a block, a multiple of 64,
    and whether the last block is padded to full size. On a CPU, blocks of about ``CPU_BLOCK_ELEMENTS``, all
    of one shape (oneDNN prepares its bf16 kernels once per shape); elsewhere about ``GPU_BLOCK_ELEMENTS``,
    the last one short."""
    cpu = device_type == "cpu"
    elements = CPU_BLOCK_ELEMENTS if cpu else GPU_BLOCK_ELEMENTS
    return max(64, elements // vocab // 64 * 64), cpu


def _projected_in_blocks(
    hidden: Tensor, weight: Tensor, target: Tensor, epsilon: float, pad_id: int, dtype: torch.dtype, grad: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
    """The sums of ``label_smoothed_nll`` (smoothed loss, NLL, tokens) of the logits ``hidden`` (N, d) · ``weight``ᵀ
    (V, d), products in ``dtype``, softmax in float32, computed block by block of rows; with ``grad``, also
    the smoothed loss's gradients with respect to ``hidden`` (N, d) and ``weight`` (V, d), in float32.

    The gradient of the loss with respect to a kept row of logits is p - q: the softmax minus the smoothed
    target, ε/(V-1) everywhere but 1-ε on the gold token. Only p - (1-ε-ε/(V-1)) on the gold token goes
    through the products; the constant -ε/(V-1) of every logit is added to the products' results as the
    rank-one term it is (-ε/(V-1) times the column sums of the weight, or the row sum of the inputs).
    Padding rows of ``hidden`` are zeroed, so they add nothing to the weight's gradient.
    """
    n, d = hidden.shape
    vocab, device = weight.size(0), hidden.device
    rows, pad_blocks = block_plan(vocab, device.type)
    keep = target != pad_id
    padded = -(-n // rows) * rows if pad_blocks else n
    h = hidden.new_zeros(padded, d, dtype=dtype)
    h[:n] = torch.where(keep[:, None], hidden, 0)
    tgt = target.new_full((padded,), pad_id)
    tgt[:n] = target
    w = weight.to(dtype)
    convert = dtype != torch.float32
    size = min(rows, padded)
    logits = torch.empty(size, vocab, dtype=dtype, device=device) if convert else None  # the product's output, converted into ``buffer``
    buffer = torch.empty(size, vocab, dtype=torch.float32, device=device)
    sums = torch.zeros(2, dtype=torch.float32, device=device)
    eps_i = epsilon / (vocab - 1)
    gold = torch.full((size, 1), -(1.0 - epsilon - eps_i), device=device)
    grad_h = torch.empty(padded, d, dtype=dtype, device=device) if grad else None
    grad_w = torch.zeros(vocab, d, dtype=torch.float32, device=device) if grad else None
    for a in range(0, padded, rows):
        m = min(rows, padded - a)  # fewer in an unpadded last block
        if convert:
            buffer[:m].copy_(torch.mm(h[a : a + m], w.t(), out=logits[:m]))
        else:
            torch.mm(h[a : a + m], w.t(), out=buffer[:m])
        lprobs = torch.log_softmax(buffer[:m], -1, out=buffer[:m])
        loss, nll, _ = label_smoothed_nll(lprobs, tgt[a : a + m], epsilon, pad_id)
        sums[0] += loss
        sums[1] += nll
        if grad:
            p = lprobs.exp_().scatter_add_(1, tgt[a : a + m, None], gold[:m])  # p - (1-ε-ε/(V-1)) on the gold token
            g = logits[:m].copy_(p) if convert else p
            torch.mm(g, w, out=grad_h[a : a + m])
            grad_w += torch.mm(g.t(), h[a : a + m])
    if not grad:
        return sums[0], sums[1], keep.sum(), None, None
    w_sum = w.sum(0, dtype=torch.float32)
    grad_hidden = torch.where(keep[:, None], grad_h[:n].float().sub_(w_sum, alpha=eps_i), 0)
    grad_w.sub_(h.sum(0, dtype=torch.float32), alpha=eps_i)
    return sums[0], sums[1], keep.sum(), grad_hidden, grad_w


class _ProjectedCrossEntropy(torch.autograd.Function):
    """``label_smoothed_nll`` of the float32 log-softmax of ``hidden`` · ``weight``ᵀ, where the (tokens ×
    vocabulary) logits are never stored whole.

    The forward pass computes the gradients too: they are linear in the incoming gradient of the loss, a
    scalar, so the backward pass only scales them. The logits are computed, used and dropped block by
    block of rows (on a CPU, blocks that stay in the cache), once per update: recomputing them in the
    backward pass would cost a fourth product over the three of a linear layer. Liger-Kernel's fused
    linear cross-entropy does the same on GPUs.
    """

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, target: Tensor, epsilon: float, pad_id: int, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:  # type: ignore[override]
        with torch.autocast(hidden.device.type, enabled=False):
            loss, nll, n, grad_h, grad_w = _projected_in_blocks(hidden, weight, target, epsilon, pad_id, dtype, grad=True)
        ctx.grads = grad_h, grad_w
        ctx.dtypes = hidden.dtype, weight.dtype
        ctx.mark_non_differentiable(nll, n)
        return loss, nll, n

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss: Tensor, _nll: Tensor, _n: Tensor) -> tuple[Tensor | None, Tensor | None, None, None, None, None]:  # type: ignore[override]
        (grad_h, grad_w), (h_dtype, w_dtype) = ctx.grads, ctx.dtypes
        # The graph, and this context with it, lives until the caller drops the loss: with --update-freq > 1
        # that is after the next micro-batch's forward and backward. Held here, the (tokens × d) and
        # (vocabulary × d) float32 gradients would live that long too (about 150 MB of weight gradient for big).
        ctx.grads = None
        return (grad_h * grad_loss).to(h_dtype), (grad_w * grad_loss).to(w_dtype), None, None, None, None


def output_cross_entropy(hidden: Tensor, weight: Tensor, target: Tensor, epsilon: float, pad_id: int) -> tuple[Tensor, Tensor, Tensor]:
    """The output projection (``hidden`` (N, d) times ``weight`` (V, d) transposed, under autocast in its dtype)
    and the label-smoothed loss together: the sums of ``label_smoothed_nll`` over the float32 log-softmax
    of the logits (smoothed loss, plain NLL, tokens; only the first is differentiable), but the (N, V)
    logits are never stored whole (see ``_ProjectedCrossEntropy``)."""
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _ProjectedCrossEntropy.apply(hidden, weight, target, epsilon, pad_id, dtype)
    with torch.autocast(device, enabled=False):
        return _projected_in_blocks(hidden, weight, target, epsilon, pad_id, dtype, grad=False)[:3]
