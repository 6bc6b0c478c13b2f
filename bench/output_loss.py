"""The output projection and the label-smoothed loss, forward and backward, two ways on one device:

- ``logits``: ``F.linear`` to the whole (tokens × vocabulary) logits, their float32 log-softmax, then
  ``label_smoothed_nll``, all through autograd (what a plain training loop does);
- ``blocks``: ``output_cross_entropy``, what ``nmt train`` uses: the logits in blocks of rows, never stored
  whole, both gradients computed in the forward pass.

(docs/performance.md's GPU figures were taken at commit c284e79, whose ``logits`` way was nmt's earlier GPU
path: the same whole logits, with a hand-written backward pass for the loss.)

Prints the median time per call and the peak memory each takes above its inputs, alternating the two so
that both see the same machine.

    python bench/output_loss.py --tokens 32768 --d-model 1024 --vocab 37000 --precision bf16   # big, a GPU
    python bench/output_loss.py --tokens 4096 --d-model 256 --vocab 8000 --precision bf16      # a CPU
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from nmt.device import DTYPES
from nmt.kernels import output_cross_entropy
from nmt.train.loss import label_smoothed_nll


def through_logits(h: torch.Tensor, w: torch.Tensor, target: torch.Tensor, eps: float) -> torch.Tensor:
    logits = F.linear(h, w)
    with torch.autocast(h.device.type, enabled=False):
        return label_smoothed_nll(logits.float().log_softmax(-1), target, eps, 0)[0]


def in_blocks(h: torch.Tensor, w: torch.Tensor, target: torch.Tensor, eps: float) -> torch.Tensor:
    return output_cross_entropy(h, w, target, eps, 0)[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=32768)
    ap.add_argument("--d-model", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=37000)
    ap.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="bf16")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    h = torch.randn(args.tokens, args.d_model, device=device, requires_grad=True)
    w = (torch.randn(args.vocab, args.d_model, device=device) * args.d_model**-0.5).requires_grad_()
    target = torch.randint(1, args.vocab, (args.tokens,), device=device)
    target[::17] = 0  # some padding
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    ways: dict[str, Callable[..., torch.Tensor]] = {"logits": through_logits, "blocks": in_blocks}
    times: dict[str, list[float]] = {k: [] for k in ways}
    peaks: dict[str, float] = {}
    losses: dict[str, float] = {}
    for i in range(args.repeats + 2):  # two warm-up rounds
        for name, way in ways.items():
            h.grad = w.grad = None
            sync()
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
            start = time.perf_counter()
            with torch.autocast(device.type, dtype=DTYPES[args.precision], enabled=args.precision != "fp32"):
                loss = way(h, w, target, 0.1)
            (loss * 1e-3).backward()
            sync()
            if i >= 2:
                times[name].append(time.perf_counter() - start)
            if cuda:
                peaks[name] = (torch.cuda.max_memory_allocated(device) - base) / 2**30
            losses[name] = loss.item()
    print(f"{args.tokens} tokens × d {args.d_model} × vocabulary {args.vocab}, {args.precision}, {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if cuda else ""))
    for name in ways:
        peak = f", peak {peaks[name]:.2f} GiB above the inputs" if cuda else ""
        print(f"  {name:7s} {statistics.median(times[name]) * 1000:8.2f} ms forward + backward{peak}, loss {losses[name]:.6g}")
    print(f"  blocks ÷ logits time: {statistics.median(times['blocks']) / statistics.median(times['logits']):.2f}")


if __name__ == "__main__":
    main()
