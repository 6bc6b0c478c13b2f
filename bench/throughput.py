"""Training throughput, in one run on one machine: the real ``nmt train`` loop beside a plain PyTorch loop.

Both train the same architecture on the same prepared corpus (``nmt prepare`` output, e.g. the shared
gettext-en-de), for the same wall time each, alternating so that both see the same machine state:

- nmt: the real ``Trainer`` (token batches, label-smoothed loss, Adam with the paper's schedule, the
  statistics, logging), with each ``--precision`` asked for (fp32, bf16, ...), padded and, with
  ``--packing``, also packed (the same batches, one row per side);
- plain: ``torch.nn.Transformer`` with the paper's embeddings (scaled, sinusoidal, tied output), batches of
  length-sorted pairs holding exactly ``--plain-tokens`` real target tokens each, ``F.cross_entropy`` with
  label smoothing, Adam: the loop anyone would write in an afternoon.

Printed: real target tokens per second (the median over the run's windows after the first), the ratio to
the plain loop, the real target tokens per update, and the padding efficiency.

    python bench/throughput.py data-bin/gettext-en-de --arch tiny --seconds 60
    python bench/throughput.py DATA --arch tiny --model encoder_layers=3 decoder_layers=3 d_model=256 heads=4 d_ff=1024 \\
        --precision fp32 bf16 --seconds 120
    python bench/throughput.py DATA --arch tiny --precision fp32 --packing --seconds 60 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nmt.train.config import RunConfig, TrainConfig
from nmt.data.batching import collate
from nmt.data.dataset import ParallelDataset, read_manifest
from nmt.model.config import model_config
from nmt.model.layers import sinusoidal_positions
from nmt.train.distributed import Dist
from nmt.train.loop import Trainer
from nmt.train.schedule import noam_lr


class Reference(nn.Module):
    """torch.nn.Transformer with the paper's embeddings (scaled, sinusoidal PE) and a tied output layer."""

    def __init__(self, vocab: int, d: int, d_ff: int, heads: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d, padding_idx=0)
        self.core = nn.Transformer(d, heads, layers, layers, d_ff, dropout=dropout, batch_first=True)
        self.scale = math.sqrt(d)
        self.register_buffer("pe", sinusoidal_positions(1024, d))

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        x = self.embed(src) * self.scale + self.pe[: src.size(1)]
        y = self.embed(tgt) * self.scale + self.pe[: tgt.size(1)]
        mask = nn.Transformer.generate_square_subsequent_mask(tgt.size(1), device=src.device)
        h = self.core(x, y, tgt_mask=mask, src_key_padding_mask=src == 0, memory_key_padding_mask=src == 0, tgt_is_causal=True)
        return h @ self.embed.weight.t()


def plain_batches(data: ParallelDataset, tokens: int, seed: int) -> list[np.ndarray]:
    """Length-sorted pairs cut into batches of ``tokens`` real target tokens (EOS included), shuffled."""
    order = np.lexsort((data.src_lengths, data.tgt_lengths))
    sizes = data.tgt_lengths[order].astype(np.int64) + 1
    ends = np.searchsorted(np.cumsum(sizes), np.arange(tokens, sizes.sum() + tokens, tokens), side="right")
    batches = [order[a:b] for a, b in zip(np.r_[0, ends[:-1]], ends) if b > a]
    return [batches[i] for i in np.random.default_rng(seed).permutation(len(batches))]


def run_plain(data: ParallelDataset, cfg: RunConfig, vocab: int, tokens: int, seconds: float) -> dict:
    m = model_config(cfg.arch, vocab_size=vocab, **cfg.model)
    torch.manual_seed(0)
    model = Reference(vocab, m.d_model, m.d_ff, m.heads, m.encoder_layers, m.dropout).train()
    opt = torch.optim.Adam(model.parameters(), lr=0.0, betas=(0.9, 0.98), eps=1e-9)
    windows, step, started = [], 0, time.perf_counter()
    window_tokens, window_start = 0, time.perf_counter()
    for idx in plain_batches(data, tokens, seed=1):
        batch = collate([data[int(i)] for i in idx], multiple=1)
        step += 1
        for g in opt.param_groups:
            g["lr"] = noam_lr(step, m.d_model, cfg.train.warmup)
        logits = model(batch.src, batch.tgt_in)
        loss = F.cross_entropy(logits.view(-1, vocab), batch.tgt_out.view(-1), ignore_index=0, label_smoothing=0.1, reduction="sum")
        opt.zero_grad()
        (loss / batch.tgt_tokens).backward()
        opt.step()
        window_tokens += batch.tgt_tokens
        if step % 10 == 0:
            now = time.perf_counter()
            windows.append(window_tokens / (now - window_start))
            window_tokens, window_start = 0, now
        if time.perf_counter() - started > seconds:
            break
    return {"tok_s": statistics.median(windows[1:] or windows), "tokens_per_update": tokens, "pad_efficiency": float("nan")}


