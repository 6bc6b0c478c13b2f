"""Starting the processes of a run: one process, ``--cpu --nproc N`` (gloo), ``--gpus N`` (NCCL), or
whatever ``torchrun`` started (read from its environment). Each process runs one ``Trainer``."""

from __future__ import annotations

import json
import os
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from nmt.train.config import RunConfig, pair_dropout, resolve
from nmt.console import console
from nmt.data.dataset import read_manifest
from nmt.errors import NmtError
from nmt.train import distributed as D
from nmt.train.lock import lock_run


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def world_size(cfg: RunConfig) -> int:
    """Processes the run will have: torchrun's environment, else --gpus, else --nproc on the CPU."""
    if launched_by_torchrun():
        return int(os.environ["WORLD_SIZE"])
    if cfg.gpus:
        return cfg.gpus
    return cfg.nproc if cfg.cpu else 1


def check_resources(cfg: RunConfig) -> dict[str, Any]:
    """Fail before any process starts: a data folder that is not prepared, more GPUs than present.
    Returns the data's manifest."""
    manifest = read_manifest(cfg.data)
    if cfg.gpus and not cfg.cpu:
        present = torch.cuda.device_count()
        if cfg.gpus > present:
            raise NmtError(f"--gpus {cfg.gpus} but {present} GPU(s) present; use --gpus {present} or --cpu --nproc N")
    return manifest


def run(cfg: RunConfig, dry_run: bool = False, reset: bool = False) -> dict[str, Any]:
    """Train (or, with ``dry_run``, measure and report) as configured; returns the final summary.

    ``reset`` moves an earlier run's checkpoints in ``cfg.save_dir`` aside and starts anew.
    """
    if reset and cfg.resume_from is not None:
        raise NmtError("--reset starts the run anew and --resume-from continues it from a checkpoint; give one of them")
    manifest = check_resources(cfg)
    cfg, note = pair_dropout(cfg, manifest["src"], manifest["tgt"])
    if note and int(os.environ.get("RANK", 0)) == 0:
        console.print(note)
    use_cuda = not cfg.cpu and (cfg.gpus > 0 or torch.cuda.is_available())
    world = world_size(cfg)
    cfg = resolve(cfg, world, use_cuda)
    if launched_by_torchrun():
        return _worker(int(os.environ["RANK"]), world, int(os.environ["LOCAL_RANK"]), cfg, use_cuda, None, dry_run, reset)
    if world == 1:
        return _worker(0, 1, 0, cfg, use_cuda, None, dry_run, reset)
    if not dry_run:
        lock_run(cfg.save_dir).release()  # a folder in use is refused before any process starts; rank 0 then takes it
    try:
        torch.multiprocessing.spawn(_spawned, args=(world, cfg, use_cuda, D.free_port(), dry_run, reset), nprocs=world)
    except torch.multiprocessing.ProcessExitedException as err:
        # The failing rank has already printed its one-line reason.
        raise NmtError(f"training process {err.error_index} of {world} stopped with exit code {err.exit_code}; see its message above") from None
    summary = cfg.save_dir / "summary.json"
    return json.loads(summary.read_text()) if summary.exists() else {}


def _spawned(rank: int, world: int, cfg: RunConfig, use_cuda: bool, port: int, dry_run: bool, reset: bool) -> None:
    if not use_cuda and "OMP_NUM_THREADS" not in os.environ:
        # --cpu --nproc N: the cores are shared among the ranks, not given to each (oversubscribed threads
        # spin against each other).
        torch.set_num_threads(max(1, torch.get_num_threads() // world))
    try:
        _worker(rank, world, rank, cfg, use_cuda, port, dry_run, reset)
    except NmtError as err:
        # Child tracebacks are noise for a user error: print the one line and exit non-zero.
        print(f"nmt: error: {err}", flush=True)
        raise SystemExit(2) from None


def _worker(rank: int, world: int, local_rank: int, cfg: RunConfig, use_cuda: bool, port: int | None, dry_run: bool,
            reset: bool = False) -> dict[str, Any]:
    from nmt.train.loop import Trainer

    with _writer_lock(cfg, rank, dry_run):
        dist = D.init(rank, world, local_rank, use_cuda, port)
        try:
            trainer = Trainer(cfg, dist, reset=reset and not dry_run)
            return trainer.dry_run() if dry_run else trainer.fit()
        finally:
            D.shutdown()


def _writer_lock(cfg: RunConfig, rank: int, dry_run: bool) -> AbstractContextManager[object]:
    """The run folder's lock, taken by the rank that writes it (rank 0) before anything is written there and
    held until the process ends; a dry run writes nothing and takes none."""
    if rank != 0 or dry_run:
        return nullcontext()
    lock = lock_run(cfg.save_dir)
    if lock.warning:
        console.print(lock.warning)
    return lock
