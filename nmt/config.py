"""Typed configuration, strict TOML recipes, and the one place where settings are merged and derived.

A recipe has top-level ``data``, ``arch``, ``save_dir`` and ``gpus``, and the tables ``[model]`` (fields of
``ModelConfig``), ``[train]`` (``TrainConfig``), ``[decode]`` (``DecodeConfig``) and ``[average]``.
Settings are layered, later layers winning: the dataclass defaults, the architecture preset, the recipe,
the command line. Derived settings (``update_freq`` from ``tokens_per_update`` and the device count) are
resolved here too, so library code receives a finished configuration; it goes into every checkpoint.
"""

from __future__ import annotations

import difflib
import os
import tomllib
import types
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from nmt.decode.penalty import PENALTIES
from nmt.errors import NmtError
from nmt.model.config import PRESETS, ModelConfig


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
    pad_multiple: int | None = None  # pad batches to a multiple of this; None: 8 on GPUs (tensor cores), 1 on CPUs
    valid_bleu: int = 0  # at each validation, beam-search this many dev sentences and report sacreBLEU

    def __post_init__(self) -> None:
        if self.lr_schedule not in ("noam", "inverse_sqrt"):
            raise NmtError(f"lr_schedule must be 'noam' or 'inverse_sqrt', not '{self.lr_schedule}'")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise NmtError(f"precision must be auto, fp32, bf16 or fp16, not '{self.precision}'")
        for name in ("max_tokens", "update_freq", "warmup"):
            if getattr(self, name) < 1:
                raise NmtError(f"--{name.replace('_', '-')} must be at least 1")


STOPS = ("bound", "beam")


@dataclass(frozen=True)
class DecodeConfig:
    """Beam search settings, shared by ``nmt translate``, validation BLEU and the recipes. Defaults are §6.1's
    but for the stopping rule, which is the peers' (the paper recipes ask for the paper's)."""

    beam: int = 4
    lenpen: float = 0.6  # α
    penalty: str = "gnmt"  # "gnmt": ((5+|Y|)/6)^α (paper); "fairseq": |Y|^α
    max_len_a: float = 1.0  # output length limit a·|source| + b (paper: |source| + 50)
    max_len_b: int = 50
    nbest: int = 1
    max_tokens: int = 4096  # source tokens per batch, before the beam multiplies them
    # When a sentence's search ends. "beam": once `beam` hypotheses have finished, as fairseq, Marian and
    # CTranslate2 do. "bound": once no live hypothesis can beat the n-th best finished one (tensor2tensor's
    # bound; exact, and the paper's), which must assume the penalty of the longest possible output and so
    # searches on long after the answer is settled: 1.7-3.4x the time for a few changed lines
    # (docs/performance.md). The default is what users of the peers expect; the paper recipes set "bound".
    stop: str = "beam"

    def __post_init__(self) -> None:
        if self.stop not in STOPS:
            raise NmtError(f"--stop must be one of {', '.join(STOPS)}, not '{self.stop}'")
        if self.penalty not in PENALTIES:
            raise NmtError(f"--penalty must be one of {', '.join(PENALTIES)}, not '{self.penalty}'")
        if self.beam < 1:
            raise NmtError(f"--beam must be at least 1, not {self.beam}")
        if not 1 <= self.nbest <= self.beam:
            raise NmtError(f"--nbest {self.nbest} must be between 1 and --beam {self.beam}")
        if self.max_tokens < 1:
            raise NmtError(f"--max-tokens must be at least 1, not {self.max_tokens}")
        if self.max_len_a < 0 or self.max_len_b < 0 or (self.max_len_a == 0 and self.max_len_b == 0):
            raise NmtError(f"--max-len-a {self.max_len_a} and --max-len-b {self.max_len_b} leave no room for an output")

    def max_output_len(self, n_src: int, max_positions: int) -> int:
        """Most output tokens, EOS included, for a source of ``n_src`` ids (EOS excluded): a·|source| + b with
        both lengths counting their EOS, as tensor2tensor's decode_length = input length + 50 does, so
        that the paper's rule lets through |source| + 50 real tokens; capped by the model's positions."""
        limit = int(self.max_len_a * (n_src + 1) + self.max_len_b)
        return max(1, min(limit, max_positions))


