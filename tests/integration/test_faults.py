"""The six ways issue 20 found to lose or corrupt work without being told, each now refused in one line, and
the operating-system faults of training and preparing on the command line. Tiny model, the committed fixture
corpus; where a test needs a small or read-only disk it mounts a tmpfs, and its twin injects the same fault."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from nmt import checkpoint
from nmt.errors import NmtError
from nmt.train.config import RunConfig, TrainConfig
from nmt.train.launch import run
from nmt.train.lock import LOCK_FILE
from tests.helpers import TINY, dot_files, fail_writes, prepare_local, small_disk

MODEL = {**TINY, "dropout": 0.0}
OPTIONS = ["--arch", "tiny", "--cpu", "--max-tokens", "256", "--warmup", "10", "--log-every", "1", "--validate-every", "1000",
           "--save-minutes", "1e9", "--save-every", "2"]


@pytest.fixture(scope="module")
def recipe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny architecture's fields beyond --dropout/--pre-norm, which only a recipe sets."""
    path = tmp_path_factory.mktemp("recipe") / "tiny.toml"
    path.write_text("[model]\n" + "".join(f"{k} = {v}\n" for k, v in MODEL.items()))
    return path


def train(data: Path, save_dir: Path, recipe: Path, *extra: str) -> list[str]:
    """The arguments of an ``nmt train`` of the tiny model on ``data`` into ``save_dir``."""
    return ["train", str(data), "--save-dir", str(save_dir), "--recipe", str(recipe), *OPTIONS, *extra]


def one_line(code: int, err: str) -> str:
    """The error of a command that must fail with exit status 2 and one line, the last on stderr (where
    training also logs its progress), with no traceback."""
    assert code == 2, f"exit {code}: {err[-3000:]}"
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("nmt: error: ")]
    assert errors == lines[-1:] and "Traceback" not in err, err[-3000:]
    return errors[0].removeprefix("nmt: error: ")


def nmt(*args: str, stdout: object = subprocess.DEVNULL) -> tuple[int, str]:
    """An nmt command in a process of its own: (exit status, stderr)."""
    r = subprocess.run([sys.executable, "-m", "nmt", *args], stdout=stdout, stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "1000"})
    return r.returncode, r.stderr


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., tuple[int, str]]:
    """An nmt command in this process, through the entry point a shell runs (``nmt.cli.run``, which turns
    errors into one line and exit status 2): (exit status, stderr). Saves starting Python and torch anew."""
    from nmt.cli import run as entry_point
    from nmt.console import console

    monkeypatch.setattr(console, "width", 1000)  # no line of the log folded

    def call(*args: str) -> tuple[int, str]:
        monkeypatch.setattr(sys, "argv", ["nmt", *args])
        with pytest.raises(SystemExit) as exit:
            entry_point()
        return int(exit.value.code or 0), capsys.readouterr().err

    return call


def config(data: Path, save_dir: Path, **train: object) -> RunConfig:
    t = TrainConfig(max_tokens=256, warmup=10, log_every=1, validate_every=1000, save_every=2, save_minutes=1e9, **train)  # type: ignore[arg-type]
    return RunConfig(data=data, save_dir=save_dir, arch="tiny", model=dict(MODEL), train=t, cpu=True)


