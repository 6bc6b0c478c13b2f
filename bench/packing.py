"""Packed against padded batches on one device, in one process: first a check that one batch's loss and
gradients agree (on a GPU through the variable-length kernel, nmt.kernels.varlen; on a CPU through the
dense block-diagonal masks), then forward + backward time per batch, alternating the two on the same
batches, and each one's padding efficiency.

    python bench/packing.py data-bin/gettext-en-de --arch tiny --max-tokens 4096 --batches 40
    python bench/packing.py /tmp/wmt-shape --arch big --device cuda --precision bf16 --max-tokens 32768 --batches 20
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from nmt import kernels
from nmt.data.batching import Batch, collate_indices, collate_packed, pack_bucket, token_batches
from nmt.data.dataset import ParallelDataset
from nmt.kernels import output_cross_entropy
from nmt.model.config import model_config
from nmt.model.transformer import Transformer
from nmt.tokens import PAD


def step(model: Transformer, batch: Batch, precision: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One forward and backward pass: the loss summed over the batch's target tokens, and the gradients."""
    device = next(model.parameters()).device
    batch = batch.to(device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        hidden = model.features(batch.src, batch.tgt_in, batch.packing)
        loss, _, _ = output_cross_entropy(hidden.flatten(0, 1), model.output_weight, batch.tgt_out.view(-1), 0.1, PAD)
    loss.backward()
    grads = {k: p.grad.detach().clone() for k, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="A folder written by nmt prepare (or bench/synthetic_data.py).")
    parser.add_argument("--arch", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    data = ParallelDataset(args.data, "train")
    torch.manual_seed(0)
    model = Transformer(model_config(args.arch, vocab_size=data.manifest["vocab"]["size"], dropout=0.0)).to(device)
    kernels.install(model, device)
    batches = token_batches(data.src_lengths, data.tgt_lengths, args.max_tokens, 1, 1, 8 if device.type == "cuda" else 1)[: args.batches]
    pad_multiple = 8 if device.type == "cuda" else 1
    padded = lambda b: collate_indices(data, b, pad_multiple)  # noqa: E731
    packed = lambda b: collate_packed(data, b, pack_bucket(args.max_tokens))  # noqa: E731

    loss_a, grads_a = step(model, padded(batches[0]), args.precision)
    loss_b, grads_b = step(model, packed(batches[0]), args.precision)
    worst = max(float((grads_b[k] - g).norm() / g.norm().clamp_min(1e-30)) for k, g in grads_a.items())
    print(f"== check ({args.arch}, {args.device}, {args.precision}, one batch of {len(batches[0])} pairs): loss padded {loss_a.item():.4f} "
          f"packed {loss_b.item():.4f} (relative difference {abs(loss_b - loss_a).item() / abs(loss_a).item():.2e}); "
          f"largest relative difference of a parameter's gradient {worst:.2e}")

    times = {"padded": 0.0, "packed": 0.0}
    efficiency = {"padded": [], "packed": []}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for rnd in range(2):  # the first round warms up (kernel choices, allocations)
        for b in batches:
            for name, collate in (("padded", padded), ("packed", packed)):
                batch = collate(b)
                sync()
                start = time.perf_counter()
                step(model, batch, args.precision)
                sync()
                if rnd:
                    times[name] += time.perf_counter() - start
                    efficiency[name].append((batch.src_tokens + batch.tgt_tokens) / batch.slots)
    tokens = sum(int(data.tgt_lengths[b].sum()) + len(b) for b in batches)
    for name in times:
        print(f"== {name}: {times[name] / len(batches) * 1e3:.1f} ms a batch, {tokens / times[name]:,.0f} target tokens/s, "
              f"padding efficiency {np.mean(efficiency[name]):.3f}")
    print(f"== packed ÷ padded time: {times['packed'] / times['padded']:.2f}")


if __name__ == "__main__":
    main()
