"""nmt.checkpoint: safe save and load, a run folder's saving policy, models from checkpoints, averaging.

Checkpoints are built here as the trainer builds them (``nmt.train.resume.payload``), from tiny untrained models.
"""

import errno
import os
import pickle
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from nmt import atomic, checkpoint
from nmt.recipe import run_config
from nmt.train.config import to_plain
from nmt.errors import NmtError
from nmt.model.transformer import Transformer
from tests.helpers import TINY, dot_files, fail_writes, small_disk, tiny_model, vocab_tensor



def payload(spm_model: Path, seed: int = 0, update: int = 100, average_last: int = 5, optimizer: bool = True,
            ema: bool = False, **overrides: Any) -> dict[str, Any]:
    """A checkpoint payload like the trainer's, for a tiny model with weights drawn from ``seed``."""
    model = tiny_model(400, seed, **overrides)
    cfg = run_config({"average_last": average_last}, data=Path("data"), arch="tiny", save_dir=Path("run"), model={**TINY, **overrides})
    out = {
        "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "model_config": asdict(model.cfg),
        "config": to_plain(cfg),
        "vocab": vocab_tensor(spm_model),
        "manifest": {"corpus": "local", "src": "en", "tgt": "de"},
        "progress": {"loop": {"update": update}, "time": 0.0},
    }
    if optimizer:
        out["optimizer"] = {"state": {0: {"step": torch.tensor(float(update))}}, "param_groups": [{"lr": 1e-3, "params": [0]}]}
    if ema:
        out["ema"] = {k: v + 1.0 for k, v in out["model"].items()}
    return out


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Whether two state dicts hold exactly the same tensors."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def updates(path: Path) -> int:
    """The update count a checkpoint was saved at: which save a file holds."""
    return checkpoint.load(path)["progress"]["loop"]["update"]


# ------------------------------------------------------------------------------------------ save / load


def test_save_load_round_trip(tmp_path: Path, fixture_spm: Path) -> None:
    p = payload(fixture_spm)
    checkpoint.save(p, tmp_path / "c.pt")
    assert [f.name for f in tmp_path.iterdir()] == ["c.pt"]  # no temporary left
    back = checkpoint.load(tmp_path / "c.pt")
    assert back["format"] == checkpoint.FORMAT == "nmt-checkpoint-1"
    assert same_weights(back["model"], p["model"])
    assert back["model_config"] == p["model_config"] and back["config"] == p["config"] and back["progress"] == p["progress"]
    assert torch.equal(back["vocab"], p["vocab"]) and bytes(back["vocab"].numpy()) == fixture_spm.read_bytes()
    assert checkpoint.vocab_digest(back) == checkpoint.vocab_digest(p)


def test_save_replaces_atomically(tmp_path: Path, fixture_spm: Path) -> None:
    checkpoint.save(payload(fixture_spm, update=1), tmp_path / "c.pt")

    class Unsaveable:  # a local class cannot be pickled: torch.save fails after writing part of the file
        pass

    with pytest.raises((AttributeError, pickle.PicklingError)):
        checkpoint.save({**payload(fixture_spm, update=2), "bad": Unsaveable()}, tmp_path / "c.pt")
    assert updates(tmp_path / "c.pt") == 1 and [f.name for f in tmp_path.iterdir()] == ["c.pt"]


