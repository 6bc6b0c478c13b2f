"""What a training checkpoint holds, and continuing a run from one exactly.

A checkpoint stores the position as the next *batch* of the epoch's batch list (a pure function of the
seed, the epoch and the batching settings), every rank's random state, the optimiser, the scaler and the
EMA. A resumed run recomputes the list and continues exactly where it stopped, also on another number of
devices (the groups of batches are cut anew from there). What cannot continue exactly is refused in one
line: another architecture, another vocabulary, batches cut with other settings inside an epoch.

Every checkpoint is verified as it is loaded (``nmt.checkpoint.verify``). A damaged ``checkpoint_last.pt``
stops the run with the name of the newest intact checkpoint: falling back to it loses the updates since,
so it happens only when asked for (``--resume-from``, ``starting_point``).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from nmt import __version__, atomic, checkpoint
from nmt.errors import NmtError
from nmt.model.config import ModelConfig
from nmt.train import distributed as D
from nmt.train.config import RunConfig, to_plain


@dataclass
class Progress:
    """Where a run stands; saved in every checkpoint so that a resumed run continues exactly."""

    update: int = 0
    epoch: int = 1
    batch: int = 0  # next batch of the epoch's batch list
    best_loss: float = math.inf
    nonfinite: int = 0  # updates skipped in a row
    skipped: int = 0  # updates skipped in all


@dataclass
class TrainingState:
    """The objects a checkpoint saves and a resumed run restores."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ema: dict[str, torch.Tensor] | None
    progress: Progress


@dataclass
class Start:
    """The checkpoint a run continues from, and what the user should be told about choosing it."""

    path: Path
    ckpt: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def _candidates(run_dir: Path) -> list[Path]:
    """A run folder's checkpoints that may hold a training state, newest first (by modification time,
    ``checkpoint_last.pt`` first among equals), each file once (``last`` and ``best`` are hard links)."""
    paths = [p for p in (run_dir / checkpoint.LAST, run_dir / checkpoint.BEST) if p.exists()] + checkpoint.numbered(run_dir)[::-1]
    seen: set[tuple[int, int]] = set()
    unique = []
    for p in paths:
        st = p.stat()
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            unique.append((st.st_mtime_ns, p))
    return [p for _, p in sorted(unique, key=lambda item: -item[0])]  # a stable sort keeps last first among equals


def newest_intact(run_dir: Path) -> tuple[Start | None, list[str]]:
    """The newest checkpoint of ``run_dir`` that is intact and holds a training state (None if there is none),
    and why each newer one was passed over."""
    passed = []
    for path in _candidates(run_dir):
        try:
            ckpt = checkpoint.load(path)
        except checkpoint.DamagedCheckpoint as err:
            passed.append(f"{path.name}: {err.what} ({err.reason})")
            continue
        if "optimizer" not in ckpt:
            passed.append(f"{path.name}: no training state")
            continue
        return Start(path, ckpt, [f"[yellow]--resume-from: passing over {run_dir / p}" for p in passed]), passed
    return None, passed


def starting_point(save_dir: Path, resume_from: Path | None) -> Start | None:
    """The checkpoint the run continues from, or None to start anew.

    Without ``resume_from``: ``save_dir/checkpoint_last.pt`` when there is one; a damaged one stops the run,
    naming the newest intact checkpoint, since falling back to it would silently lose the updates made
    since. With ``resume_from`` (``--resume-from``): that checkpoint, or for a run folder its newest intact
    checkpoint, every damaged one passed over said so.
    """
    if resume_from is not None:
        if resume_from.is_dir():
            start, passed = newest_intact(resume_from)
            if start is None:
                why = f" ({'; '.join(passed)})" if passed else ""
                raise NmtError(f"{resume_from} holds no intact checkpoint to resume from{why}; start anew with --reset, or give another --resume-from")
            return start
        ckpt = checkpoint.load(resume_from)
        if "optimizer" not in ckpt:
            raise NmtError(f"{resume_from} holds no training state (averaged or EMA weights?); --resume-from takes a checkpoint written by nmt train")
        return Start(resume_from, ckpt)
    last = save_dir / checkpoint.LAST
    if not last.exists():
        return None
    try:
        return Start(last, checkpoint.load(last))
    except checkpoint.DamagedCheckpoint as err:
        start, _ = newest_intact(save_dir)
        if start is None:
            raise err.advising(f"no checkpoint of {save_dir} is intact: start anew with --reset") from None
        raise err.advising(f"the newest intact one is {start.path.name} (update {start.ckpt.get('progress', {}).get('loop', {}).get('update', '?')}): "
                           f"continue from it with --resume-from {save_dir}, or start anew with --reset") from None


def archive_run(save_dir: Path, say: Callable[[str], None]) -> None:
    """``--reset``: move a run folder's checkpoints and logs into ``previous-N/`` so the run starts anew
    without losing them."""
    names = [p for p in save_dir.glob("*") if p.name.startswith(("checkpoint_", "train.jsonl", "config.json", "summary.json", "tensorboard"))]
    if not names:
        return
    n = 1
    while (save_dir / f"previous-{n}").exists():
        n += 1
    folder = save_dir / f"previous-{n}"
    with atomic.os_faults(folder):  # renames within a folder need no space, but a permission or a read-only disk may refuse
        folder.mkdir()
        for path in names:
            path.rename(folder / path.name)
    say(f"--reset: the earlier run's {len(names)} files moved to {folder}; starting anew")


