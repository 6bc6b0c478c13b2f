import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import sacrebleu
import torch

from nmt import atomic, checkpoint
from nmt.recipe import load_recipe
from nmt.train.config import RunConfig, TrainConfig
from nmt.data.batching import collate
from nmt.data.dataset import ParallelDataset
from nmt.decode.translate import TranslateConfig, Translator
from nmt.errors import NmtError
from nmt.tokens import PAD
from nmt.train.distributed import Dist, free_port
from nmt.train.launch import run
from nmt.train.loop import Trainer
from nmt.train.loss import label_smoothed_nll
from tests.helpers import assert_same_model, prepare_local

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
    initial = Trainer(replace(base, save_dir=tmp_path / "fresh"), Dist()).model.state_dict()
    assert_same_model(one, two)
    assert all(not torch.equal(one[k], initial[k]) for k in one if not k.endswith("positions"))  # every parameter was trained


@pytest.mark.parametrize("nproc,update_freq", [(1, 2), (2, 1)])
def test_update_gradient_is_that_of_the_token_mean_loss(small_data: Path, tmp_path: Path, nproc: int, update_freq: int) -> None:
    """The gradient of one update equals d/dθ of the label-smoothed loss averaged over every target token of
    the group, computed directly. Adam hides a constant factor in its step, so read the gradient from its
    first moment: after one update, exp_avg = (1 - β1) · g."""
    cfg = config(small_data, tmp_path / "run", max_updates=1, update_freq=update_freq)
    cfg = replace(cfg, model={**TINY, "dropout": 0.0}, nproc=nproc)
    run(cfg)
    trainer = Trainer(replace(cfg, save_dir=tmp_path / "reference", nproc=1), Dist())  # same seed: same weights, same batches
    group = trainer.epoch_batches(1)[:2]
    total, tokens = 0.0, 0
    for idx in group:
        batch = collate([trainer.train_set[int(i)] for i in idx])
        lprobs = trainer.model(batch.src, batch.tgt_in).log_softmax(-1)
        loss, _, n = label_smoothed_nll(lprobs.view(-1, lprobs.size(-1)), batch.tgt_out.view(-1), 0.1, PAD)
        total, tokens = total + loss, tokens + int(n)
    (total / tokens).backward()
    state = checkpoint.load(tmp_path / "run" / "checkpoint_last.pt")["optimizer"]["state"]
    beta1 = cfg.train.adam_beta1
    for i, param in enumerate(trainer.params):
        torch.testing.assert_close(state[i]["exp_avg"] / (1 - beta1), param.grad, atol=1e-7, rtol=1e-4)


def test_resume_on_another_device_count_continues_the_data_exactly(small_data: Path, tmp_path: Path) -> None:
    """tokens_per_update keeps the group at 2 batches: 2 ranks × 1 or 1 rank × 2. Saved on one device count,
    resumed on the other, the run must equal an uninterrupted one (dropout off, so only data order matters)."""
    base = config(small_data, tmp_path / "straight", max_updates=6, tokens_per_update=1024)
    base = replace(base, model={**TINY, "dropout": 0.0})
    run(base)
    for first, second in ((2, 1), (1, 2)):
        save_dir = tmp_path / f"from{first}to{second}"
        half = replace(base, save_dir=save_dir, nproc=first, train=replace(base.train, max_updates=3))
        run(half)
        assert checkpoint.load(save_dir / "checkpoint_last.pt")["progress"]["loop"]["batch"] == 6
        run(replace(half, nproc=second, train=base.train))
        assert_same_model(params(tmp_path / "straight"), params(save_dir))
    # Another group size (2 ranks × 1 batch, then 1 rank × 1 batch): the position is a batch, not a group.
    regrouped = replace(base, save_dir=tmp_path / "regrouped", nproc=2, train=replace(base.train, tokens_per_update=None, max_updates=3))
    run(regrouped)
    run(replace(regrouped, nproc=1, train=replace(regrouped.train, max_updates=5)))
    assert checkpoint.load(tmp_path / "regrouped" / "checkpoint_last.pt")["progress"]["loop"]["batch"] == 6 + 2


