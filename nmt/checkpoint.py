"""Checkpoints: atomic save, safe load (``weights_only``), and averaging. Shared by train/ and decode/.

A checkpoint is a dict of tensors and plain data only: ``model`` (state dict), ``config`` (the resolved
run configuration), ``model_config``, ``vocab`` (the SentencePiece model as a uint8 tensor, so a
checkpoint translates on its own), ``progress``, and for training ``optimizer``, ``scaler``, ``rng``, ``ema``.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from nmt.errors import NmtError

FORMAT = "nmt-checkpoint-1"
_NUMBERED = re.compile(r"checkpoint_(\d+)\.pt$")


def save(payload: dict[str, Any], path: Path) -> None:
    """Write to ``path.tmp``, flush to disk, rename: a kill at any moment leaves the old file intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save({"format": FORMAT, **payload}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load(path: Path) -> dict[str, Any]:
    """Load a checkpoint on the CPU without executing pickled code; one-line errors for bad files.

    Memory-mapped: tensors are read from disk when touched, so loading a training checkpoint for its
    weights does not also read its optimiser state.
    """
    if not path.exists():
        raise NmtError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise NmtError(f"{path}: not a readable nmt checkpoint ({first[:200]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise NmtError(f"{path}: not an nmt checkpoint")
    return ckpt


def vocab_digest(ckpt: dict[str, Any]) -> str:
    return hashlib.sha256(ckpt["vocab"].numpy().tobytes()).hexdigest()


def numbered(save_dir: Path) -> list[Path]:
    """Numbered checkpoints of a run folder, oldest update first."""
    found = [(int(m.group(1)), p) for p in save_dir.glob("checkpoint_*.pt") if (m := _NUMBERED.search(p.name))]
    return [p for _, p in sorted(found)]


def average(paths: list[Path], out: Path) -> dict[str, Any]:
    """Element-wise mean of the parameters of ``paths`` in float32, holding at most two models in memory.

    Refuses checkpoints of different architectures or vocabularies. The result keeps the configuration and
    vocabulary of the newest input and loses the optimiser state (it is for translation).
    """
    if not paths:
        raise NmtError("no checkpoints to average")
    total: dict[str, torch.Tensor] | None = None
    first: dict[str, Any] = {}
    for i, path in enumerate(paths):
        ckpt = load(path)
        if i == 0:
            total = {k: v.detach().to(torch.float32).clone() for k, v in ckpt["model"].items()}
            dtypes = {k: v.dtype for k, v in ckpt["model"].items()}
            first = {k: v for k, v in ckpt.items() if k not in ("model", "optimizer", "ema")}  # not a third model
            last = first
            continue
        if ckpt["model_config"] != first["model_config"]:
            raise NmtError(f"{path}: architecture differs from {paths[0]}; cannot average")
        if vocab_digest(ckpt) != vocab_digest(first):
            raise NmtError(f"{path}: vocabulary differs from {paths[0]}; cannot average")
        assert total is not None
        for k, v in ckpt["model"].items():
            total[k].add_(v.to(torch.float32))
        last = {k: v for k, v in ckpt.items() if k not in ("model", "optimizer", "ema")}
        del ckpt
    assert total is not None
    model = {k: (v / len(paths)).to(dtypes[k]) for k, v in total.items()}
    result = {
        "model": model,
        "model_config": last["model_config"],
        "config": last["config"],
        "vocab": last["vocab"],
        "manifest": last.get("manifest", {}),
        "progress": {**last.get("progress", {}), "averaged": [str(p) for p in paths]},
    }
    save(result, out)
    return result