@dataclass(frozen=True)
class RunConfig:
    """A training run: where the data and the run folder are, the architecture, and every setting."""

    data: Path
    save_dir: Path
    arch: str = "base"
    model: dict[str, Any] = field(default_factory=dict)  # overrides of the preset's ModelConfig fields
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    average_last: int = 5  # checkpoints `nmt average RUN` takes by default
    gpus: int = 0
    cpu: bool = False
    nproc: int = 1


# The paper's schedule for each size, what a run gets without a recipe (§5.2, §6.1, paper-recipe §2.4):
# updates; numbered checkpoints every ≈10 minutes of the paper's 8-P100 step time (base 0.4 s, big 1.0 s),
# counted in updates so the averaging window does not depend on the hardware; the number averaged; and
# the numbered checkpoints kept (what averaging needs plus a margin, not every one: 2.6 GB each for big).
ARCH_DEFAULTS: dict[str, dict[str, Any]] = {
    "base": {"train": {"max_updates": 100_000, "save_every": 1500, "validate_every": 1500, "keep_last": 10}, "average_last": 5},
    "big": {"train": {"max_updates": 300_000, "save_every": 600, "validate_every": 600, "keep_last": 25}, "average_last": 20},
    "tiny": {"train": {"max_updates": 20_000, "save_every": 1000, "validate_every": 1000, "keep_last": 10}, "average_last": 5},
}
# Big's P_drop follows the language pair (§6.1): 0.3 for EN-DE (4.5M pairs), 0.1 for EN-FR (36M pairs).
BIG_DROPOUT = {frozenset(("en", "de")): 0.3, frozenset(("en", "fr")): 0.1}


# ------------------------------------------------------------------------------------------ recipes

RECIPE_KEYS = ["extends", "data", "save_dir", "arch", "model", "train", "decode", "average", "gpus", "description"]


def _check_keys(table: dict, allowed: list[str], where: str, source: str) -> None:
    for key in table:
        if key not in allowed:
            near = difflib.get_close_matches(key, allowed, n=1)
            hint = f"; did you mean '{near[0]}'?" if near else f"; known keys: {', '.join(allowed)}"
            raise NmtError(f"{source}: unknown key '{key}' in {where}{hint}")


