"""Checkpoints: atomic save, safe load (``weights_only``), a run folder's saving policy, models built from
checkpoints, and averaging. Shared by train/ and decode/.

A checkpoint is a dict of tensors and plain data only: ``model`` (state dict), ``config`` (the resolved
run configuration), ``model_config``, ``vocab`` (the SentencePiece model as a uint8 tensor, so a
checkpoint translates on its own), ``progress``, and for training ``optimizer``, ``scaler``, ``rng``, ``ema``.

A run folder holds numbered checkpoints ``checkpoint_UPDATE.pt`` (what averaging reads), and
``checkpoint_last.pt`` / ``checkpoint_best.pt`` (links to, or copies of, the newest and the best).

Every load verifies the file first (``verify``): ``torch.save`` writes a zip container whose every part
(the pickled structure, each tensor's bytes) carries the CRC-32 of its contents; a part whose bytes no longer
match it is a damaged file, refused in one line (``DamagedCheckpoint``). Every checkpoint nmt has written
carries these CRCs, so the oldest ones are verified as fully as new ones.
"""

from __future__ import annotations

import hashlib
import mmap
import pickle
import re
import struct
import zipfile
import zlib
from pathlib import Path
from typing import IO, Any

import torch

from nmt import atomic
from nmt.errors import NmtError
from nmt.model.config import ModelConfig, config_from_dict
from nmt.model.transformer import Transformer

FORMAT = "nmt-checkpoint-1"
LAST, BEST, EMA = "checkpoint_last.pt", "checkpoint_best.pt", "checkpoint_ema.pt"
_NUMBERED = re.compile(r"checkpoint_(\d+)\.pt$")
_TRAINING_STATE = ("model", "optimizer", "ema")  # what a checkpoint holds besides its metadata


class DamagedCheckpoint(NmtError):
    """A checkpoint file whose contents no longer match what was written, or that cannot be read as one."""

    def __init__(self, path: Path, reason: str, advice: str = "use another checkpoint", what: str = "damaged checkpoint") -> None:
        self.path, self.reason, self.what = path, reason, what
        super().__init__(f"{path}: {what} ({reason}); {advice}")

    def advising(self, advice: str) -> "DamagedCheckpoint":
        """The same fault with other advice (what the caller can offer instead)."""
        return DamagedCheckpoint(self.path, self.reason, advice, self.what)