def payload(state: TrainingState, cfg: RunConfig, model_cfg: ModelConfig, vocab: torch.Tensor, manifest: dict[str, Any],
            plan: dict[str, int], dist: D.Dist) -> dict[str, Any]:
    """Everything a checkpoint holds; a collective (every rank contributes its random state)."""
    rng_torch = D.gather_objects(torch.get_rng_state(), dist.world)
    rng_cuda = D.gather_objects(torch.cuda.get_rng_state(dist.device), dist.world) if dist.device.type == "cuda" else []
    return {
        "model": {k: v.detach().cpu() for k, v in state.model.state_dict().items()},
        "optimizer": state.optimizer.state_dict(),
        "scaler": state.scaler.state_dict(),
        "model_config": asdict(model_cfg),
        "config": to_plain(cfg),
        "vocab": vocab,
        "manifest": {k: manifest[k] for k in ("corpus", "src", "tgt", "normalisation")},
        "progress": {"loop": asdict(state.progress), "batches": plan, "time": time.time()},
        "rng": {"torch": rng_torch, "cuda": rng_cuda},
        "version": __version__,
        **({"ema": {k: v.cpu() for k, v in state.ema.items()}} if state.ema is not None else {}),
    }


def check_resumable(ckpt: dict[str, Any], path: Path, cfg: RunConfig, model_cfg: ModelConfig, vocab: torch.Tensor,
                    plan: dict[str, int]) -> None:
    """Refuse, in one line, a run folder whose checkpoint cannot continue this run exactly."""
    where = cfg.save_dir
    saved = checkpoint.model_config(ckpt, path)  # with the defaults of fields added since it was written
    if saved != model_cfg:
        diff = [k for k, v in asdict(model_cfg).items() if getattr(saved, k) != v]
        raise NmtError(f"{where} holds a run of another architecture (differs in {', '.join(diff)}); use another --save-dir or --reset")
    ours, theirs = checkpoint.digest(vocab), checkpoint.vocab_digest(ckpt)
    if ours != theirs:
        was = ckpt.get("config", {}).get("data", "?")
        raise NmtError(f"{where} was trained with the vocabulary of {was} (spm.model sha256 {theirs[:12]}), but {cfg.data}/spm.model "
                       f"is sha256 {ours[:12]}: resuming would continue on mismatched ids; use another --save-dir, or --reset to start anew")
    batches = ckpt["progress"].get("batches")
    if batches is not None and batches != plan and ckpt["progress"]["loop"].get("batch", ckpt["progress"]["loop"].get("group")) != 0:
        diff = ", ".join(f"{k} {batches.get(k)} → {v}" for k, v in plan.items() if batches.get(k) != v)
        flags = ", ".join(f"--{k.replace('_', '-')} {batches[k]}" for k in ("max_tokens", "pad_multiple", "seed") if batches.get(k) != plan[k])
        raise NmtError(f"{path} stopped inside an epoch whose batches were cut with other settings ({diff}): resuming would skip or "
                       f"repeat data; resume with {flags or 'the same training data'}, or use --reset to start anew")


def restore(ckpt: dict[str, Any], state: TrainingState, cfg: RunConfig, dist: D.Dist) -> list[str]:
    """Load a checkpoint checked by ``check_resumable`` into ``state`` and this rank's random generators;
    returns what the user should be told about the continuation."""
    state.model.load_state_dict(ckpt["model"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    state.scaler.load_state_dict(ckpt["scaler"])
    if state.ema is not None and "ema" in ckpt:
        state.ema = {k: v.to(dist.device) for k, v in ckpt["ema"].items()}
    loop = dict(ckpt["progress"]["loop"])
    rng = ckpt["rng"]
    saved_world = len(rng["torch"])
    if "group" in loop:  # version 0.1 counted groups of world × update_freq batches
        loop["batch"] = loop.pop("group") * saved_world * ckpt["config"]["train"]["update_freq"]
    state.progress = Progress(**loop)
    if dist.rank < saved_world:
        torch.set_rng_state(rng["torch"][dist.rank])
        if dist.device.type == "cuda" and rng.get("cuda"):
            torch.cuda.set_rng_state(rng["cuda"][dist.rank], dist.device)
    notes = []
    saved_train = ckpt["config"]["train"]
    saved_slots = saved_train["max_tokens"] * saved_train["update_freq"] * saved_world
    slots = cfg.train.max_tokens * cfg.train.update_freq * dist.world
    if saved_world != dist.world:
        notes.append(f"[yellow]saved on {saved_world} device(s), resumed on {dist.world}: the data order continues exactly; "
                     "dropout masks differ from an uninterrupted run")
    if saved_slots != slots:
        notes.append(f"[yellow]token slots per update change from {saved_slots:,} to {slots:,}; "
                     "set --tokens-per-update to keep them whatever the device count")
    return notes
