"""A training run's settings: ``TrainConfig`` (everything besides the architecture, defaults the paper's), the
paper's schedule for each architecture, ``RunConfig`` (a whole run), and the settings derived from them
for a given number of devices. Recipes and the command line build a ``RunConfig`` (``nmt.recipe``); it goes
into every checkpoint as plain data (``to_plain``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from nmt.decode.config import DecodeConfig
from nmt.errors import NmtError
from nmt.model.config import PRESETS

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
    # Each batch's sentences packed into one row per side instead of padded rows (nmt.data.batching): the same
    # batches and updates, with the padding's computation left out. Off by default: on CPUs the packed
    # row's attention masks cost more than the padding saves (docs/performance.md); on GPUs the
    # variable-length flash kernel computes it (nmt.kernels.varlen), to be measured there.
    packing: bool = False

    def __post_init__(self) -> None:
        if self.lr_schedule not in ("noam", "inverse_sqrt"):
            raise NmtError(f"lr_schedule must be 'noam' or 'inverse_sqrt', not '{self.lr_schedule}'")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise NmtError(f"precision must be auto, fp32, bf16 or fp16, not '{self.precision}'")
        for name in ("max_tokens", "update_freq", "warmup"):
            if getattr(self, name) < 1:
                raise NmtError(f"--{name.replace('_', '-')} must be at least 1")


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
    # Continue from this checkpoint, or from the newest intact checkpoint of this run folder, instead of
    # save_dir's checkpoint_last.pt (which a damaged file there otherwise stops: nmt.train.resume.starting_point).
    resume_from: Path | None = None


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


def pair_dropout(cfg: RunConfig, src: str, tgt: str) -> tuple[RunConfig, str | None]:
    """Big's P_drop by language pair when neither the recipe nor the command line set it; and a note saying so."""
    if cfg.arch != "big" or "dropout" in cfg.model:
        return cfg, None
    rate = BIG_DROPOUT.get(frozenset((src, tgt)))
    if rate is None:
        return cfg, (f"dropout {PRESETS['big'].dropout} for {src}-{tgt}: the paper used 0.3 for EN-DE (4.5M pairs) and 0.1 for "
                     "EN-FR (36M pairs); the more data, the less dropout: set --dropout to choose")
    return replace(cfg, model={**cfg.model, "dropout": rate}), f"dropout {rate} for {src}-{tgt} (the paper's big {src.upper()}-{tgt.upper()} setting)"


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


def to_plain(cfg: RunConfig) -> dict[str, Any]:
    """The configuration as plain data (strings, numbers, dicts) for JSON and checkpoints."""
    plain = asdict(cfg)
    for key in ("data", "save_dir", "resume_from"):
        plain[key] = None if plain[key] is None else str(plain[key])
    return plain