class Exploit:
    """A pickle that runs a shell command when loaded without ``weights_only``."""

    def __reduce__(self) -> tuple:
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("kind", ["foreign pickle", "random bytes", "empty file", "zip of something else"])
def test_unreadable_files_are_one_line_errors_naming_them(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "bad.pt"
    if kind == "foreign pickle":
        torch.save({"model": Exploit()}, path)  # weights_only refuses to run pickled code
    elif kind == "random bytes":
        path.write_bytes(bytes(range(256)) * 4)
    elif kind == "empty file":
        path.write_bytes(b"")
    else:
        import zipfile

        with zipfile.ZipFile(path, "w") as z:
            z.writestr("hello.txt", "not a checkpoint")
    with pytest.raises(NmtError) as err:
        checkpoint.load(path)
    assert str(err.value).startswith(f"{path}: not a readable nmt checkpoint (") and "\n" not in str(err.value)


@pytest.mark.parametrize("content", [{"weights": torch.zeros(2)}, {"format": "fairseq", "model": {}}, [1, 2, 3]])
def test_other_torch_files_are_not_nmt_checkpoints(tmp_path: Path, content: object) -> None:
    torch.save(content, tmp_path / "other.pt")
    with pytest.raises(NmtError) as err:
        checkpoint.load(tmp_path / "other.pt")
    assert str(err.value) == f"{tmp_path / 'other.pt'}: not an nmt checkpoint"


def test_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(NmtError, match=rf"^{tmp_path / 'none.pt'}: checkpoint not found$"):
        checkpoint.load(tmp_path / "none.pt")


# ------------------------------------------------------------------------------------------ run folders


def test_numbered_order_is_numeric(tmp_path: Path) -> None:
    for name in ("checkpoint_10.pt", "checkpoint_9.pt", "checkpoint_100.pt", "checkpoint_1.pt", "checkpoint_last.pt",
                 "checkpoint_best.pt", "checkpoint_ema.pt", ".checkpoint_11.pt.tmp", "checkpoint_12.pt.bak", "avg_3.pt"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in checkpoint.numbered(tmp_path)] == ["checkpoint_1.pt", "checkpoint_9.pt", "checkpoint_10.pt", "checkpoint_100.pt"]
    assert checkpoint.numbered(tmp_path / "empty") == []


def test_save_run_numbered_and_last(tmp_path: Path, fixture_spm: Path) -> None:
    checkpoint.save_run(payload(fixture_spm, update=10), tmp_path, 10, numbered_copy=True, best=False, keep_last=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_10.pt", "checkpoint_last.pt"]
    assert (tmp_path / "checkpoint_last.pt").read_bytes() == (tmp_path / "checkpoint_10.pt").read_bytes()
    checkpoint.save_run(payload(fixture_spm, seed=1, update=20), tmp_path, 20, numbered_copy=True, best=False, keep_last=0)
    assert updates(tmp_path / "checkpoint_last.pt") == 20 and updates(tmp_path / "checkpoint_10.pt") == 10


def test_save_run_without_numbered_copy_writes_last_only(tmp_path: Path, fixture_spm: Path) -> None:
    checkpoint.save_run(payload(fixture_spm, update=7), tmp_path, 7, numbered_copy=False, best=True, keep_last=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_best.pt", "checkpoint_last.pt"]
    checkpoint.save_run(payload(fixture_spm, update=8), tmp_path, 8, numbered_copy=False, best=False, keep_last=1)
    assert updates(tmp_path / "checkpoint_last.pt") == 8 and updates(tmp_path / "checkpoint_best.pt") == 7


def test_best_only_when_asked_and_it_survives_later_saves(tmp_path: Path, fixture_spm: Path) -> None:
    checkpoint.save_run(payload(fixture_spm, update=1), tmp_path, 1, numbered_copy=True, best=False, keep_last=0)
    assert not (tmp_path / "checkpoint_best.pt").exists()
    checkpoint.save_run(payload(fixture_spm, update=2), tmp_path, 2, numbered_copy=True, best=True, keep_last=0)
    checkpoint.save_run(payload(fixture_spm, update=3), tmp_path, 3, numbered_copy=True, best=False, keep_last=0)
    assert updates(tmp_path / "checkpoint_best.pt") == 2 and updates(tmp_path / "checkpoint_last.pt") == 3


def test_ema_file_holds_the_averaged_weights_and_no_optimiser(tmp_path: Path, fixture_spm: Path) -> None:
    checkpoint.save_run(payload(fixture_spm, update=5), tmp_path, 5, numbered_copy=True, best=False, keep_last=0)
    assert not (tmp_path / "checkpoint_ema.pt").exists()
    p = payload(fixture_spm, update=6, ema=True)
    checkpoint.save_run(p, tmp_path, 6, numbered_copy=True, best=False, keep_last=0)
    ema = checkpoint.load(tmp_path / "checkpoint_ema.pt")
    assert same_weights(ema["model"], p["ema"])
    assert "optimizer" not in ema and "ema" not in ema
    assert ema["progress"] == p["progress"] and ema["config"] == p["config"] and torch.equal(ema["vocab"], p["vocab"])
    last = checkpoint.load(tmp_path / "checkpoint_last.pt")
    assert same_weights(last["model"], p["model"]) and "optimizer" in last  # the training checkpoint keeps everything


def test_pruning_keeps_the_newest_numbered_and_never_last_or_best(tmp_path: Path, fixture_spm: Path) -> None:
    for update in (1, 2, 3, 9, 10):  # 9 and 10: numeric, not text, order decides what is oldest
        checkpoint.save_run(payload(fixture_spm, update=update), tmp_path, update, numbered_copy=True, best=update == 2, keep_last=2)
    assert [p.name for p in checkpoint.numbered(tmp_path)] == ["checkpoint_9.pt", "checkpoint_10.pt"]
    assert updates(tmp_path / "checkpoint_best.pt") == 2  # its numbered file is gone, the best is not
    assert updates(tmp_path / "checkpoint_last.pt") == 10
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_average_last_of_reads_the_run_recipe(tmp_path: Path, fixture_spm: Path) -> None:
    assert checkpoint.average_last_of(tmp_path) is None
    checkpoint.save_run(payload(fixture_spm, average_last=7), tmp_path, 1, numbered_copy=False, best=False, keep_last=0)
    assert checkpoint.average_last_of(tmp_path) == 7  # from checkpoint_last.pt when there is no numbered one
    checkpoint.save_run(payload(fixture_spm, average_last=3), tmp_path, 4, numbered_copy=True, best=False, keep_last=0)
    checkpoint.save(payload(fixture_spm, average_last=8), tmp_path / "checkpoint_last.pt")
    assert checkpoint.average_last_of(tmp_path) == 3  # the newest numbered checkpoint decides


# ------------------------------------------------------------------------------------------ models


def test_load_model_builds_the_model_in_eval_mode(tmp_path: Path, fixture_spm: Path) -> None:
    p = payload(fixture_spm, seed=3)
    checkpoint.save(p, tmp_path / "c.pt")
    model, meta = checkpoint.load_model(tmp_path / "c.pt")
    assert isinstance(model, Transformer) and not model.training
    assert all(not m.training for m in model.modules())
    assert same_weights(model.state_dict(), p["model"])
    assert "model" not in meta and "optimizer" not in meta and torch.equal(meta["vocab"], p["vocab"])
    src = torch.tensor([[5, 6, 7, 3]])
    tgt_in = torch.tensor([[2, 5, 6]])
    with torch.no_grad():
        out = model(src, tgt_in)
        again = model(src, tgt_in)
    assert out.shape == (1, 3, 400) and torch.isfinite(out).all()
    assert torch.equal(out, again)  # eval mode: no dropout
    half, _ = checkpoint.load_model(tmp_path / "c.pt", dtype=torch.bfloat16)
    assert next(half.parameters()).dtype == torch.bfloat16


def test_load_model_errors(tmp_path: Path, fixture_spm: Path) -> None:
    wrong = payload(fixture_spm)
    wrong["model"] = payload(fixture_spm, d_ff=48)["model"]  # weights of another shape than the configuration says
    checkpoint.save(wrong, tmp_path / "w.pt")
    with pytest.raises(NmtError, match=rf"^{tmp_path / 'w.pt'}: weights do not match its configuration \("):
        checkpoint.load_model(tmp_path / "w.pt")
    for bad in ({"unknown_field": 1}, {"pad_id": 1}):
        p = payload(fixture_spm)
        p["model_config"] = {**p["model_config"], **bad}
        checkpoint.save(p, tmp_path / "b.pt")
        with pytest.raises(NmtError, match=rf"^{tmp_path / 'b.pt'}: model configuration not understood"):
            checkpoint.load_model(tmp_path / "b.pt")
    old = payload(fixture_spm)
    old["model_config"] = {**old["model_config"], "pad_id": 0}  # version 0.1 stored the (then fixed) pad id
    checkpoint.save(old, tmp_path / "old.pt")
    assert checkpoint.load_model(tmp_path / "old.pt")[0] is not None


# ------------------------------------------------------------------------------------------ averaging


def test_average_is_the_elementwise_mean(tmp_path: Path, fixture_spm: Path) -> None:
    paths = []
    for i, update in enumerate((10, 20, 30)):
        checkpoint.save(payload(fixture_spm, seed=i, update=update, average_last=2 + i), tmp_path / f"checkpoint_{update}.pt")
        paths.append(tmp_path / f"checkpoint_{update}.pt")
    result = checkpoint.average(paths, tmp_path / "avg.pt")
    models = [checkpoint.load(p)["model"] for p in paths]
    avg = checkpoint.load(tmp_path / "avg.pt")
    for k, v in avg["model"].items():
        torch.testing.assert_close(v, (models[0][k] + models[1][k] + models[2][k]) / 3, rtol=1e-6, atol=1e-7)
    assert not same_weights(avg["model"], models[2])
    assert "optimizer" not in avg and avg["progress"]["averaged"] == [str(p) for p in paths]
    assert avg["progress"]["loop"]["update"] == 30  # the newest input's metadata
    assert avg["config"]["average_last"] == 4 and torch.equal(avg["vocab"], vocab_tensor(fixture_spm))
    assert same_weights(result["model"], avg["model"])
    model, _ = checkpoint.load_model(tmp_path / "avg.pt")  # translates like any checkpoint
    assert not model.training


def test_average_of_one_is_itself_and_keeps_dtypes(tmp_path: Path, fixture_spm: Path) -> None:
    p = payload(fixture_spm)
    p["model"] = {k: v.to(torch.bfloat16) for k, v in p["model"].items()}
    checkpoint.save(p, tmp_path / "a.pt")
    q = payload(fixture_spm, seed=5)
    q["model"] = {k: v.to(torch.bfloat16) for k, v in q["model"].items()}
    checkpoint.save(q, tmp_path / "b.pt")
    one = checkpoint.average([tmp_path / "a.pt"], tmp_path / "one.pt")
    assert same_weights(one["model"], p["model"])
    two = checkpoint.average([tmp_path / "a.pt", tmp_path / "b.pt"], tmp_path / "two.pt")
    for k, v in two["model"].items():
        assert v.dtype == torch.bfloat16  # summed in float32, stored as it came
        expected = ((p["model"][k].float() + q["model"][k].float()) / 2).to(torch.bfloat16)
        assert torch.equal(v, expected)


def test_average_refuses_other_architecture_and_vocabulary(tmp_path: Path, fixture_spm: Path) -> None:
    checkpoint.save(payload(fixture_spm), tmp_path / "a.pt")
    checkpoint.save(payload(fixture_spm, d_ff=48), tmp_path / "arch.pt")
    other_vocab = payload(fixture_spm)
    other_vocab["vocab"] = torch.frombuffer(bytearray(fixture_spm.read_bytes() + b"\x00"), dtype=torch.uint8)
    checkpoint.save(other_vocab, tmp_path / "vocab.pt")
    with pytest.raises(NmtError) as err:
        checkpoint.average([tmp_path / "a.pt", tmp_path / "arch.pt"], tmp_path / "out.pt")
    assert str(err.value) == f"{tmp_path / 'arch.pt'}: architecture differs from {tmp_path / 'a.pt'}; cannot average"
    with pytest.raises(NmtError) as err:
        checkpoint.average([tmp_path / "a.pt", tmp_path / "vocab.pt"], tmp_path / "out.pt")
    assert str(err.value) == f"{tmp_path / 'vocab.pt'}: vocabulary differs from {tmp_path / 'a.pt'}; cannot average"
    with pytest.raises(NmtError, match="^no checkpoints to average$"):
        checkpoint.average([], tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


def test_a_pickled_exploit_is_not_run(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    with open(tmp_path / "x.pt", "wb") as f:
        pickle.dump({"format": checkpoint.FORMAT, "model": Exploit()}, f)
    with pytest.raises(NmtError):
        checkpoint.load(tmp_path / "x.pt")
    assert "pwned" not in capfd.readouterr().out


# ------------------------------------------------------------------------------------------ verified on every load


def overwrite_middle(path: Path, n: int = 64, seed: int = 0) -> None:
    """``n`` random bytes written into the middle of the file, in place (the issue's fault 5)."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + n] = np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


def test_random_bytes_in_the_middle_are_refused_naming_the_file(tmp_path: Path, fixture_spm: Path) -> None:
    """Here the bytes land in the optimiser state, which translate and average never look at: only the
    container's CRC-32 of that part tells."""
    path = tmp_path / "checkpoint_100.pt"
    checkpoint.save(payload(fixture_spm, optimizer=True) | {"optimizer": {"state": {0: {"exp_avg": torch.randn(200_000)}}, "param_groups": []}}, path)
    overwrite_middle(path)
    for load in (checkpoint.load, checkpoint.load_model, lambda p: checkpoint.average([p], tmp_path / "avg.pt")):
        with pytest.raises(checkpoint.DamagedCheckpoint, match=rf"^{path}: damaged checkpoint \(its part 'archive/data/\d+' fails the CRC-32 "
                           r"written with it: the file changed after it was saved\); use another checkpoint$"):
            load(path)
    assert not (tmp_path / "avg.pt").exists()


@pytest.mark.parametrize("where", ["cut short", "a part's header", "the pickled structure"])
def test_other_damage_is_refused(tmp_path: Path, fixture_spm: Path, where: str) -> None:
    path = tmp_path / "c.pt"
    checkpoint.save(payload(fixture_spm), path)
    data = bytearray(path.read_bytes())
    import zipfile

    info = {i.filename.split("/", 1)[1]: i for i in zipfile.ZipFile(path).infolist()}
    if where == "cut short":
        data = data[: len(data) * 3 // 4]
    elif where == "a part's header":
        data[info["data/0"].header_offset] ^= 0xFF
    else:
        data[info["data.pkl"].header_offset + 100] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(checkpoint.DamagedCheckpoint) as err:
        checkpoint.load(path)
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)
    assert {"cut short": "not a readable nmt checkpoint (truncated or overwritten", "a part's header": "header of its part 'archive/data/0'",
            "the pickled structure": "its part 'archive/data.pkl' fails the CRC-32"}[where] in str(err.value)


def test_the_committed_checkpoint_written_before_verification_verifies() -> None:
    """Every checkpoint nmt ever wrote is a torch zip with a CRC-32 per part: the old ones are verified as
    fully as new ones (tests/integration/test_compatibility.py translates it)."""
    checkpoint.verify(Path(__file__).resolve().parents[1] / "fixtures" / "tiny" / "checkpoint.pt")


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_while_saving_is_one_line_and_keeps_the_previous_checkpoint(tmp_path: Path, fixture_spm: Path,
                                                                               monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    """The issue's fault 2, injected (the real one on a tmpfs is below): torch.save reports the failed write as
    'RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos', never the errno."""
    checkpoint.save(payload(fixture_spm, update=1), tmp_path / "checkpoint_last.pt")
    fail_writes(monkeypatch, checkpoint, code, room=50_000)
    with pytest.raises(NmtError) as err:
        checkpoint.save_run(payload(fixture_spm, update=2), tmp_path, 2, numbered_copy=True, best=False, keep_last=0)
    assert str(err.value) == str(atomic.fault(OSError(code, os.strerror(code)), tmp_path / "checkpoint_2.pt"))
    assert updates(tmp_path / "checkpoint_last.pt") == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_last.pt"]


def test_a_real_full_disk_while_saving(tmp_path: Path, fixture_spm: Path) -> None:
    with small_disk(tmp_path / "disk", 400) as disk:
        checkpoint.save(payload(fixture_spm, update=1), disk / "checkpoint_last.pt")
        big = payload(fixture_spm, update=2) | {"optimizer": {"state": {0: {"exp_avg": torch.zeros(200_000)}}, "param_groups": []}}
        with pytest.raises(NmtError) as err:
            checkpoint.save(big, disk / "checkpoint_last.pt")
        assert str(err.value) == f"{disk / 'checkpoint_last.pt'}: no space left on the device; free space there (or choose another location) and run the command again"
        assert updates(disk / "checkpoint_last.pt") == 1 and dot_files(disk) == []
