"""The output projection of a decoding step through oneDNN, its weight packed once for the CPU.

A decoding step multiplies a few hundred rows by the whole vocabulary's output matrix (V × d). torch runs a
float32 ``F.linear`` on a CPU through its BLAS library (Intel MKL in the PyPI wheels), which reads the
weight in its stored layout at every call. oneDNN's matrix product instead takes the weight once rearranged
into the blocks its kernels read (``_reorder_linear_weight``, what ``torch.compile`` uses on CPUs), and
picks its kernels by the CPU's instruction sets rather than its vendor. On a 2-core AMD EPYC (Zen 4) one
thread multiplied 128 rows by a 4,000 × 128 matrix in 1.47 ms instead of 2.15 ms, and 16 rows by a
32,000 × 512 one in 6.9 ms instead of 20.1 ms (docs/performance.md); the smaller products of the decoder's
layers gain little or lose, so only the output projection goes this way.

The packed weight is checked against ``F.linear`` once when it is made, and made again whenever the
parameter has changed in place (validation during training decodes with weights the optimizer updates).
oneDNN prepares (JIT-compiles) a kernel for each new row count, some 3 ms, and a search meets hundreds of
row counts as its sentences finish, and keeps each in its cache: rows are padded to a bucket (a power of two
up to 16, a multiple of 32 up to 512, then of 128), so that a long run meets a few dozen.

Anything this path cannot take (a GPU, another dtype, a torch build without these oneDNN operators, an
answer that differs) goes through ``F.linear``.
"""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F
from torch import Tensor


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


class OutputProjection:
    """``x ↦ F.linear(x, weight)`` for (R, d) rows, through oneDNN with the weight packed where it can be."""

    def __init__(self, weight: Tensor) -> None:
        self.weight = weight
        self.packed: Tensor | None = None
        self.version = -1
        self.usable = weight.device.type == "cpu" and weight.dtype == torch.float32 and _onednn_available()
        self.lock = threading.Lock()  # the search's workers share one projection

    def __deepcopy__(self, memo: dict) -> OutputProjection:
        return self  # a function of the parameter, shared by copies of a decoding state (a packed weight cannot be copied)

    def __call__(self, x: Tensor) -> Tensor:
        if not self.usable:
            return F.linear(x, self.weight)
        packed = self._packed()
        if packed is None:
            return F.linear(x, self.weight)
        rows = x.size(0)
        padded = row_bucket(rows)
        if padded != rows:
            x = torch.cat([x, x.new_zeros(padded - rows, x.size(1))])
        return torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")[:rows]

    def _packed(self) -> Tensor | None:
        """The packed weight, packed again if the parameter changed since; None where oneDNN fails the check."""
        version = self.weight._version
        if self.packed is not None and self.version == version:
            return self.packed
        with self.lock:
            if self.packed is None or self.version != version:
                self.packed, self.version = self._pack(), version
                if self.packed is None:
                    self.usable = False
            return self.packed

    def _pack(self) -> Tensor | None:
        with torch.no_grad():
            weight = self.weight.detach()
            try:
                packed = torch.ops.mkldnn._reorder_linear_weight(weight, None)
                probe = torch.randn(3, weight.size(1), generator=torch.Generator().manual_seed(0))
                got = torch.ops.mkldnn._linear_pointwise(probe, packed, None, "none", [], "")
            except RuntimeError:
                return None
            if not torch.allclose(got, F.linear(probe, weight), rtol=1e-4, atol=1e-5):
                return None
            return packed
