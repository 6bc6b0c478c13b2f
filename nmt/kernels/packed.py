"""The projections of a decoding step through oneDNN, their weights packed once for the CPU.

A decoding step multiplies a few hundred rows by every weight matrix of the decoder and by the whole
vocabulary's output matrix. torch runs a float32 ``F.linear`` on a CPU through its BLAS library (Intel MKL
in the PyPI wheels), which reads the weight in its stored layout at every call. oneDNN's matrix product
instead takes the weight once rearranged into the blocks its kernels read (``_reorder_linear_weight``, what
``torch.compile`` uses on CPUs), picks its kernels by the CPU's instruction sets rather than its vendor, and
applies a ReLU in the same pass. One thread of a 2-core AMD EPYC (Zen 4), MKL's time against oneDNN's
(docs/performance.md):

- 128 rows × a 4,000 × 128 output matrix: 2.15 against 1.47 ms; 16 rows × 32,000 × 512: 20.1 against 6.9 ms;
- a base model's layers (d 512, FFN 2048), 16 / 64 / 256 rows: 1.15-1.97× / 1.18-1.42× / 1.17-1.28× faster;
- but the quick-start model's layers (d 128, FFN 512, weights of 16-64 k entries) gain nothing or lose
  (32 rows × 128 × 384: 53 against 47-61 µs), and decoding that model was no faster with them packed.

So weights of at least ``MIN_PACKED`` entries are packed (a base model's every projection, the output
projection of a vocabulary of 1,024 or more at d 128) and smaller ones go through ``F.linear``. On a base-sized model (random weights) the
search ran 1.15-1.35× faster with all its projections packed than with none.

oneDNN prepares (JIT-compiles) a kernel for each new row count, some 3 ms, and keeps each in its cache; a
search meets hundreds of row counts as its sentences finish, so rows are padded to a bucket (a power of two
up to 16, a multiple of 32 up to 512, then of 128) and a long run meets a few dozen.

Each packed weight is checked against ``F.linear`` once when it is made. Anything this path cannot take (a
GPU, another dtype, a torch build without these oneDNN operators, an answer that differs) goes through
``F.linear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _onednn_available() -> bool:
    ops = torch.ops.mkldnn
    return torch.backends.mkldnn.is_available() and hasattr(ops, "_reorder_linear_weight") and hasattr(ops, "_linear_pointwise")


MIN_PACKED = 1 << 17  # weight entries: 512 × 256 is packed, 512 × 128 is not


def row_bucket(rows: int) -> int:
    """The row count a product of ``rows`` rows is padded to: a power of two up to 16, a multiple of 32 up to
    512, then of 128 (the first steps of a batch of short sentences have thousands of rows)."""
    if rows <= 16:
        return 1 << max(0, rows - 1).bit_length()
    step = 32 if rows <= 512 else 128
    return -(-rows // step) * step


class PackedLinear:
    """``x ↦ F.linear(x, weight, bias)`` (then a ReLU if ``relu``) for (R, in) rows, through oneDNN with the
    weight packed where it can be and is large enough to gain. A function of the weight as it was when
    made: make a new one after the parameter changes."""

    def __init__(self, weight: Tensor, bias: Tensor | None = None, relu: bool = False) -> None:
        self.weight, self.bias, self.relu = weight.detach(), None if bias is None else bias.detach(), relu
        self.packed: Tensor | None = None
        if weight.device.type == "cpu" and weight.dtype == torch.float32 and weight.numel() >= MIN_PACKED and _onednn_available():
            self.packed = self._pack()

    def __deepcopy__(self, memo: dict) -> PackedLinear:
        return self  # immutable, and a packed weight cannot be copied: copies of a decoding state share it

    def __call__(self, x: Tensor) -> Tensor:
        if self.packed is None:
            return self._plain(x)
        rows = x.size(0)
        padded = row_bucket(rows)
        if padded != rows:
            x = torch.cat([x, x.new_zeros(padded - rows, x.size(1))])
        y = self._onednn(x, self.packed)
        return y[:rows] if padded != rows else y

    def _plain(self, x: Tensor) -> Tensor:
        y = F.linear(x, self.weight, self.bias)
        return y.relu_() if self.relu else y

    def _onednn(self, x: Tensor, packed: Tensor) -> Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, packed, self.bias, "relu" if self.relu else "none", [], "")

    def _pack(self) -> Tensor | None:
        with torch.no_grad():
            try:
                packed = torch.ops.mkldnn._reorder_linear_weight(self.weight, None)
                probe = torch.randn(3, self.weight.size(1), generator=torch.Generator().manual_seed(0))
                got = self._onednn(probe, packed)
            except RuntimeError:
                return None
            return packed if torch.allclose(got, self._plain(probe), rtol=1e-4, atol=1e-5) else None