def test_resume_refuses_other_batching_and_other_vocabulary(small_data: Path, small_corpus: Path, tmp_path: Path) -> None:
    cfg = config(small_data, tmp_path / "run", max_updates=2)
    run(cfg)
    with pytest.raises(NmtError, match=r"other settings \(max_tokens 512 → 1024\).*resume with --max-tokens 512, or use --reset"):
        run(replace(cfg, train=replace(cfg.train, max_tokens=1024, max_updates=4)))
    # A re-prepared corpus: a new SentencePiece model of the same size, so the architecture check passes.
    other = tmp_path / "other-data"
    prepare_local(small_corpus, other, 1000, model_type="unigram")
    moved = replace(cfg, data=other, train=replace(cfg.train, max_updates=4))
    with pytest.raises(NmtError, match=rf"trained with the vocabulary of {small_data} \(spm.model sha256 \w{{12}}\), but {other}/spm.model is sha256 \w{{12}}"):
        run(moved)
    before = sorted(p.name for p in (tmp_path / "run").iterdir())
    summary = run(moved, reset=True)
    assert summary["updates"] == 4  # started anew, not resumed at 2
    kept = tmp_path / "run" / "previous-1"
    assert set(before) <= {p.name for p in kept.iterdir()} | {"previous-1", "train.lock"}  # the lock is the folder's, not the run's
    assert checkpoint.load(kept / "checkpoint_last.pt")["progress"]["loop"]["update"] == 2  # nothing lost
    assert checkpoint.vocab_digest(checkpoint.load(tmp_path / "run" / "checkpoint_last.pt")) != checkpoint.vocab_digest(checkpoint.load(kept / "checkpoint_last.pt"))


def test_time_based_saves_never_enter_the_averaging_window(small_data: Path, tmp_path: Path) -> None:
    """Saves every few microseconds by the clock only refresh checkpoint_last.pt; numbered checkpoints, what
    `nmt average` reads, come at the update cadence and at the end, whatever the hardware."""
    cfg = config(small_data, tmp_path / "run", max_updates=12)
    cfg = replace(cfg, train=replace(cfg.train, save_every=5, save_minutes=1e-9))
    run(cfg)
    assert [p.name for p in checkpoint.numbered(tmp_path / "run")] == ["checkpoint_5.pt", "checkpoint_10.pt", "checkpoint_12.pt"]
    saves = [r for r in map(json.loads, (tmp_path / "run" / "train.jsonl").read_text().splitlines()) if "saved" in r]
    by_time = [r["update"] for r in saves if r["why"] == "time"]
    assert by_time == [1, 2, 3, 4, 6, 7, 8, 9, 11]
    assert all(r["saved"] == ["checkpoint_last.pt"] for r in saves if r["why"] == "time")
    assert checkpoint.load(tmp_path / "run" / "checkpoint_last.pt")["progress"]["loop"]["update"] == 12


def test_fp16_on_the_cpu_starts_without_skipping(small_data: Path, tmp_path: Path) -> None:
    """float16 autocast and the gradient scaler run on the CPU too; with the loss a mean over the update's
    tokens, the initial scale 2^16 leaves the first updates finite (the scaler would halve it otherwise)."""
    cfg = config(small_data, tmp_path / "run", max_updates=8, precision="fp16")
    summary = run(cfg)
    ckpt = checkpoint.load(tmp_path / "run" / "checkpoint_last.pt")
    assert summary["updates"] == 8 and ckpt["progress"]["loop"]["skipped"] <= 2
    assert 2.0**14 <= ckpt["scaler"]["scale"] <= 2.0**16


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


