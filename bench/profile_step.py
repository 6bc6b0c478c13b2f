"""Where one training update's time goes: the real ``Trainer.train_step`` under torch.profiler.

Runs a few warm-up updates, then profiles ``--steps`` updates and prints the wall time per update and the
operators that take the most device time (GPU) or host time (CPU), so that a slow step can be traced to
attention, the loss, the optimizer, the data or host synchronisation.

    python bench/profile_step.py DATA --arch base --precision bf16 --max-tokens 32768
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from nmt.train.config import RunConfig, TrainConfig, resolve
from nmt.train import distributed as D
from nmt.train.loop import Trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path)
    ap.add_argument("--arch", default="base")
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--max-tokens", type=int, default=16384)
    ap.add_argument("--warmup", type=int, default=5, help="updates before profiling")
    ap.add_argument("--steps", type=int, default=5, help="updates profiled")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--rows", type=int, default=25)
    args = ap.parse_args()
    use_cuda = torch.cuda.is_available()
    with tempfile.TemporaryDirectory() as tmp:
        train = TrainConfig(max_tokens=args.max_tokens, precision=args.precision, compile=args.compile, update_freq=1,
                            validate_every=10**9, save_every=10**9, save_minutes=1e9)
        cfg = resolve(RunConfig(data=args.data, save_dir=Path(tmp), arch=args.arch, train=train, cpu=not use_cuda), world=1, cuda=use_cuda)
        trainer = Trainer(cfg, D.init(0, 1, 0, use_cuda))
        batches = trainer.epoch_batches(1)
        sync = torch.cuda.synchronize if use_cuda else (lambda: None)
        for b in batches[: args.warmup]:
            trainer.train_step([b])
        sync()
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if use_cuda else [])
        started = time.perf_counter()
        with profile(activities=activities) as prof:
            for b in batches[args.warmup : args.warmup + args.steps]:
                trainer.train_step([b])
            sync()
        per_step = (time.perf_counter() - started) / args.steps
    line = f"{args.arch} {args.precision} max_tokens {args.max_tokens}: {per_step * 1000:.1f} ms per update under the profiler"
    if use_cuda:  # the GPU's busy time: the kernels' own times, as the table's total counts them (an operator's
        # device time is its kernels' again), on one stream, where kernels do not overlap
        kernels = [e for e in prof.key_averages() if e.device_type == DeviceType.CUDA and not e.is_user_annotation]
        busy = sum(e.self_device_time_total for e in kernels) / 1000 / args.steps
        line += f", the GPU busy {busy:.1f} ms of it ({busy / (per_step * 1000):.0%})"
    print(line)
    key = "cuda_time_total" if use_cuda else "cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=args.rows, max_name_column_width=60))
    if use_cuda:
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=60))


if __name__ == "__main__":
    main()
