"""Recipes: strict TOML files, and the one place where settings are layered into a ``RunConfig``.

A recipe has top-level ``data``, ``arch``, ``save_dir`` and ``gpus``, and the tables ``[model]`` (fields of
``ModelConfig``), ``[train]`` (``TrainConfig``), ``[decode]`` (``DecodeConfig``) and ``[average]``.
Settings are layered, later layers winning: the dataclass defaults, the architecture's schedule, the
recipe, the command line.
"""

from __future__ import annotations

import difflib
import tomllib
import types
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any

from nmt.decode.config import DecodeConfig
from nmt.errors import NmtError
from nmt.model.config import PRESETS, ModelConfig
from nmt.train.config import ARCH_DEFAULTS, RunConfig, TrainConfig

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
    gpus: int | None = None, cpu: bool = False, nproc: int = 1, resume_from: Path | None = None,
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
        resume_from=resume_from,
    )
    keep = cfg.train.keep_last
    if 0 < keep < cfg.average_last:
        raise NmtError(f"--keep-last {keep} keeps fewer numbered checkpoints than the run averages ([average] last = {cfg.average_last})")
    return cfg
