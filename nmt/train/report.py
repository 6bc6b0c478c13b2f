"""Where a training run's figures go: ``train.jsonl``, TensorBoard (when installed), the console and the
progress bar; and the figures themselves (losses, throughput, padding efficiency, MFU, time left)."""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

import torch

from nmt import atomic
from nmt.console import console

# Dense bf16 peak FLOP/s by device name, for model FLOPs utilisation; unknown devices report no MFU.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


@dataclass
class Stats:
    """Sums over the batches of an update (or the updates of a log window), across ranks. Every rank fills
    its share, and one all-reduce of ``vector`` adds them up."""

    loss: float = 0.0  # label-smoothed, summed over target tokens
    nll: float = 0.0
    tgt_tokens: float = 0.0  # real target tokens, EOS included
    src_tokens: float = 0.0
    slots: float = 0.0  # token slots of the batches, padding included
    oom: float = 0.0  # ranks that ran out of memory
    save: float = 0.0  # the main rank asks every rank to save now (--save-minutes) ...
    stop: float = 0.0  # ... or to stop (--max-time)
    skipped: float = 0.0  # updates skipped for a non-finite gradient or lack of memory

    def vector(self, device: torch.device) -> torch.Tensor:
        """The fields, in order, as one float64 tensor (what the ranks all-reduce)."""
        return torch.tensor(astuple(self), dtype=torch.float64, device=device)

    @classmethod
    def of(cls, values: list[float]) -> "Stats":
        """Stats from a vector's values, in field order."""
        return cls(*values)

    def __add__(self, other: "Stats") -> "Stats":
        return Stats(*(a + b for a, b in zip(astuple(self), astuple(other))))

SHOWN = ("loss", "ppl", "lr", "tgt_tok_s", "mfu", "valid_ppl")  # the figures the progress bar keeps


def peak_flops(device: torch.device, precision: str) -> float | None:
    """The device's dense peak for the run's precision, where known (mixed precision on known GPUs only)."""
    if device.type != "cuda" or precision not in ("bf16", "fp16"):
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def window_record(s: Stats, seconds: float, update: int, epoch: int, updates_in_window: int, remaining_updates: int,
                  lr: float, flops_per_token: float, peak: float | None, world: int, seconds_left: float | None = None) -> dict[str, Any]:
    """The log line for a window of updates, from the summed ``Stats`` of its updates.

    ``eta_min`` is the time to whichever limit comes first: the remaining updates at this window's pace,
    or ``seconds_left`` of --max-time.
    """
    ntok = max(s.tgt_tokens, 1)
    tok_per_s = s.tgt_tokens / max(seconds, 1e-9)
    record = {
        "update": update, "epoch": epoch, "loss": s.loss / ntok, "ppl": math.exp(min(s.nll / ntok, 50)),
        "lr": lr, "tgt_tok_s": tok_per_s,
        "pad_efficiency": (s.src_tokens + s.tgt_tokens) / max(s.slots, 1),
        "skipped": int(s.skipped),
    }
    if peak:
        record["mfu"] = tok_per_s * flops_per_token / (peak * world)
    record["tgt_tokens_per_update"] = s.tgt_tokens / max(updates_in_window, 1)  # real, not padded
    eta = remaining_updates * seconds / max(updates_in_window, 1)
    record["eta_min"] = min(eta, max(seconds_left, 0.0)) / 60 if seconds_left is not None else eta / 60
    return record


class Reporter:
    """Writes log records of the main rank to every destination; other ranks' reporters do nothing."""

    def __init__(self, save_dir: Path, main: bool) -> None:
        self.save_dir, self.main = save_dir, main
        self.started = time.time()
        self.log_file = None
        self.tensorboard = None
        self.bar = None
        self.bar_task = None
        self.bar_info: dict[str, float] = {}  # the latest of each figure the progress bar shows

    def start_bar(self, total: int, completed: int) -> None:
        """A progress bar over the run's updates, when the console is a terminal."""
        if self.main and console.is_terminal:
            from nmt.console import progress

            self.bar = progress()
            self.bar.start()
            self.bar_task = self.bar.add_task("train", total=total, completed=completed, info="")

    def say(self, text: str) -> None:
        if self.main:
            console.print(text)

    def log(self, record: dict[str, Any]) -> None:
        if not self.main:
            return
        if self.log_file is None:
            with atomic.os_faults(self.save_dir / "train.jsonl"):
                self.log_file = open(self.save_dir / "train.jsonl", "ab", buffering=0)  # written through: see _append
            try:  # TensorBoard only when the optional extra is installed
                from torch.utils.tensorboard import SummaryWriter

                self.tensorboard = SummaryWriter(str(self.save_dir / "tensorboard"))
            except ImportError:
                self.tensorboard = None
        # Seconds since this process started training: what learning curves against time are drawn on.
        record = {**record, "elapsed_s": round(time.time() - self.started, 3)}
        self._append((json.dumps(record) + "\n").encode())
        if self.tensorboard is not None:
            for key, value in record.items():
                if key != "update" and isinstance(value, (int, float)):
                    self.tensorboard.add_scalar(key, value, record["update"])
        if self.bar is not None:
            self.bar_info.update({k: record[k] for k in SHOWN if k in record})
            self.bar.update(self.bar_task, completed=record["update"], info="  ".join(f"{k} {v:.4g}" for k, v in self.bar_info.items()))
        console.print("  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()))

    def _append(self, line: bytes) -> None:
        """Append one record to train.jsonl whole or not at all: a write that fails (a full disk) is cut
        back to the end of the previous record, so that readers never meet half a line. The file is
        unbuffered, so no half line waits in a buffer to be flushed after the cut."""
        f, path = self.log_file, self.save_dir / "train.jsonl"
        assert f is not None
        end = f.tell()
        try:
            view = memoryview(line)
            while view:
                view = view[f.write(view) :]
        except OSError as err:
            self.log_file = None
            try:
                os.ftruncate(f.fileno(), end)  # frees blocks: needs no space
            except OSError:
                pass  # the fault itself is what to report
            f.close()
            raise atomic.fault(err, path) from err

    def close(self) -> None:
        if self.log_file:
            self.log_file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.bar is not None:
            self.bar.stop()


def plan_table(plan: dict[str, Any], title: str):  # noqa: ANN201 - a rich Table
    """``nmt train --dry-run``'s plan as a table: one setting per row, numbers with thousands separators."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("setting")
    table.add_column("value", justify="right")
    for key, value in plan.items():
        table.add_row(key, f"{value:,}" if isinstance(value, int) else f"{value:.4g}" if isinstance(value, float) else str(value))
    return table
