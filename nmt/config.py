"""Typed configuration for training runs, and strict TOML recipes (unknown keys are errors).

A recipe has top-level ``data``, ``arch`` and ``save_dir``, and the tables ``[model]`` (fields of
``ModelConfig``), ``[train]`` (``TrainConfig``), ``[decode]`` (``DecodeConfig``) and ``[average]``.
Command-line options override recipe values; the resolved configuration goes into every checkpoint.
"""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from nmt.errors import NmtError
from nmt.model.config import ModelConfig


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``nmt train`` does besides the architecture. Defaults are the paper's (§5)."""

    max_tokens: int = 4096  # per device and batch, padded slots of the longer side (fairseq's convention)
    update_freq: int = 1  # batches accumulated per device and update
    tokens_per_update: int | None = None  # if set, derive update_freq from devices × max_tokens
    label_smoothing: float = 0.1
    lr_schedule: str = "noam"  # "noam" (§5.3) or "inverse_sqrt" (fairseq)
    lr_scale: float = 1.0  # noam: factor on the paper's formula
    peak_lr: float = 7e-4  # inverse_sqrt: the peak
    warmup: int = 4000
    warmup_init_lr: float = 1e-7
    adam_beta1: float = 0.9
    adam_beta2: float = 0.98
    adam_eps: float = 1e-9
    weight_decay: float = 0.0
    clip_norm: float = 0.0
    max_updates: int = 100_000
    max_epochs: int = 0  # 0 = no limit
    max_time: float = 0.0  # seconds; 0 = no limit
    validate_every: int = 1000
    save_every: int = 1000
    save_minutes: float = 10.0  # the paper saved every 10 minutes (§6.1)
    keep_last: int = 0  # numbered checkpoints kept; 0 keeps all
    log_every: int = 100
    seed: int = 1
    precision: str = "auto"  # auto (bf16 on capable GPUs, else fp32), fp32, bf16, fp16
    compile: bool = False
    ema_decay: float = 0.0
    max_nonfinite: int = 10  # consecutive skipped updates before the run stops
    pad_multiple: int = 8
    valid_bleu: int = 0  # at each validation, beam-search this many dev sentences and report sacreBLEU

    def __post_init__(self) -> None:
        if self.lr_schedule not in ("noam", "inverse_sqrt"):
            raise NmtError(f"lr_schedule must be 'noam' or 'inverse_sqrt', not '{self.lr_schedule}'")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise NmtError(f"precision must be auto, fp32, bf16 or fp16, not '{self.precision}'")
        for name in ("max_tokens", "update_freq", "warmup"):
            if getattr(self, name) < 1:
                raise NmtError(f"--{name.replace('_', '-')} must be at least 1")


@dataclass(frozen=True)
class DecodeConfig:
    beam: int = 4
    lenpen: float = 0.6
    penalty: str = "gnmt"  # "gnmt": ((5+|Y|)/6)^α (paper); "fairseq": |Y|^α
    max_len_a: float = 1.0
    max_len_b: int = 50
    max_tokens: int = 4096


@dataclass(frozen=True)
class RunConfig:
    data: Path
    save_dir: Path
    arch: str = "base"
    model: dict[str, Any] = field(default_factory=dict)  # overrides of ModelConfig fields
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    average_last: int = 5
    gpus: int = 0
    cpu: bool = False
    nproc: int = 1


def _check_keys(table: dict, allowed: list[str], where: str, source: str) -> None:
    for key in table:
        if key not in allowed:
            near = difflib.get_close_matches(key, allowed, n=1)
            hint = f"; did you mean '{near[0]}'?" if near else f"; known keys: {', '.join(allowed)}"
            raise NmtError(f"{source}: unknown key '{key}' in {where}{hint}")


def _typed(cls: type, values: dict, where: str, source: str) -> Any:
    _check_keys(values, [f.name for f in fields(cls)], where, source)
    try:
        return cls(**values)
    except TypeError as err:
        raise NmtError(f"{source}: {where}: {err}") from None


def load_recipe(path: Path) -> dict[str, Any]:
    """Read a recipe strictly; returns the keyword arguments of ``RunConfig`` it sets."""
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise NmtError(f"{path}: recipe not found") from None
    except tomllib.TOMLDecodeError as err:
        raise NmtError(f"{path}: not valid TOML ({err})") from None
    top = ["data", "save_dir", "arch", "model", "train", "decode", "average", "gpus", "description"]
    _check_keys(raw, top, "the recipe", str(path))
    out: dict[str, Any] = {}
    for key in ("data", "save_dir"):
        if key in raw:
            out[key] = Path(raw[key])
    if "arch" in raw:
        out["arch"] = raw["arch"]
    if "gpus" in raw:
        out["gpus"] = int(raw["gpus"])
    if "model" in raw:
        _check_keys(raw["model"], [f.name for f in fields(ModelConfig) if f.name != "vocab_size"], "[model]", str(path))
        out["model"] = dict(raw["model"])
    if "train" in raw:
        out["train"] = _typed(TrainConfig, raw["train"], "[train]", str(path))
    if "decode" in raw:
        out["decode"] = _typed(DecodeConfig, raw["decode"], "[decode]", str(path))
    if "average" in raw:
        _check_keys(raw["average"], ["last"], "[average]", str(path))
        out["average_last"] = int(raw["average"]["last"])
    return out


def override(cfg: Any, **values: Any) -> Any:
    """``dataclasses.replace`` with the values that are not None (command-line options left unset)."""
    given = {k: v for k, v in values.items() if v is not None}
    return replace(cfg, **given) if given else cfg


def to_plain(cfg: RunConfig) -> dict[str, Any]:
    """The configuration as plain data (strings, numbers, dicts) for JSON and checkpoints."""
    plain = asdict(cfg)
    for key in ("data", "save_dir"):
        plain[key] = str(plain[key])
    return plain
