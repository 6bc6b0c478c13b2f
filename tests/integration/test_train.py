import json
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from nmt import atomic, checkpoint
from nmt.config import RunConfig, TrainConfig, load_recipe
from nmt.errors import NmtError
from nmt.train.launch import run

TINY = {"d_model": 64, "d_ff": 128, "heads": 2}


def config(data: Path, save_dir: Path, **train: object) -> RunConfig:
    t = TrainConfig(max_tokens=512, warmup=20, log_every=5, validate_every=1000, save_every=1000, save_minutes=1e9, **train)
    return RunConfig(data=data, save_dir=save_dir, arch="tiny", model=dict(TINY), train=t, cpu=True)


def params(save_dir: Path) -> dict[str, torch.Tensor]:
    return checkpoint.load(save_dir / "checkpoint_last.pt")["model"]


def test_two_gloo_ranks_equal_one_rank_accumulating(small_data: Path, tmp_path: Path) -> None:
    base = config(small_data, tmp_path / "one", max_updates=3)
    base = replace(base, model={**TINY, "dropout": 0.0})
    run(replace(base, train=replace(base.train, update_freq=2)))
    run(replace(base, save_dir=tmp_path / "two", nproc=2))
    one, two = params(tmp_path / "one"), params(tmp_path / "two")
    for k in one:
        torch.testing.assert_close(one[k], two[k], atol=1e-5, rtol=1e-4)
    moved = max((one[k] - checkpoint.load(tmp_path / "one" / "checkpoint_3.pt")["model"][k]).abs().max() for k in one)
    assert moved == 0
    assert any(not torch.equal(one[k], torch.zeros_like(one[k])) for k in one)


def test_resume_is_bit_identical(small_data: Path, tmp_path: Path) -> None:
    straight = config(small_data, tmp_path / "straight", max_updates=8)
    run(straight)
    half = replace(straight, save_dir=tmp_path / "halves", train=replace(straight.train, max_updates=4))
    run(half)
    run(replace(half, train=replace(half.train, max_updates=8)))
    a, b = params(tmp_path / "straight"), params(tmp_path / "halves")
    assert all(torch.equal(a[k], b[k]) for k in a)
    optim_a = checkpoint.load(tmp_path / "straight" / "checkpoint_last.pt")["optimizer"]["state"]
    optim_b = checkpoint.load(tmp_path / "halves" / "checkpoint_last.pt")["optimizer"]["state"]
    assert all(torch.equal(optim_a[i]["exp_avg_sq"], optim_b[i]["exp_avg_sq"]) for i in optim_a)


def test_resume_after_sigkill_is_bit_identical(small_data: Path, tmp_path: Path) -> None:
    """A run killed at an arbitrary moment (possibly inside a save) resumes to the same parameters."""
    updates = 40
    straight = config(small_data, tmp_path / "straight", max_updates=updates)
    run(straight)
    save_dir = tmp_path / "killed"
    cmd = [sys.executable, "-m", "nmt", "train", str(small_data), "--arch", "tiny", "--cpu", "--save-dir", str(save_dir),
           "--max-tokens", "512", "--warmup", "20", "--log-every", "5", "--validate-every", "1000", "--save-minutes", "1e9",
           "--save-every", "1", "--max-updates", str(updates)]
    extra = []
    for k, v in TINY.items():
        extra += [f"--{k.replace('_', '-')}", str(v)]
    # Architecture fields beyond --dropout/--pre-norm come from a recipe.
    recipe = tmp_path / "tiny.toml"
    recipe.write_text("[model]\n" + "".join(f"{k} = {v}\n" for k, v in TINY.items()))
    cmd += ["--recipe", str(recipe)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(checkpoint.numbered(save_dir)) < 6:
        time.sleep(0.05)
    time.sleep(0.13)  # land somewhere in the middle of later updates and saves
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert checkpoint.load(save_dir / "checkpoint_last.pt")["progress"]["loop"]["update"] < updates
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    a, b = params(tmp_path / "straight"), params(save_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_kill_during_save_leaves_previous_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint_last.pt"
    checkpoint.save({"model": {"w": torch.zeros(3)}, "progress": {"n": 0}}, path)
    code = (
        "import torch, sys; from pathlib import Path; from nmt import checkpoint\n"
        "big = {'w': torch.randn(40_000_000)}\n"
        "print('ready', flush=True)\n"
        "while True: checkpoint.save({'model': big, 'progress': {'n': 1}}, Path(sys.argv[1]))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    tmp = atomic.temporary(path)
    deadline = time.time() + 60
    while not tmp.exists() and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    loaded = checkpoint.load(path)  # whole: either the old one or a complete new one
    assert loaded["progress"]["n"] in (0, 1)


def test_bad_inputs_fail_clearly(small_data: Path, tmp_path: Path) -> None:
    with pytest.raises(NmtError, match="not a prepared dataset"):
        run(config(tmp_path, tmp_path / "run", max_updates=1))
    recipe = tmp_path / "r.toml"
    recipe.write_text("[train]\nmax_tokenz = 10\n")
    with pytest.raises(NmtError, match="unknown key 'max_tokenz'.*did you mean 'max_tokens'"):
        load_recipe(recipe)
    cfg = config(small_data, tmp_path / "arch", max_updates=1)
    run(cfg)
    with pytest.raises(NmtError, match="another architecture.*d_model"):
        run(replace(cfg, model={**TINY, "d_model": 32}, train=replace(cfg.train, max_updates=2)))
    with pytest.raises(NmtError, match="training process .* of 2 stopped with exit code 2"):
        run(replace(cfg, nproc=2, model={**TINY, "d_model": 32}, train=replace(cfg.train, max_updates=2)))
    if torch.cuda.device_count() == 0:
        with pytest.raises(NmtError, match="--gpus 2 but 0 GPU"):
            run(replace(cfg, gpus=2, cpu=False))


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "nmt", "train", str(tmp_path), "--cpu"], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "not a prepared dataset" in result.stderr


def test_ema_and_validation_bleu(small_data: Path, tmp_path: Path) -> None:
    cfg = config(small_data, tmp_path / "ema", max_updates=4, ema_decay=0.5, valid_bleu=8)
    cfg = replace(cfg, train=replace(cfg.train, validate_every=2))
    summary = run(cfg)
    assert 0.0 <= summary["valid_bleu"] <= 100.0
    raw = checkpoint.load(tmp_path / "ema" / "checkpoint_last.pt")
    ema = checkpoint.load(tmp_path / "ema" / "checkpoint_ema.pt")
    assert "optimizer" not in ema and ema["model_config"] == raw["model_config"]
    w = "decoder.0.ffn.fc1.weight"
    assert not torch.equal(ema["model"][w], raw["model"][w])
    logged = [json.loads(line) for line in (tmp_path / "ema" / "train.jsonl").read_text().splitlines()]
    assert any("valid_bleu" in r for r in logged) and any("tgt_tok_s" in r for r in logged)


def test_non_finite_updates_are_skipped_then_stop_the_run(small_data: Path, tmp_path: Path) -> None:
    cfg = config(small_data, tmp_path / "nan", max_updates=50, lr_scale=1e30, max_nonfinite=4)
    with pytest.raises(NmtError, match="4 updates in a row were skipped"):
        run(cfg)