def run_nmt(data_dir: Path, cfg: RunConfig, precision: str, seconds: float, packing: bool = False) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        run = replace(cfg, save_dir=Path(tmp), train=replace(cfg.train, precision=precision, max_time=seconds, log_every=10, packing=packing,
                                                             max_updates=10**9, save_every=10**9, validate_every=10**9, save_minutes=1e9))
        Trainer(run, Dist()).fit()
        records = [json.loads(line) for line in (Path(tmp) / "train.jsonl").read_text().splitlines()]
    windows = [r for r in records if "tgt_tok_s" in r]
    speeds = [r["tgt_tok_s"] for r in windows[1:]] or [r["tgt_tok_s"] for r in windows]
    return {"tok_s": statistics.median(speeds), "tokens_per_update": statistics.median(r["tgt_tokens_per_update"] for r in windows),
            "pad_efficiency": statistics.median(r["pad_efficiency"] for r in windows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="A folder written by nmt prepare.")
    parser.add_argument("--arch", default="tiny")
    parser.add_argument("--model", nargs="*", default=[], help="ModelConfig overrides as key=value.")
    parser.add_argument("--precision", nargs="+", default=["fp32"])
    parser.add_argument("--max-tokens", type=int, default=4096, help="nmt's --max-tokens (padded slots of the longer side).")
    parser.add_argument("--pad-multiple", type=int, default=None, help="nmt's --pad-multiple [default: nmt train's, 1 on a CPU].")
    parser.add_argument("--plain-tokens", type=int, default=4096, help="Real target tokens per batch of the plain loop.")
    parser.add_argument("--seconds", type=float, default=60.0, help="Wall time of each run.")
    parser.add_argument("--rounds", type=int, default=1, help="Rounds of all runs; each keeps its best.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--packing", action="store_true", help="Also run nmt with --packing, for each precision.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    overrides = {k: (int(v) if v.isdigit() else float(v) if v.replace(".", "", 1).isdigit() else v)
                 for k, v in (item.split("=", 1) for item in args.model)}
    cfg = RunConfig(data=args.data, save_dir=Path("unused"), arch=args.arch, model=overrides, cpu=True,
                    train=TrainConfig(max_tokens=args.max_tokens, pad_multiple=args.pad_multiple, warmup=4000))
    vocab = read_manifest(args.data)["vocab"]["size"]
    data = ParallelDataset(args.data, "train")
    best: dict[str, dict] = {}
    for _ in range(args.rounds):
        runs = {"plain fp32": lambda: run_plain(data, cfg, vocab, args.plain_tokens, args.seconds)}
        runs |= {f"nmt {p}": (lambda p=p: run_nmt(args.data, cfg, p, args.seconds)) for p in args.precision}
        if args.packing:
            runs |= {f"nmt {p} packed": (lambda p=p: run_nmt(args.data, cfg, p, args.seconds, packing=True)) for p in args.precision}
        for name, measure in runs.items():
            result = measure()
            if name not in best or result["tok_s"] > best[name]["tok_s"]:
                best[name] = result
    m = model_config(args.arch, vocab_size=vocab, **overrides)
    print(f"\n{args.data}: {m.encoder_layers}+{m.decoder_layers} layers, d_model {m.d_model}, d_ff {m.d_ff}, {m.heads} heads, "
          f"vocabulary {vocab}; {args.threads} threads, {args.seconds:.0f} s a run, best of {args.rounds}; torch {torch.__version__}")
    plain = best["plain fp32"]["tok_s"]
    print(f"{'loop':<18}{'tgt tok/s':>11}{'× plain':>9}{'tgt tok/update':>16}{'pad eff':>9}")
    for name, r in best.items():
        print(f"{name:<18}{r['tok_s']:>11.0f}{r['tok_s'] / plain:>9.2f}{r['tokens_per_update']:>16.0f}{r['pad_efficiency']:>9.2f}")


if __name__ == "__main__":
    main()