def records(save_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (save_dir / "train.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------ 1. two trainers on one run folder


def test_a_second_trainer_on_a_run_folder_is_refused_at_once(fixture_data: Path, recipe: Path, tmp_path: Path) -> None:
    """Before, both ran and exited 0: the checkpoints were the second's, the first reported its own best loss,
    and train.jsonl interleaved both. The first now trains for 15 s by the clock, in a process of its own;
    while it runs, the same command is refused, as one process and before spawning two."""
    save_dir = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "nmt", *train(fixture_data, save_dir, recipe, "--max-updates", "100000", "--max-time", "15")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not ((save_dir / LOCK_FILE).exists() and (save_dir / LOCK_FILE).read_text().startswith(f"pid {first.pid} ")):
        time.sleep(0.05)
    seconds = [subprocess.Popen([sys.executable, "-m", "nmt", *train(fixture_data, save_dir, recipe, "--max-updates", "100000", "--max-time", "15", *extra)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for extra in ([], ["--nproc", "2"])]
    for second in seconds:
        _, err = second.communicate(timeout=120)
        message = one_line(second.returncode, err)
        assert message.startswith(f"{save_dir} is in use by another nmt train (pid {first.pid} on host {socket.gethostname()}, since ")
        assert message.endswith("); wait for it to end, or train into another --save-dir")
    assert first.poll() is None, "the first trainer ended before the others were refused: raise its --max-time"
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err[-3000:]
    updates = [r["update"] for r in records(save_dir) if "loss" in r]
    assert updates == list(range(1, len(updates) + 1))  # one writer: no second run's records in between
    assert checkpoint.load(save_dir / checkpoint.LAST)["progress"]["loop"]["update"] == updates[-1]


# ------------------------------------------------------------------ 2. a full disk while saving


def test_a_full_disk_while_training_is_one_line_and_the_rerun_resumes(fixture_data: Path, recipe: Path, tmp_path: Path,
                                                                      cli: Callable[..., tuple[int, str]]) -> None:
    """Before: a 73-line traceback ending 'RuntimeError: [enforce fail at inline_container.cc:672] . unexpected
    pos'. A tmpfs of 2 MiB holds the first numbered checkpoints (about 0.6 MB each) and not the rest."""
    with small_disk(tmp_path / "disk", 2048) as disk:
        save_dir = disk / "run"
        message = one_line(*cli(*train(fixture_data, save_dir, recipe, "--max-updates", "12")))
        assert re.fullmatch(rf"{save_dir}/checkpoint_\d+\.pt: no space left on the device; free space there \(or choose another location\) "
                            "and run the command again", message)
        intact = checkpoint.load(save_dir / checkpoint.LAST)["progress"]["loop"]["update"]
        assert intact >= 2 and dot_files(disk) == []
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        code, err = cli(*train(fixture_data, save_dir, recipe, "--max-updates", "12"))
        assert code == 0, err[-3000:]
        assert f"resumed from {save_dir / checkpoint.LAST} at update {intact}" in err
        assert checkpoint.load(save_dir / checkpoint.LAST)["progress"]["loop"]["update"] == 12


def test_a_full_disk_while_training_injected(fixture_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same fault injected into the checkpoint files' writes, for machines that cannot mount a tmpfs:
    room for two checkpoints and a half."""
    cfg = config(fixture_data, tmp_path / "run", max_updates=12)
    run(replace(cfg, save_dir=tmp_path / "probe", train=replace(cfg.train, max_updates=1)))
    size = (tmp_path / "probe" / checkpoint.LAST).stat().st_size
    fail_writes(monkeypatch, checkpoint, errno.ENOSPC, room=size * 5 // 2)
    with pytest.raises(NmtError) as err:
        run(cfg)
    assert str(err.value) == (f"{tmp_path / 'run' / 'checkpoint_6.pt'}: no space left on the device; "
                              "free space there (or choose another location) and run the command again")
    assert checkpoint.load(tmp_path / "run" / checkpoint.LAST)["progress"]["loop"]["update"] == 4
    assert dot_files(tmp_path / "run") == []


# ------------------------------------------------------------------ 3, 4. damaged token shards


@pytest.mark.parametrize("shard,ids", [("train.de.bin", b"\xff\xff" * 8), ("valid.en.bin", (7).to_bytes(2, "little") * 3)])
def test_a_damaged_shard_stops_training_naming_it(fixture_data: Path, recipe: Path, tmp_path: Path, shard: str, ids: bytes) -> None:
    """Before: ids 0xFFFF in train.de.bin trained 10 updates without a word; flipped bytes in the dev shard
    ended in a 76-line 'IndexError: index out of range in self'. Ids still inside the vocabulary are found
    by the checksum. The command in a process of its own, as a user runs it."""
    data = Path(shutil.copytree(fixture_data, tmp_path / "data"))
    with open(data / shard, "r+b") as f:
        f.seek(40)
        f.write(ids)
    message = one_line(*nmt(*train(data, tmp_path / "run", recipe, "--max-updates", "4")))
    assert message.startswith(f"{data / shard}: ") and message.endswith("the prepared data is damaged; prepare it again: nmt prepare local --force")
    assert ("holds id 65535, outside the vocabulary of 400 pieces" if shard.startswith("train") else "its checksum differs") in message
    assert not (tmp_path / "run" / checkpoint.LAST).exists()


# ------------------------------------------------------------------ 5. a damaged checkpoint


def overwrite_middle(path: Path, n: int = 64) -> None:
    """``n`` random bytes written into the middle of the file, in place."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + n] = np.random.default_rng(0).integers(0, 256, n, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


def test_a_damaged_checkpoint_is_refused_by_every_loader_and_resume_falls_back_only_when_asked(
        fixture_data: Path, recipe: Path, tmp_path: Path, cli: Callable[..., tuple[int, str]]) -> None:
    """Before: translate and average accepted a checkpoint with 64 random bytes in its middle (they hit the
    optimiser state), and resuming ran into non-finite gradients with advice to lower the learning rate."""
    save_dir = tmp_path / "run"
    code, err = cli(*train(fixture_data, save_dir, recipe, "--max-updates", "6"))
    assert code == 0, err[-3000:]
    last = save_dir / checkpoint.LAST  # the same file as checkpoint_6.pt (a hard link)
    overwrite_middle(last)
    damaged = rf"{last}: damaged checkpoint \(its part 'archive/data/\d+' fails the CRC-32 written with it: the file changed after it was saved\)"
    for command in (["translate", str(last), "--input", str(fixture_data / "test.en")],
                    ["average", str(save_dir / "checkpoint_4.pt"), str(last), "-o", str(tmp_path / "avg.pt")],
                    ["export", str(last), str(tmp_path / "ct2"), "--to", "ctranslate2"],
                    ["attend", str(last), "Open the file."]):
        assert re.fullmatch(damaged + "; use another checkpoint", one_line(*cli(*command))), command
    assert not (tmp_path / "avg.pt").exists() and not (tmp_path / "ct2").exists()
    again = train(fixture_data, save_dir, recipe, "--max-updates", "8")
    assert re.fullmatch(damaged + rf"; the newest intact one is checkpoint_4.pt \(update 4\): continue from it with "
                        rf"--resume-from {save_dir}, or start anew with --reset", one_line(*cli(*again)))
    code, err = cli(*again, "--resume-from", str(save_dir))
    assert code == 0, err[-3000:]
    assert f"--resume-from: passing over {save_dir / checkpoint.LAST}" in err
    assert f"resumed from {save_dir / 'checkpoint_4.pt'} at update 4" in err
    assert checkpoint.load(last)["progress"]["loop"]["update"] == 8


# ------------------------------------------------------------------ 6. and the other faults of a run folder


def test_a_save_dir_that_is_a_file(fixture_data: Path, recipe: Path, tmp_path: Path, cli: Callable[..., tuple[int, str]]) -> None:
    """Before: a 46-line FileExistsError traceback."""
    (tmp_path / "run").write_text("my notes")
    for extra in ([], ["--nproc", "2"]):
        message = one_line(*cli(*train(fixture_data, tmp_path / "run", recipe, "--max-updates", "2", *extra)))
        assert message == f"{tmp_path / 'run'} is a file where a folder is needed; move it away or choose another location"
    assert (tmp_path / "run").read_text() == "my notes"


@pytest.mark.parametrize("code", [errno.EACCES, errno.EROFS])
def test_a_run_folder_that_cannot_be_written(fixture_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    """Injected (as root, permissions do not bind; read-only for real below)."""
    real = Path.mkdir

    def refuse(self: Path, *args: object, **kwargs: object) -> None:
        if self == tmp_path / "runs":  # runs/base fails for want of runs, then runs is refused
            raise OSError(code, os.strerror(code), str(self))
        real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(NmtError) as err:
        run(config(fixture_data, tmp_path / "runs" / "base", max_updates=2))
    expected = {errno.EACCES: f"{tmp_path / 'runs'}: permission denied; check the owner and permissions of {tmp_path}, or choose another location",
                errno.EROFS: f"{tmp_path / 'runs'}: read-only file system; choose a location on a writable one"}[code]
    assert str(err.value) == expected


def test_a_read_only_run_folder(fixture_data: Path, recipe: Path, tmp_path: Path, cli: Callable[..., tuple[int, str]]) -> None:
    with small_disk(tmp_path / "disk", 64, read_only=True) as disk:
        message = one_line(*cli(*train(fixture_data, disk / "run", recipe, "--max-updates", "2")))
        assert message == f"{disk / 'run'}: read-only file system; choose a location on a writable one"


def test_translations_to_a_full_disk(tmp_path: Path, cli: Callable[..., tuple[int, str]]) -> None:
    """Standard output on a full disk (/dev/full answers every write with ENOSPC) and -o on one."""
    tiny = Path(__file__).resolve().parents[1] / "fixtures" / "tiny" / "checkpoint.pt"
    source = tmp_path / "test.en"
    source.write_text("Open the file.\nSave it.\n")
    for command in (["translate", str(tiny), "--input", str(source)], ["--help"]):
        with open("/dev/full", "w") as full:
            message = one_line(*nmt(*command, stdout=full))
        assert message == "standard output: no space left on the device; free space there (or choose another location) and run the command again"
    with small_disk(tmp_path / "disk", 4) as disk:
        (disk / "old.txt").write_text("x" * 3000)
        message = one_line(*cli("translate", str(tiny), "--input", str(source), "-o", str(disk / "test.hyp")))
        assert message == f"{disk / 'test.hyp'}: no space left on the device; free space there (or choose another location) and run the command again"
        assert dot_files(disk) == [] and not (disk / "test.hyp").exists()


# ------------------------------------------------------------------ nmt prepare on a full disk


def test_prepare_on_a_full_disk_leaves_nothing_half_written(fixture_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Injected into the token files' writes: the encode stage stops in one line, its temporaries removed."""
    from nmt.data import binarize

    fail_writes(monkeypatch, binarize, errno.ENOSPC, room=3000)
    with pytest.raises(NmtError, match=rf"^{tmp_path / 'data'}/train\.(en|de)\.(bin|idx): no space left on the device"):
        prepare_local(fixture_dir, tmp_path / "data", 400)
    assert dot_files(tmp_path / "data") == [] and not (tmp_path / "data" / "manifest.json").exists()


def test_prepare_on_a_real_full_disk(fixture_dir: Path, tmp_path: Path, cli: Callable[..., tuple[int, str]]) -> None:
    with small_disk(tmp_path / "disk", 72) as disk:
        message = one_line(*cli("prepare", "local", "--train", str(fixture_dir / "train"), "--valid", str(fixture_dir / "dev"),
                                "--src", "en", "--tgt", "de", "--vocab-size", "400", "--workers", "1", "--dest", str(disk / "data")))
        assert message.startswith(f"{disk / 'data'}/") and message.endswith(": no space left on the device; free space there (or choose another location) and run the command again")
        assert dot_files(disk) == [] and not (disk / "data" / "manifest.json").exists()
