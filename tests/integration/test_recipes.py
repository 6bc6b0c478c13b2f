"""Every shipped recipe parses, builds its model, and its dry run reports the paper's sizes."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nmt.recipe import load_recipe
from nmt.train.config import device_plan
from nmt.data.binarize import TokenWriter
from nmt.model.config import model_config, total_parameters

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "recipes").glob("*.toml"))
PAPER = {  # vocabulary (§5.1) → parameters with tied embeddings (docs/architecture.md)
    "wmt14-en-de-base": (37000, 63_082_496), "wmt14-en-de-big": (37000, 214_245_376),
    "wmt14-en-fr-base": (32000, 60_522_496), "wmt14-en-fr-big": (32000, 209_125_376),
}


def test_all_recipes_parse_and_build() -> None:
    assert {p.stem for p in RECIPES} >= set(PAPER) | {"gettext-en-de-tiny"}
    for path in RECIPES:
        recipe = load_recipe(path)
        cfg = model_config(recipe["arch"], vocab_size=1000, **recipe.get("model", {}))
        assert cfg.d_model in (128, 512, 1024)
        if path.stem in PAPER:
            assert recipe["train"]["tokens_per_update"] == 32768 and recipe["train"]["warmup"] == 4000
            assert recipe["decode"]["beam"] == 4 and recipe["decode"]["lenpen"] == 0.6 and recipe["decode"]["max_len_b"] == 50
            assert recipe["decode"]["stop"] == "bound"  # the paper's exact search, not the peers' (the default)
            assert recipe["average_last"] == (5 if "base" in path.stem else 20)
            assert recipe["model"]["dropout"] == (0.3 if path.stem == "wmt14-en-de-big" else 0.1)
            # The averaging window by updates at the paper's 10-minute spacing, whatever the hardware.
            assert recipe["train"]["save_every"] == (1500 if "base" in path.stem else 600)
        keep = recipe["train"].get("keep_last", 0)
        assert keep == 0 or keep >= recipe.get("average_last", 5), path


def wmt_shaped(dest: Path, vocab: int, spm_from: Path) -> Path:
    """A prepared dataset with a WMT-sized vocabulary: 200 random sentence pairs of 5-60 tokens."""
    dest.mkdir(parents=True)
    rng = np.random.default_rng(0)
    splits = {}
    for split in ("train", "valid"):
        writers = [TokenWriter(dest / f"{split}.{lang}", "uint16") for lang in ("en", "xx")]
        for w in writers:
            w.add_many([rng.integers(4, vocab, rng.integers(5, 60)).astype(np.int32) for _ in range(200)])
            w.commit()
        splits[split] = {"pairs": 200, "dropped": {}, "src_tokens": writers[0].tokens, "tgt_tokens": writers[1].tokens}
    shutil.copyfile(spm_from / "spm.model", dest / "spm.model")
    manifest = {"corpus": "synthetic", "src": "en", "tgt": "xx", "dtype": "uint16", "splits": splits,
                "vocab": {"size": vocab}, "normalisation": ""}
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest


@pytest.mark.parametrize("name", sorted(PAPER))
def test_every_paper_recipe_keeps_the_papers_batch_on_any_device_count(name: str) -> None:
    """What the dry run prints about devices, for all four rows (the dry run itself is run for the base rows)."""
    vocab, params = PAPER[name]
    recipe = load_recipe(ROOT / "recipes" / f"{name}.toml")
    assert total_parameters(model_config(recipe["arch"], vocab_size=vocab, **recipe["model"])) == params
    plan = device_plan(recipe["train"]["tokens_per_update"], recipe["train"]["max_tokens"])
    assert plan["1 devices"] == "update_freq 8, 32,768 tokens" and plan["8 devices"] == "update_freq 1, 32,768 tokens"
    assert plan["64 devices"].endswith("(use --max-tokens 512)")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(n for n in PAPER if n.endswith("base")))
def test_dry_run_reports_paper_sizes(name: str, small_data: Path, tmp_path: Path) -> None:
    """A real dry run of the base rows (building and timing a big model on a CPU takes minutes)."""
    vocab, params = PAPER[name]
    assert total_parameters(model_config(name.rsplit("-", 1)[1], vocab_size=vocab)) == params
    data = wmt_shaped(tmp_path / "data", vocab, small_data)
    r = subprocess.run([sys.executable, "-m", "nmt", "train", str(data), "--recipe", str(ROOT / "recipes" / f"{name}.toml"),
                        "--cpu", "--dry-run", "--save-dir", str(tmp_path / "run")], capture_output=True, text=True,
                       env={**os.environ, "COLUMNS": "200"})
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr
    assert re.search(rf"parameters\s+│\s+{params:,}\s", out)
    assert re.search(r"tokens_per_update\s+│\s+32,768\s", out)
    assert re.search(r"8 devices\s+│\s+update_freq 1, 32,768 tokens", out)
    assert re.search(r"1 devices\s+│\s+update_freq 8, 32,768 tokens", out)
    assert re.search(r"64 devices\s+│.*use --max-tokens 512", out)
    assert not (tmp_path / "run" / "checkpoint_last.pt").exists()


def test_scripts_are_valid_bash_and_check_usage() -> None:
    for script in sorted((ROOT / "recipes").glob("*.sh")):
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0, script
    r = subprocess.run(["bash", str(ROOT / "recipes" / "wmt14.sh"), "xx", "base"], capture_output=True, text=True)
    assert r.returncode == 2 and "usage:" in r.stderr
    r = subprocess.run(["bash", str(ROOT / "recipes" / "wmt14-en-de.sh"), "huge"], capture_output=True, text=True)
    assert r.returncode == 2 and "usage:" in r.stderr


def table3_rows() -> dict:
    sys.path.insert(0, str(ROOT / "recipes" / "table3"))
    from table import PAPER

    return PAPER


def test_table3_recipes_are_the_papers_rows() -> None:
    """Every row of Table 3 has a recipe and a tiny counterpart; each recipe is the base one changed where the
    row says, so its parameter count is the paper's: at tensor2tensor's padded vocabulary of 40,960 for the
    base family, at about 36,000 for big (see docs/architecture.md on what each count implies)."""
    paper = table3_rows()
    folder = ROOT / "recipes" / "table3"
    assert {p.stem for p in folder.glob("*.toml")} == set(paper) == {p.stem for p in (folder / "tiny").glob("*.toml")}
    base = load_recipe(folder / "base.toml")
    for stem, (_, _, _, params) in paper.items():
        recipe = load_recipe(folder / f"{stem}.toml")
        cfg = model_config(recipe["arch"], vocab_size=36000 if stem == "big" else 40960, **recipe["model"])
        if params is not None:
            assert round(total_parameters(cfg) / 1e6) == params, stem
        changed = {k for k, v in recipe["model"].items() if base["model"].get(k) != v}
        changed |= {k for k, v in recipe["train"].items() if base["train"].get(k) != v}
        assert stem in ("base", "big") or 1 <= len(changed) <= 3, (stem, changed)  # one change (h with d_k, d_v)
        assert recipe["save_dir"] == Path(f"runs/table3/{stem}")
        tiny = load_recipe(folder / "tiny" / f"{stem}.toml")
        model_config(tiny["arch"], vocab_size=4000, **tiny["model"])  # builds
        assert tiny["train"]["max_updates"] == load_recipe(folder / "tiny" / "base.toml")["train"]["max_updates"]


def test_table3_printer(tmp_path: Path) -> None:
    """The table printer reads runs' summaries and configurations and prints every row beside the paper's."""
    run = tmp_path / "C-layers-2"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"updates": 1000, "valid_ppl": 12.345, "valid_bleu": 7.89}))
    cfg = model_config("tiny", vocab_size=4000, encoder_layers=1, decoder_layers=1)
    (run / "config.json").write_text(json.dumps({"model": cfg.__dict__}))
    r = subprocess.run([sys.executable, str(ROOT / "recipes" / "table3" / "table.py"), str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    line = next(line for line in r.stdout.splitlines() if line.startswith("(C) N=2"))
    assert line.split()[2:6] == ["12.35", "7.9", f"{total_parameters(cfg) / 1e6:.2f}", "1,000"]
    assert line.split()[-3:] == ["6.11", "23.7", "36M"]
    rows = [line for line in r.stdout.splitlines() if any(line.startswith(change[:51]) for change, *_ in table3_rows().values())]
    assert len(rows) == len(table3_rows()) and sum(" - " in row for row in rows) == len(rows) - 1  # only one row has run