class _KeepsWriteError:
    """A binary file for ``torch.save`` that keeps the first OSError of a write: torch reports a failed write
    (a full disk) as a RuntimeError about a zip record's position, without the errno."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f = f
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.f.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def flush(self) -> None:
        self.f.flush()


def save(payload: dict[str, Any], path: Path) -> None:
    """Write to a temporary name, flush to disk, rename: a kill at any moment leaves the old file intact, and
    a full disk (or any OS fault) is one line naming ``path``, the old file intact."""
    with atomic.atomic_path(path, durable=True) as tmp, open(tmp, "wb") as f:
        out = _KeepsWriteError(f)
        try:
            torch.save({"format": FORMAT, **payload}, out)
        except RuntimeError:
            if out.error is not None:
                raise out.error from None
            raise


_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")  # a zip local file header: signature ... name length, extra length


def _verify_part(data: mmap.mmap, info: zipfile.ZipInfo, path: Path) -> None:
    """Check one part of the container, in place in the memory map (no copy of its bytes)."""
    header = _LOCAL_HEADER.unpack_from(data, info.header_offset)
    if header[0] != b"PK\x03\x04":
        raise DamagedCheckpoint(path, f"the header of its part '{info.filename}' is overwritten")
    start = info.header_offset + _LOCAL_HEADER.size + header[9] + header[10]
    with memoryview(data) as view, view[start : start + info.compress_size] as part:
        intact = info.compress_type == zipfile.ZIP_STORED and len(part) == info.compress_size and zlib.crc32(part) == info.CRC
    if not intact:
        raise DamagedCheckpoint(path, f"its part '{info.filename}' fails the CRC-32 written with it: the file changed after it was saved")


def verify(path: Path) -> None:
    """Check every part of a checkpoint's zip container against the CRC-32 written with it; raise
    ``DamagedCheckpoint`` naming the file and the first damaged part. Reads the whole file once (about
    2.5 GB/s from the page cache; docs/robustness.md)."""
    try:
        with zipfile.ZipFile(path) as z, open(path, "rb") as f:
            infos = z.infolist()
            if not infos:
                raise zipfile.BadZipFile("no parts")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                for info in infos:
                    _verify_part(data, info, path)
    except (zipfile.BadZipFile, struct.error, ValueError, EOFError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DamagedCheckpoint(path, f"truncated or overwritten: {first[:200]}", what="not a readable nmt checkpoint") from None
    except OSError as err:
        raise NmtError(f"{path}: cannot read ({err.strerror or err})") from None


def load(path: Path) -> dict[str, Any]:
    """Load a checkpoint on the CPU without executing pickled code, after verifying it (``verify``);
    one-line errors for bad files.

    Memory-mapped: tensors are read from disk when touched, so loading a training checkpoint for its
    weights does not hold its optimiser state in memory.
    """
    if not path.exists():
        raise NmtError(f"{path}: checkpoint not found")
    if path.is_dir():
        raise NmtError(f"{path} is a folder, not a checkpoint file")
    verify(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise NmtError(f"{path}: not a readable nmt checkpoint ({first[:200]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise NmtError(f"{path}: not an nmt checkpoint")
    return ckpt


def digest(vocab: torch.Tensor) -> str:
    """SHA-256 of a SentencePiece model held as a uint8 tensor: equal digests, same vocabulary."""
    return hashlib.sha256(vocab.numpy().tobytes()).hexdigest()


def vocab_digest(ckpt: dict[str, Any]) -> str:
    """SHA-256 of the SentencePiece model a checkpoint carries."""
    return digest(ckpt["vocab"])


def model_config(ckpt: dict[str, Any], path: Path) -> ModelConfig:
    try:
        return config_from_dict(ckpt["model_config"])
    except (TypeError, ValueError) as err:
        raise NmtError(f"{path}: model configuration not understood ({err})") from None


def load_model(path: Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> tuple[Transformer, dict[str, Any]]:
    """The model a checkpoint holds, in eval mode on ``device``, and the checkpoint's metadata (no tensors
    but the vocabulary)."""
    ckpt = load(path)
    model = Transformer(model_config(ckpt, path))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as err:
        raise NmtError(f"{path}: weights do not match its configuration ({str(err).splitlines()[0]})") from None
    meta = {k: v for k, v in ckpt.items() if k not in _TRAINING_STATE}
    return model.to(device=device, dtype=dtype).eval(), meta


def numbered(save_dir: Path) -> list[Path]:
    """Numbered checkpoints of a run folder, oldest update first."""
    found = [(int(m.group(1)), p) for p in save_dir.glob("checkpoint_*.pt") if (m := _NUMBERED.search(p.name))]
    return [p for _, p in sorted(found)]


def save_run(payload: dict[str, Any], save_dir: Path, update: int, numbered_copy: bool, best: bool, keep_last: int) -> None:
    """A run's saving policy: ``checkpoint_last.pt`` always; a numbered checkpoint when ``numbered_copy``
    (then only the newest ``keep_last`` are kept, 0 = all); ``checkpoint_best.pt`` when ``best``;
    ``checkpoint_ema.pt`` (the averaged weights, no optimiser) when the payload has an EMA."""
    if numbered_copy:
        newest = save_dir / f"checkpoint_{update}.pt"
        save(payload, newest)
        atomic.link_or_copy(newest, save_dir / LAST)
    else:
        newest = save_dir / LAST
        save(payload, newest)
    if best:
        atomic.link_or_copy(newest, save_dir / BEST)
    if "ema" in payload:
        ema = {k: v for k, v in payload.items() if k not in _TRAINING_STATE}
        save({**ema, "model": payload["ema"]}, save_dir / EMA)
    if numbered_copy and keep_last > 0:
        for old in numbered(save_dir)[:-keep_last]:
            with atomic.os_faults(old):
                old.unlink(missing_ok=True)


def average_last_of(run_dir: Path) -> int | None:
    """How many checkpoints the run's recipe averages (``[average] last``), from its newest checkpoint."""
    found = numbered(run_dir) or [p for p in (run_dir / LAST,) if p.exists()]
    if not found:
        return None
    return load(found[-1]).get("config", {}).get("average_last")


def to_average(inputs: list[Path], last: int | None = None) -> list[Path]:
    """The checkpoints ``nmt average`` averages: the files given, or, for one run folder, its newest ``last``
    numbered checkpoints (by default the number its recipe averages, ``[average] last``)."""
    if len(inputs) == 1 and inputs[0].is_dir():
        run_dir = inputs[0]
        count = last or average_last_of(run_dir)
        if not count:
            raise NmtError(f"{run_dir} has no checkpoint that says how many to average; give --last N")
        found = numbered(run_dir)
        if len(found) < count:
            raise NmtError(f"{run_dir} has {len(found)} numbered checkpoints, fewer than --last {count}")
        return found[-count:]
    if last is not None:
        raise NmtError("--last N takes exactly one run folder")
    for p in inputs:
        if p.is_dir():
            raise NmtError(f"{p} is a folder; give checkpoint files, or the folder alone")
    return inputs


def average(paths: list[Path], out: Path) -> dict[str, Any]:
    """Element-wise mean of the parameters of ``paths`` in float32, holding at most two models in memory.

    Refuses checkpoints of different architectures or vocabularies. The result keeps the configuration and
    vocabulary of the newest input and loses the optimiser state (it is for translation).
    """
    if not paths:
        raise NmtError("no checkpoints to average")
    total: dict[str, torch.Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    first: dict[str, Any] = {}
    last: dict[str, Any] = {}
    for i, path in enumerate(paths):
        ckpt = load(path)
        meta = {k: v for k, v in ckpt.items() if k not in _TRAINING_STATE}  # not a third model
        if i == 0:
            total = {k: v.detach().to(torch.float32).clone() for k, v in ckpt["model"].items()}
            dtypes = {k: v.dtype for k, v in ckpt["model"].items()}
            first = last = meta
            continue
        if model_config(ckpt, path) != model_config(first, paths[0]):
            raise NmtError(f"{path}: architecture differs from {paths[0]}; cannot average")
        if vocab_digest(ckpt) != vocab_digest(first):
            raise NmtError(f"{path}: vocabulary differs from {paths[0]}; cannot average")
        for k, v in ckpt["model"].items():
            total[k].add_(v.to(torch.float32))
        last = meta
        del ckpt
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