def _accepts(annotation: Any, value: Any) -> bool:
    """Whether a TOML value fits a dataclass field's type (ints are accepted for floats, not bools for ints)."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return any(_accepts(a, value) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation in (str, bool):
        return isinstance(value, annotation)
    return True


def check_table(cls: type, values: dict[str, Any], where: str, source: str, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """``values`` checked against the fields of dataclass ``cls``: known keys, fitting types."""
    names = [f.name for f in fields(cls) if f.name not in exclude]
    _check_keys(values, names, where, source)
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        if not _accepts(hints[key], value):
            raise NmtError(f"{source}: {where} {key} = {value!r} is not of type {getattr(hints[key], '__name__', hints[key])}")
    return dict(values)


def _typed(value: Any, annotation: type, where: str, source: str) -> Any:
    """``value`` if it fits ``annotation``, else an error naming the recipe and the key."""
    if not _accepts(annotation, value):
        raise NmtError(f"{source}: {where} = {value!r} is not of type {annotation.__name__}")
    return value


def load_recipe(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a recipe strictly: unknown keys (with the nearest known one suggested) and wrong types are errors.

    ``extends = "other.toml"`` (a path relative to the recipe) starts from that recipe: this one's keys
    replace its keys, table by table (Table 3's rows are the base recipe and a change or two). Returns the
    recipe's values as plain tables; ``run_config`` layers them over the defaults.
    """
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise NmtError(f"{path}: recipe not found") from None
    except tomllib.TOMLDecodeError as err:
        raise NmtError(f"{path}: not valid TOML ({err})") from None
    source = str(path)
    _check_keys(raw, RECIPE_KEYS, "the recipe", source)
    out: dict[str, Any] = {"model": {}, "train": {}, "decode": {}}
    if "extends" in raw:
        parent = (path.parent / _typed(raw["extends"], str, "extends", source)).resolve()
        if parent in _seen or parent == path.resolve():
            raise NmtError(f"{source}: extends {raw['extends']}, which extends it back")
        out = load_recipe(parent, (*_seen, path.resolve()))
    for key in ("data", "save_dir"):
        if key in raw:
            out[key] = Path(_typed(raw[key], str, key, source))
    if "arch" in raw:
        if _typed(raw["arch"], str, "arch", source) not in PRESETS:
            raise NmtError(f"{source}: arch '{raw['arch']}' is not one of {', '.join(PRESETS)}")
        out["arch"] = raw["arch"]
    if "gpus" in raw:
        out["gpus"] = _typed(raw["gpus"], int, "gpus", source)
    out["model"] = {**out["model"], **check_table(ModelConfig, raw.get("model", {}), "[model]", source, exclude=("vocab_size",))}
    out["train"] = {**out["train"], **check_table(TrainConfig, raw.get("train", {}), "[train]", source)}
    out["decode"] = {**out["decode"], **check_table(DecodeConfig, raw.get("decode", {}), "[decode]", source)}
    _check_keys(raw.get("average", {}), ["last"], "[average]", source)
    if "last" in raw.get("average", {}):
        out["average_last"] = _typed(raw["average"]["last"], int, "[average] last", source)
    try:  # validate the values themselves once, here, with the recipe named
        TrainConfig(**out["train"])
        DecodeConfig(**out["decode"])
    except NmtError as err:
        raise NmtError(f"{source}: {err}") from None
    return out


def run_config(
    recipe: dict[str, Any] | None = None, *, data: Path | None = None, arch: str | None = None, save_dir: Path | None = None,
    model: dict[str, Any] | None = None, train: dict[str, Any] | None = None, decode: dict[str, Any] | None = None,
    gpus: int | None = None, cpu: bool = False, nproc: int = 1,
) -> RunConfig:
    """The run's configuration: defaults < architecture preset < ``recipe`` < the keyword arguments given
    (command-line options; ``None`` values are options left unset)."""
    recipe = recipe or {}
    data = data or recipe.get("data")
    if data is None:
        raise NmtError("no data folder: give DATA or a --recipe that sets 'data'")
    chosen = arch or recipe.get("arch", "base")
    if chosen not in PRESETS:
        raise NmtError(f"--arch must be one of {', '.join(PRESETS)}, not '{chosen}'")
    preset = ARCH_DEFAULTS[chosen]
    given = lambda d: {k: v for k, v in (d or {}).items() if v is not None}  # noqa: E731
    cfg = RunConfig(
        data=Path(data),
        save_dir=Path(save_dir or recipe.get("save_dir") or Path("runs") / chosen),
        arch=chosen,
        model={**recipe.get("model", {}), **given(model)},
        train=TrainConfig(**{**preset["train"], **recipe.get("train", {}), **given(train)}),
        decode=DecodeConfig(**{**recipe.get("decode", {}), **given(decode)}),
        average_last=recipe.get("average_last", preset["average_last"]),
        gpus=0 if cpu else gpus if gpus is not None else recipe.get("gpus", 0),
        cpu=cpu,
        nproc=nproc,
    )
    keep = cfg.train.keep_last
    if 0 < keep < cfg.average_last:
        raise NmtError(f"--keep-last {keep} keeps fewer numbered checkpoints than the run averages ([average] last = {cfg.average_last})")
    return cfg


def find_data(root: Path = Path("data-bin")) -> Path:
    """The one prepared corpus under ``root``, for ``nmt train`` without DATA; an error listing them otherwise."""
    found = sorted(p.parent for p in root.glob("*/manifest.json")) if root.is_dir() else []
    if len(found) == 1:
        return found[0]
    if not found:
        raise NmtError(f"no DATA given and no prepared corpus in {root}/; run 'nmt prepare CORPUS' first, or give DATA")
    raise NmtError(f"no DATA given and {root}/ holds {len(found)} prepared corpora ({', '.join(str(p) for p in found)}); name one")


