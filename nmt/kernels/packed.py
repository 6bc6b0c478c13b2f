"""The search's projections (encoder, decoding steps) on weights arranged once for the CPU.

A decoding step multiplies a few to a few hundred rows by every weight matrix of the decoder and by the whole
vocabulary's output matrix. torch runs a float32 ``F.linear`` on a CPU through its BLAS library (Intel MKL
in the PyPI wheels), which reads the weight in its stored layout and prepares at every call. Two paths do
better, chosen once per weight:

- **The C product** (``nmt.kernels.native``, where the machine's C compiler built it, on x86-64 CPUs): the weight stored in panels, no preparation per call, any row count. On a 2-core Zen 5, one
  thread: 3-6 µs against oneDNN's 13-20 µs for 1-4 rows of the quick-start model's layers, 0.9-1.2x
  oneDNN's time from 16 to 2,048 rows for those and a base model's layers; built for AVX2, against oneDNN
  held to AVX2, 1.9-2.5x at 1-4 rows and 0.8-1.0x from 64 rows (docs/performance.md).
- **oneDNN** (machines without a compiler, ARM CPUs): the weight rearranged once into the blocks its kernels read
  (``_reorder_linear_weight``, what ``torch.compile`` uses on CPUs), kernels picked by the CPU's instruction
  sets rather than its vendor, a ReLU applied in the same pass. Against MKL, one thread: on a 2-core Zen 5,
  the quick-start model's projections (d 128, FFN 512, vocabulary 4,000) at 640 rows 2.0-2.3x faster
  (4,000 × 128: 7.7 against 3.4 ms), 128 rows 1.5-2.3x; on a 2-core Zen 4, 16 rows × 32,000 × 512: 20.1
  against 6.9 ms, a base model's layers at 16 / 64 / 256 rows 1.15-1.97x / 1.18-1.42x / 1.17-1.28x faster.
  oneDNN prepares (JIT-compiles) a kernel for each new row count, some 3 ms, and keeps each in its cache; a
  search meets hundreds of row counts as its sentences finish, so rows are padded to a bucket (a power of
  two up to 16, a multiple of 32 up to 512, then of 128: ``row_bucket``) and a long run meets a few dozen.

The choice is the weight's, never the row count's: which library computes a product decides the last bits of
its result, and a sentence's translation must not depend on how many rows its batch had at a step (on both
paths a row comes out bitwise the same whatever the other rows). Each arranged weight is checked against
``F.linear`` once when it is made. Anything neither path can take (a GPU, another dtype, a torch build
without these oneDNN operators, an answer that differs) goes through ``F.linear``.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

from nmt.kernels import native

T = TypeVar("T")


def _onednn_available() -> bool:
    ops = torch.ops.mkldnn
    return torch.backends.mkldnn.is_available() and hasattr(ops, "_reorder_linear_weight") and hasattr(ops, "_linear_pointwise")


def row_bucket(rows: int) -> int:
    """The row count a product of ``rows`` rows is padded to: a power of two up to 16, a multiple of 32 up to
    512, then of 128 (the first steps of a batch of short sentences have thousands of rows)."""
    if rows <= 16:
        return 1 << max(0, rows - 1).bit_length()
    step = 32 if rows <= 512 else 128
    return -(-rows // step) * step


class PackedLinear:
    """``x ↦ F.linear(x, weight, bias)`` (then a ReLU if ``relu``) for (R, in) rows, float32 on a CPU through
    the C product (``panels``) where ``nmt.kernels.native`` has its library (a C compiler, an x86-64
    CPU), else through oneDNN on a packed weight
    (``packed``), else ``F.linear``. A function of the weight as it was when made: make a new one after the
    parameter changes."""

    def __init__(self, weight: Tensor, bias: Tensor | None = None, relu: bool = False) -> None:
        self.weight, self.bias, self.relu = weight.detach(), None if bias is None else bias.detach(), relu
        self.panels: native.Panels | None = None
        self.packed: Tensor | None = None
        if weight.device.type == "cpu" and weight.dtype == torch.float32:
            if native.library() is not None:
                self.panels = self._checked(lambda: native.pack_linear(self.weight, self.bias), self._native)
            if self.panels is None and _onednn_available():
                self.packed = self._checked(lambda: torch.ops.mkldnn._reorder_linear_weight(self.weight, None), self._onednn)

    @property
    def pads_rows(self) -> bool:
        """Whether calls pad their rows to a ``row_bucket`` (oneDNN's path): a caller making several products
        on the same rows pads them once instead."""
        return self.packed is not None

    def __deepcopy__(self, memo: dict) -> PackedLinear:
        return self  # immutable, and a packed weight cannot be copied: copies of a decoding state share it

    def __call__(self, x: Tensor) -> Tensor:
        if self.panels is not None:
            return self._native(x, self.panels)
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

    def _native(self, x: Tensor, panels: native.Panels) -> Tensor:
        return native.linear(x if x.stride(-1) == 1 else x.contiguous(), panels, self.relu)

    def _onednn(self, x: Tensor, packed: Tensor) -> Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, packed, self.bias, "relu" if self.relu else "none", [], "")

    def _checked(self, pack: Callable[[], T], call: Callable[[Tensor, T], Tensor]) -> T | None:
        """``pack()``, if calling through it gives what ``F.linear`` gives on a probe; else None."""
        with torch.no_grad():
            try:
                packed = pack()
                probe = torch.randn(3, self.weight.size(1), generator=torch.Generator().manual_seed(0))
                got = call(probe, packed)
            except (RuntimeError, ValueError):
                return None
            return packed if torch.allclose(got, self._plain(probe), rtol=1e-4, atol=1e-5) else None
