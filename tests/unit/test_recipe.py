"""nmt.recipe and nmt.train.config: strict recipes, the layering of settings, and the settings derived from them."""

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from nmt.data.dataset import find_data
from nmt.decode.config import DecodeConfig
from nmt.recipe import load_recipe, run_config
from nmt.train.config import ARCH_DEFAULTS, RunConfig, TrainConfig, batch_plan, derive_update_freq, pair_dropout, resolve, to_plain
from nmt.train.launch import world_size
from nmt.errors import NmtError

REPO = Path(__file__).resolve().parents[2]


def recipe(tmp_path: Path, text: str) -> Path:
    """A recipe file holding ``text``."""
    path = tmp_path / "recipe.toml"
    path.write_text(text)
    return path


def recipe_error(tmp_path: Path, text: str) -> str:
    """The message ``load_recipe`` raises for a recipe of ``text``; it must name the recipe and be one line."""
    path = recipe(tmp_path, text)
    with pytest.raises(NmtError) as err:
        load_recipe(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    return message[len(f"{path}: "):]


FULL = """
description = "a test recipe"
data = "data-bin/x"
save_dir = "runs/x"
arch = "tiny"
gpus = 2

[model]
d_model = 64
dropout = 0.2

[train]
max_tokens = 2048
tokens_per_update = 8192
lr_schedule = "inverse_sqrt"
peak_lr = 5e-4
warmup = 100

[decode]
beam = 5
lenpen = 1  # an integer where a float is expected is fine

[average]
last = 3
"""


def test_a_full_recipe(tmp_path: Path) -> None:
    r = load_recipe(recipe(tmp_path, FULL))
    assert r == {
        "data": Path("data-bin/x"), "save_dir": Path("runs/x"), "arch": "tiny", "gpus": 2,
        "model": {"d_model": 64, "dropout": 0.2},
        "train": {"max_tokens": 2048, "tokens_per_update": 8192, "lr_schedule": "inverse_sqrt", "peak_lr": 5e-4, "warmup": 100},
        "decode": {"beam": 5, "lenpen": 1},
        "average_last": 3,
    }


def test_an_empty_recipe(tmp_path: Path) -> None:
    assert load_recipe(recipe(tmp_path, "")) == {"model": {}, "train": {}, "decode": {}}


@pytest.mark.parametrize("path", sorted((REPO / "recipes").glob("*.toml")), ids=lambda p: p.name)
def test_the_shipped_recipes_load(path: Path) -> None:
    r = load_recipe(path)
    assert run_config(r, data=Path("d")).arch == r.get("arch", "base")


@pytest.mark.parametrize("text, expected", [
    ('datta = "x"', "unknown key 'datta' in the recipe; did you mean 'data'?"),
    ("[train]\nmax_token = 1", "unknown key 'max_token' in [train]; did you mean 'max_tokens'?"),
    ("[decode]\nbeam_size = 1", "unknown key 'beam_size' in [decode]; did you mean 'beam'?"),
    ("[average]\nlst = 3", "unknown key 'lst' in [average]; did you mean 'last'?"),
    ("[model]\nvocab_size = 100", "unknown key 'vocab_size' in [model]; known keys: "),  # it comes from the data
    ("[train]\nzzz = 1", "unknown key 'zzz' in [train]; known keys: max_tokens, update_freq, "),
])
def test_unknown_keys_suggest_the_nearest(tmp_path: Path, text: str, expected: str) -> None:
    assert recipe_error(tmp_path, text).startswith(expected)


@pytest.mark.parametrize("text, expected", [
    ('[train]\nmax_tokens = "4096"', "[train] max_tokens = '4096' is not of type int"),
    ("[train]\nmax_tokens = true", "[train] max_tokens = True is not of type int"),  # TOML booleans are not numbers
    ("[train]\nlabel_smoothing = \"0.1\"", "[train] label_smoothing = '0.1' is not of type float"),
    ("[train]\ntokens_per_update = 1.5", "[train] tokens_per_update = 1.5 is not of type"),
    ("[train]\ncompile = 1", "[train] compile = 1 is not of type bool"),
    ("[decode]\nbeam = 2.5", "[decode] beam = 2.5 is not of type int"),
    ("[decode]\npenalty = 1", "[decode] penalty = 1 is not of type str"),
    ("[model]\nd_model = 512.0", "[model] d_model = 512.0 is not of type int"),
])
def test_wrong_types(tmp_path: Path, text: str, expected: str) -> None:
    assert recipe_error(tmp_path, text).startswith(expected)


@pytest.mark.parametrize("text, expected", [
    ('gpus = "two"', "gpus = 'two' is not of type int"),
    ("gpus = 2.5", "gpus = 2.5 is not of type int"),
    ("data = 5", "data = 5 is not of type str"),
    ('[average]\nlast = "x"', "[average] last = 'x' is not of type int"),
    ("[average]\nlast = 2.5", "[average] last = 2.5 is not of type int"),
    ('arch = ["base"]', "arch = ['base'] is not of type str"),
])
def test_wrong_types_outside_the_tables(tmp_path: Path, text: str, expected: str) -> None:
    assert recipe_error(tmp_path, text) == expected


@pytest.mark.parametrize("text, expected", [
    ('[decode]\npenalty = "x"', "--penalty must be one of gnmt, fairseq, not 'x'"),
    ("[decode]\nbeam = 0", "--beam must be at least 1, not 0"),
    ("[decode]\nbeam = 2\nnbest = 3", "--nbest 3 must be between 1 and --beam 2"),
    ('[train]\nlr_schedule = "cosine"', "lr_schedule must be 'noam' or 'inverse_sqrt', not 'cosine'"),
    ('[train]\nprecision = "fp8"', "precision must be auto, fp32, bf16 or fp16, not 'fp8'"),
    ("[train]\nwarmup = 0", "--warmup must be at least 1"),
    ('arch = "huge"', "arch 'huge' is not one of base, big, tiny"),
])
def test_bad_values(tmp_path: Path, text: str, expected: str) -> None:
    assert recipe_error(tmp_path, text) == expected


def test_unreadable_recipes(tmp_path: Path) -> None:
    assert recipe_error(tmp_path, "[train\nmax_tokens = 1").startswith("not valid TOML (")
    with pytest.raises(NmtError, match=rf"^{tmp_path / 'none.toml'}: recipe not found$"):
        load_recipe(tmp_path / "none.toml")


# ------------------------------------------------------------------------------------------ layering


def test_defaults_are_the_paper_settings() -> None:
    cfg = run_config(data=Path("d"))
    # The base preset's schedule (§5.2, §6.1) over the dataclass defaults.
    schedule = {"max_updates": 100_000, "save_every": 1500, "validate_every": 1500, "keep_last": 10}
    assert cfg == RunConfig(data=Path("d"), save_dir=Path("runs/base"), train=TrainConfig(**schedule))
    assert (cfg.train.max_tokens, cfg.train.warmup, cfg.train.label_smoothing, cfg.train.lr_schedule) == (4096, 4000, 0.1, "noam")
    assert (cfg.decode.beam, cfg.decode.lenpen, cfg.decode.penalty, cfg.decode.max_len_b) == (4, 0.6, "gnmt", 50)
    assert (cfg.average_last, cfg.gpus, cfg.arch) == (5, 0, "base")


def test_recipe_over_defaults_and_options_over_recipe(tmp_path: Path) -> None:
    r = load_recipe(recipe(tmp_path, FULL))
    cfg = run_config(r)
    assert cfg.data == Path("data-bin/x") and cfg.save_dir == Path("runs/x") and cfg.arch == "tiny"
    assert cfg.train.max_tokens == 2048 and cfg.train.warmup == 100 and cfg.train.adam_beta2 == 0.98  # untouched default
    assert cfg.decode.beam == 5 and cfg.decode.lenpen == 1.0 and cfg.average_last == 3 and cfg.gpus == 2
    assert cfg.model == {"d_model": 64, "dropout": 0.2}
    over = run_config(r, data=Path("other"), arch="base", save_dir=Path("s"), model={"dropout": 0.3, "heads": None},
                      train={"max_tokens": 1024, "warmup": None}, decode={"beam": 2, "lenpen": None}, gpus=1)
    assert over.data == Path("other") and over.save_dir == Path("s") and over.arch == "base"
    assert over.model == {"d_model": 64, "dropout": 0.3}  # merged key by key; None is an option left unset
    assert over.train.max_tokens == 1024 and over.train.warmup == 100
    assert over.decode.beam == 2 and over.decode.lenpen == 1.0
    assert over.gpus == 1


def test_cpu_forces_no_gpus(tmp_path: Path) -> None:
    r = load_recipe(recipe(tmp_path, FULL))
    assert run_config(r, cpu=True).gpus == 0 and run_config(r, gpus=4, cpu=True).gpus == 0
    assert run_config(r, gpus=0).gpus == 0  # an explicit 0 is an option given, not left unset


def test_save_dir_defaults_to_the_architecture() -> None:
    assert run_config(data=Path("d"), arch="big").save_dir == Path("runs/big")
    assert run_config({"arch": "tiny"}, data=Path("d")).save_dir == Path("runs/tiny")


def test_run_config_errors() -> None:
    with pytest.raises(NmtError, match="no data folder: give DATA or a --recipe that sets 'data'"):
        run_config({})
    with pytest.raises(NmtError, match="--arch must be one of base, big, tiny, not 'medium'"):
        run_config(data=Path("d"), arch="medium")
    with pytest.raises(NmtError, match="--max-tokens must be at least 1"):
        run_config(data=Path("d"), train={"max_tokens": 0})


# ------------------------------------------------------------------------------------------ derived


@pytest.mark.parametrize("tokens, max_tokens, world, expected", [
    (25000, 3125, 1, 8), (25000, 3125, 2, 4), (25000, 3125, 8, 1), (25000, 3125, 64, 1),
    (25000, 4096, 1, 6),  # 6.10 rounds to 6
    (25000, 4096, 3, 2),  # 2.03
    (27000, 4000, 1, 7),  # 6.75 rounds up: the nearest count, not the floor
    (10000, 4000, 1, 2),  # 2.5 rounds to even
    (100, 4096, 1, 1),  # never 0
])
def test_derive_update_freq(tokens: int, max_tokens: int, world: int, expected: int) -> None:
    assert derive_update_freq(tokens, max_tokens, world) == expected


def test_resolve_derives_update_freq_only_when_asked() -> None:
    cfg = run_config(data=Path("d"), train={"tokens_per_update": 25000, "max_tokens": 3125, "update_freq": 3})
    assert resolve(cfg, 1).train.update_freq == 8 and resolve(cfg, 8).train.update_freq == 1
    assert resolve(cfg, 1).train.max_tokens == 3125 and resolve(cfg, 1).decode == cfg.decode
    plain = run_config(data=Path("d"), train={"update_freq": 3, "pad_multiple": 8})
    assert resolve(plain, 8) == plain and resolve(plain, 8).train.update_freq == 3


def test_world_size(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert world_size(run_config(data=Path("d"))) == 1
    assert world_size(run_config(data=Path("d"), gpus=4)) == 4
    assert world_size(run_config(data=Path("d"), cpu=True, nproc=3)) == 3
    assert world_size(run_config(data=Path("d"), nproc=3)) == 1  # --nproc is for CPU runs
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "16")
    assert world_size(run_config(data=Path("d"), gpus=4)) == 4  # all three variables, or it is not torchrun
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert world_size(run_config(data=Path("d"), gpus=4)) == 16


# ------------------------------------------------------------------------------------------ plain data


def test_to_plain_is_json_and_complete(tmp_path: Path) -> None:
    cfg = run_config(load_recipe(recipe(tmp_path, FULL)), cpu=True, nproc=2)
    plain = to_plain(cfg)
    assert json.loads(json.dumps(plain)) == plain
    assert plain["data"] == "data-bin/x" and plain["save_dir"] == "runs/x"
    assert plain["train"] == asdict(cfg.train) and plain["decode"] == asdict(cfg.decode)
    assert plain["average_last"] == 3 and plain["model"] == {"d_model": 64, "dropout": 0.2}
    rebuilt = RunConfig(**{**plain, "data": Path(plain["data"]), "save_dir": Path(plain["save_dir"]),
                           "train": TrainConfig(**plain["train"]), "decode": DecodeConfig(**plain["decode"])})
    assert rebuilt == cfg


@pytest.mark.parametrize("arch,updates,spacing,average,keep", [("base", 100_000, 1500, 5, 10), ("big", 300_000, 600, 20, 25)])
def test_an_architecture_brings_the_papers_schedule(arch: str, updates: int, spacing: int, average: int, keep: int) -> None:
    """`nmt train --arch big` without a recipe: 300k updates, a numbered checkpoint every ≈10 paper-minutes
    counted in updates, the last 20 averaged, and only as many kept as averaging needs plus a margin."""
    cfg = run_config(data=Path("d"), arch=arch)
    t = cfg.train
    assert (t.max_updates, t.save_every, t.validate_every, cfg.average_last, t.keep_last) == (updates, spacing, spacing, average, keep)
    assert keep >= average
    # A recipe or an option still wins over the preset.
    assert run_config({"train": {"max_updates": 7}}, data=Path("d"), arch=arch).train.max_updates == 7
    assert run_config(data=Path("d"), arch=arch, train={"keep_last": 0}).train.keep_last == 0  # 0 keeps all
    assert set(ARCH_DEFAULTS) == {"base", "big", "tiny"}


def test_keeping_fewer_checkpoints_than_averaged_is_refused() -> None:
    with pytest.raises(NmtError, match=r"--keep-last 3 keeps fewer numbered checkpoints than the run averages \(\[average\] last = 5\)"):
        run_config(data=Path("d"), train={"keep_last": 3})
    assert run_config({"average_last": 3}, data=Path("d"), train={"keep_last": 3}).train.keep_last == 3


def test_big_dropout_follows_the_language_pair() -> None:
    big = run_config(data=Path("d"), arch="big")
    fr, note = pair_dropout(big, "en", "fr")
    assert fr.model["dropout"] == 0.1 and "0.1 for en-fr" in note  # §6.1
    de, _ = pair_dropout(big, "de", "en")
    assert de.model["dropout"] == 0.3  # Table 3's big EN-DE
    other, note = pair_dropout(big, "en", "cs")
    assert "dropout" not in other.model and "set --dropout" in note  # the preset's 0.3, with a warning
    chosen = run_config(data=Path("d"), arch="big", model={"dropout": 0.2})
    assert pair_dropout(chosen, "en", "fr") == (chosen, None)  # the user's choice stands
    base = run_config(data=Path("d"))
    assert pair_dropout(base, "en", "fr") == (base, None)


def test_data_found_in_data_bin(tmp_path: Path) -> None:
    root = tmp_path / "data-bin"
    with pytest.raises(NmtError, match="no prepared corpus in .*; run 'nmt prepare CORPUS' first"):
        find_data(root)
    (root / "wmt14-en-de").mkdir(parents=True)
    (root / "wmt14-en-de" / "manifest.json").write_text("{}")
    (root / "not-prepared").mkdir()
    assert find_data(root) == root / "wmt14-en-de"
    (root / "gettext-en-de").mkdir()
    (root / "gettext-en-de" / "manifest.json").write_text("{}")
    with pytest.raises(NmtError, match=r"holds 2 prepared corpora \(.*gettext-en-de, .*wmt14-en-de\); name one"):
        find_data(root)


def test_batch_plan_names_what_cuts_the_batches() -> None:
    cfg = resolve(run_config(data=Path("d"), train={"max_tokens": 2048}), 1)
    assert batch_plan(cfg, 1000) == {"max_tokens": 2048, "pad_multiple": 1, "seed": 1, "train_pairs": 1000}
    assert batch_plan(resolve(cfg, 8), 1000) == batch_plan(cfg, 1000)  # the device count is not part of it


def test_padding_multiple_follows_the_device() -> None:
    """Multiples of 8 feed tensor cores on GPUs; on a CPU the extra padding would only be extra work."""
    cfg = run_config(data=Path("d"))
    assert cfg.train.pad_multiple is None
    assert resolve(cfg, 1).train.pad_multiple == 1 and resolve(cfg, 1, cuda=True).train.pad_multiple == 8
    assert resolve(run_config(data=Path("d"), train={"pad_multiple": 16}), 1).train.pad_multiple == 16


def test_a_recipe_extends_another(tmp_path: Path) -> None:
    (tmp_path / "base.toml").write_text('data = "d"\narch = "tiny"\n[model]\nheads = 4\ndropout = 0.1\n[train]\nwarmup = 100\n[average]\nlast = 3\n')
    (tmp_path / "row.toml").write_text('extends = "base.toml"\nsave_dir = "runs/row"\n[model]\nheads = 2\n[train]\nlabel_smoothing = 0.0\n')
    row = load_recipe(tmp_path / "row.toml")
    assert row["model"] == {"heads": 2, "dropout": 0.1} and row["train"] == {"warmup": 100, "label_smoothing": 0.0}
    assert row["data"] == Path("d") and row["save_dir"] == Path("runs/row") and row["arch"] == "tiny" and row["average_last"] == 3
    (tmp_path / "loop.toml").write_text('extends = "loop2.toml"\n')
    (tmp_path / "loop2.toml").write_text('extends = "loop.toml"\n')
    with pytest.raises(NmtError, match="extends loop.toml, which extends it back"):
        load_recipe(tmp_path / "loop.toml")
    (tmp_path / "bad.toml").write_text('extends = "missing.toml"\n')
    with pytest.raises(NmtError, match="missing.toml: recipe not found"):
        load_recipe(tmp_path / "bad.toml")
