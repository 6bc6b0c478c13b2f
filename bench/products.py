"""The search's projections: the C product (``nmt.kernels.native``) against oneDNN's packed product and MKL's
``F.linear``, on the quick-start model's and a base model's weight shapes, at the row counts a search meets.

    python bench/products.py --threads 1
    python bench/products.py --threads 2 --rows 16 256 2048

Prints microseconds a call (best of 5 timings) and the C product's multiply-adds per second. oneDNN's rows
are padded to their bucket (``row_bucket``) as the search pads them; the C product takes the rows as they
are. Each product is checked against ``F.linear`` before it is timed.
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

import torch
import torch.nn.functional as F

from nmt.kernels import native
from nmt.kernels.packed import PackedLinear, row_bucket

SHAPES = {  # (out, in): the quick-start model's (d 128, FFN 512, vocabulary 4,000), then a base model's
    "quick-start qkv": (384, 128), "quick-start d×d": (128, 128), "quick-start fc1": (512, 128), "quick-start fc2": (128, 512),
    "quick-start output": (4000, 128), "base qkv": (1536, 512), "base fc1": (2048, 512), "base fc2": (512, 2048),
    "base output 32k": (32000, 512),
}


def best_us(call: Callable[[], object], macs: int) -> float:
    call()
    reps = max(3, int(2e7 / (macs + 1e5)))
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(reps):
            call()
        best = min(best, (time.perf_counter() - start) / reps)
    return best * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 4, 16, 64, 256, 2048])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if native.library() is None:
        raise SystemExit("products: the C library is not available here (no C compiler, or NMT_NATIVE=0)")
    print(f"torch {torch.__version__}, {args.threads} thread(s); µs a call, best of 5")
    print(f"{'weight':20} {'out×in':>11} {'rows':>5} {'MKL':>9} {'oneDNN':>9} {'C':>9} {'oneDNN/C':>9} {'C GMAC/s':>9}")
    gen = torch.Generator().manual_seed(0)
    for name, (n, k) in SHAPES.items():
        weight, bias = torch.randn(n, k, generator=gen) * 0.05, torch.randn(n, generator=gen)
        c = PackedLinear(weight, bias)
        onednn = PackedLinear.__new__(PackedLinear)
        onednn.weight, onednn.bias, onednn.relu, onednn.panels = weight, bias, False, None
        onednn.packed = torch.ops.mkldnn._reorder_linear_weight(weight, None)
        assert c.panels is not None
        for m in args.rows:
            x = torch.randn(m, k, generator=gen)
            padded = torch.cat([x, x.new_zeros(row_bucket(m) - m, k)])
            want = F.linear(x, weight, bias)
            torch.testing.assert_close(c(x), want, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(onednn(x), want, rtol=1e-4, atol=1e-4)
            macs = m * n * k
            t_mkl = best_us(lambda: F.linear(x, weight, bias), macs)
            t_dnn = best_us(lambda: onednn._onednn(padded, onednn.packed), macs)
            t_c = best_us(lambda: c(x), macs)
            print(f"{name:20} {f'{n}×{k}':>11} {m:5} {t_mkl:9.1f} {t_dnn:9.1f} {t_c:9.1f} {t_dnn / t_c:9.2f} {macs / t_c / 1e3:9.1f}", flush=True)


if __name__ == "__main__":
    main()