def pair_dropout(cfg: RunConfig, src: str, tgt: str) -> tuple[RunConfig, str | None]:
    """Big's P_drop by language pair when neither the recipe nor the command line set it; and a note saying so."""
    if cfg.arch != "big" or "dropout" in cfg.model:
        return cfg, None
    rate = BIG_DROPOUT.get(frozenset((src, tgt)))
    if rate is None:
        return cfg, (f"dropout {PRESETS['big'].dropout} for {src}-{tgt}: the paper used 0.3 for EN-DE (4.5M pairs) and 0.1 for "
                     "EN-FR (36M pairs); the more data, the less dropout: set --dropout to choose")
    return replace(cfg, model={**cfg.model, "dropout": rate}), f"dropout {rate} for {src}-{tgt} (the paper's big {src.upper()}-{tgt.upper()} setting)"


# ------------------------------------------------------------------------------------------ derived


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def world_size(cfg: RunConfig) -> int:
    """Processes the run will have: torchrun's environment, else --gpus, else --nproc on the CPU."""
    if launched_by_torchrun():
        return int(os.environ["WORLD_SIZE"])
    if cfg.gpus:
        return cfg.gpus
    return cfg.nproc if cfg.cpu else 1


def derive_update_freq(tokens_per_update: int, max_tokens: int, world: int) -> int:
    """Batches each device accumulates so that world × max_tokens × update_freq ≈ tokens_per_update."""
    return max(1, round(tokens_per_update / (max_tokens * world)))


def resolve(cfg: RunConfig, world: int, cuda: bool = False) -> RunConfig:
    """Settings derived from others for a run of ``world`` processes, on GPUs when ``cuda``: ``update_freq``
    from ``tokens_per_update``, and the padding multiple (8 for tensor cores; on a CPU padding is only waste)."""
    t = cfg.train
    if t.tokens_per_update:
        t = replace(t, update_freq=derive_update_freq(t.tokens_per_update, t.max_tokens, world))
    if t.pad_multiple is None:
        t = replace(t, pad_multiple=8 if cuda else 1)
    return replace(cfg, train=t)


def device_plan(tokens_per_update: int, max_tokens: int, counts: tuple[int, ...] = (1, 2, 4, 8, 64)) -> dict[str, str]:
    """How ``tokens_per_update`` is reached on each device count: update_freq and token slots per update, and
    the --max-tokens to use where one batch per device is already too many (what ``--dry-run`` prints)."""
    plan = {}
    for n in counts:
        uf = derive_update_freq(tokens_per_update, max_tokens, n)
        tokens = uf * n * max_tokens
        note = "" if abs(tokens - tokens_per_update) <= 0.25 * tokens_per_update else f" (use --max-tokens {tokens_per_update // n})"
        plan[f"{n} devices"] = f"update_freq {uf}, {tokens:,} tokens{note}"
    return plan


def batch_plan(cfg: RunConfig, train_pairs: int) -> dict[str, int]:
    """What an epoch's batch list depends on: a resumed run with another plan would skip or repeat data."""
    t = cfg.train
    return {"max_tokens": t.max_tokens, "pad_multiple": t.pad_multiple, "seed": t.seed, "train_pairs": train_pairs}


# ------------------------------------------------------------------------------------------ plain data


def to_plain(cfg: RunConfig) -> dict[str, Any]:
    """The configuration as plain data (strings, numbers, dicts) for JSON and checkpoints."""
    plain = asdict(cfg)
    for key in ("data", "save_dir"):
        plain[key] = str(plain[key])
    return plain


def decode_config(plain_run: dict[str, Any] | None, **overrides: Any) -> DecodeConfig:
    """The ``DecodeConfig`` a checkpoint's run configuration carries, with ``overrides`` that are not None on top."""
    stored = dict((plain_run or {}).get("decode", {}))
    known = {f.name for f in fields(DecodeConfig)}
    values = {k: v for k, v in stored.items() if k in known}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return DecodeConfig(**values)