@pytest.mark.parametrize("packing", ["--no-packing", "--packing"])
def test_resume_after_sigkill_is_bit_identical(small_data: Path, tmp_path: Path, packing: str) -> None:
    """A run killed at an arbitrary moment (possibly inside a save) resumes to the same parameters as the
    same command run without interruption (both in subprocesses: same threads, same arithmetic), padded or
    packed."""
    updates = 40
    recipe = tmp_path / "tiny.toml"  # architecture fields beyond --dropout/--pre-norm come from a recipe
    recipe.write_text("[model]\n" + "".join(f"{k} = {v}\n" for k, v in TINY.items()))

    def command(save_dir: Path) -> list[str]:
        return [sys.executable, "-m", "nmt", "train", str(small_data), "--arch", "tiny", "--cpu", "--save-dir", str(save_dir),
                "--max-tokens", "512", "--warmup", "20", "--log-every", "5", "--validate-every", "1000", "--save-minutes", "1e9",
                "--save-every", "1", "--max-updates", str(updates), "--recipe", str(recipe), packing]

    subprocess.run(command(tmp_path / "straight"), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    save_dir = tmp_path / "killed"
    proc = subprocess.Popen(command(save_dir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(checkpoint.numbered(save_dir)) < 6:
        time.sleep(0.05)
    time.sleep(0.13)  # land somewhere in the middle of later updates and saves
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert checkpoint.load(save_dir / "checkpoint_last.pt")["progress"]["loop"]["update"] < updates
    subprocess.run(command(save_dir), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
    updates = 6
    # A tiny learning rate keeps the weights near their random start, whose translations are long and
    # varied (a briefly trained model only says EOS), so the translations themselves can be compared.
    cfg = config(small_data, tmp_path / "ema", max_updates=updates, ema_decay=0.75, valid_bleu=16, lr_scale=1e-3)
    cfg = replace(cfg, train=replace(cfg.train, validate_every=updates, save_every=1))
    summary = run(cfg)
    # Validation translations and BLEU equal translating the same 16 dev sentences with the final model
    # through `nmt translate`'s code path and scoring them with sacreBLEU.
    translator = Translator([tmp_path / "ema" / f"checkpoint_{updates}.pt"], TranslateConfig(device="cpu"))
    dev = ParallelDataset(small_data, "valid")
    hyps = translator.translate_ids([dev[i][0].tolist() for i in range(16)])
    expected = sacrebleu.corpus_bleu([translator.spm.decode(h[0].tokens) for h in hyps], [[translator.spm.decode(dev[i][1].tolist()) for i in range(16)]])
    texts = [translator.spm.decode(h[0].tokens) for h in hyps]
    assert len(set(texts)) > 8 and (tmp_path / "ema" / "valid.hyp").read_text(encoding="utf-8").splitlines() == texts
    assert summary["valid_bleu"] == pytest.approx(expected.score, abs=1e-9)
    # The EMA with decay 0.75, from the saved weights of every update.
    weights = [Trainer(replace(cfg, save_dir=tmp_path / "init"), Dist()).model.state_dict()]
    weights += [checkpoint.load(tmp_path / "ema" / f"checkpoint_{u}.pt")["model"] for u in range(1, updates + 1)]
    ema = checkpoint.load(tmp_path / "ema" / "checkpoint_ema.pt")
    assert "optimizer" not in ema
    for k, value in ema["model"].items():
        expected_ema = weights[0][k].float()
        for w in weights[1:]:
            expected_ema = 0.75 * expected_ema + 0.25 * w[k].float()
        torch.testing.assert_close(value, expected_ema, atol=1e-6, rtol=1e-5)
    logged = [json.loads(line) for line in (tmp_path / "ema" / "train.jsonl").read_text().splitlines()]
    assert [r["valid_bleu"] for r in logged if "valid_bleu" in r][-1] == summary["valid_bleu"]


def test_non_finite_updates_are_skipped_then_stop_the_run(small_data: Path, tmp_path: Path) -> None:
    cfg = config(small_data, tmp_path / "nan", max_updates=50, lr_scale=1e30, max_nonfinite=4)
    with pytest.raises(NmtError, match="4 updates in a row were skipped"):
        run(cfg)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_an_update_out_of_memory_is_skipped_and_the_next_one_runs(small_data: Path, tmp_path: Path, precision: str) -> None:
    """A batch that runs out of GPU memory (raised here on a CPU) skips its update, parameters untouched, and
    the next update runs: with fp16 the gradient scaler was unscaled before the skip was known and must
    be ready for the next update."""
    trainer = Trainer(config(small_data, tmp_path / "oom", max_updates=5, precision=precision), Dist())
    batches = trainer.epoch_batches(1)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    features = trainer.step_features

    def out_of_memory(*args: object) -> torch.Tensor:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (raised by the test)")

    trainer.step_features = out_of_memory
    stats = trainer.train_step([batches[0]])
    assert stats.oom == 1 and stats.skipped == 1
    assert trainer.progress.update == 0 and trainer.progress.skipped == 1
    assert all(torch.equal(v, before[k]) for k, v in trainer.model.state_dict().items())
    assert all(not p.grad.any() for p in trainer.params)
    trainer.step_features = features
    stats = trainer.train_step([batches[1]])
    assert stats.oom == 0 and stats.tgt_tokens > 0
    assert trainer.progress.update == 1 and trainer.progress.nonfinite == 0
    assert any(not torch.equal(v, before[k]) for k, v in trainer.model.state_dict().items())


def test_two_torchrun_nodes_equal_one_process_accumulating(small_data: Path, tmp_path: Path) -> None:
    """Two `torchrun --nnodes 2` launches meeting at a c10d rendezvous on 127.0.0.1 (gloo, one process
    each), as on two machines, give the parameters of one process with --update-freq 2."""
    recipe = tmp_path / "tiny.toml"
    recipe.write_text("[model]\n" + "".join(f"{k} = {v}\n" for k, v in {**TINY, "dropout": 0.0}.items()))
    common = [str(small_data), "--arch", "tiny", "--recipe", str(recipe), "--cpu", "--max-tokens", "512", "--warmup", "20",
              "--max-updates", "3", "--validate-every", "1000", "--save-minutes", "1e9"]
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launches = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(rank),
                                  "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
                                  "--rdzv-id", "nmt-test", "-m", "nmt", "train", *common, "--save-dir", str(tmp_path / "nodes")],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
                for rank in (0, 1)]
    for proc in launches:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
    one = subprocess.run([sys.executable, "-m", "nmt", "train", *common, "--update-freq", "2", "--save-dir", str(tmp_path / "one")],
                         capture_output=True, text=True, env=env)
    assert one.returncode == 0, one.stderr[-2000:]
    nodes, single = params(tmp_path / "nodes"), params(tmp_path / "one")
    assert checkpoint.load(tmp_path / "nodes" / "checkpoint_last.pt")["config"]["train"]["update_freq"] == 1
    assert_same_model(nodes, single)


@pytest.mark.slow
def test_compiled_model_trains_like_the_eager_one(small_data: Path, tmp_path: Path) -> None:
    """--compile (torch.compile, inductor) runs on the CPU too and computes the same gradient and validation
    loss. Compared on the gradient (Adam's first moment after one update), not on the updated weights: Adam
    divides by |g|, so fused kernels' rounding on a near-zero gradient can flip a step of ±lr."""
    cfg = config(small_data, tmp_path / "eager", max_updates=1)
    cfg = replace(cfg, model={**TINY, "dropout": 0.0})
    run(cfg)
    run(replace(cfg, save_dir=tmp_path / "compiled", train=replace(cfg.train, compile=True)))
    eager, compiled = (checkpoint.load(tmp_path / name / "checkpoint_last.pt") for name in ("eager", "compiled"))
    for i, state in eager["optimizer"]["state"].items():
        torch.testing.assert_close(compiled["optimizer"]["state"][i]["exp_avg"], state["exp_avg"], atol=1e-8, rtol=1e-3)
    losses = [[r["valid_loss"] for r in map(json.loads, (tmp_path / name / "train.jsonl").read_text().splitlines()) if "valid_loss" in r]
              for name in ("eager", "compiled")]
    assert losses[0] and losses[1] == pytest.approx(losses[0], abs=1e-4)


def test_packed_training_learns_as_padded_training_does(small_data: Path, tmp_path: Path) -> None:
    """--packing makes the same updates from the same batches: after 60 updates on real text the dev loss
    has fallen well below the untrained model's, to the padded run's value (no dropout, so the two runs
    differ only in the order of their sums)."""
    runs = {}
    for packing in (False, True):
        cfg = config(small_data, tmp_path / str(packing), max_updates=60, packing=packing)
        runs[packing] = run(replace(cfg, model={**TINY, "dropout": 0.0}))["valid_loss"]  # validated at the end
    untrained = Trainer(replace(config(small_data, tmp_path / "fresh"), model={**TINY, "dropout": 0.0}), Dist()).validate()["valid_loss"]
    assert runs[False] < untrained - 1.0
    assert abs(runs[True] - runs[False]) < 0.01, runs
