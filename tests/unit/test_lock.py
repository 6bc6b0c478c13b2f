"""nmt.train.lock: one nmt train per run folder, through an OS lock that dies with its process."""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nmt.errors import NmtError
from nmt.train import lock
from nmt.train.lock import LOCK_FILE, lock_run


def test_a_second_lock_is_refused_naming_the_folder_and_the_holder(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "base"
    with lock_run(run) as held:
        assert held.fd is not None and (run / LOCK_FILE).exists()
        with pytest.raises(NmtError) as err:
            lock_run(run)  # another open file description: flock refuses it as it would another process
        message = str(err.value)
        assert message.startswith(f"{run} is in use by another nmt train (pid {os.getpid()} on host {socket.gethostname()}, since ")
        assert message.endswith("); wait for it to end, or train into another --save-dir") and "\n" not in message
    with lock_run(run):  # released: free again
        pass


HOLD = """
import sys, time
from pathlib import Path
from nmt.train.lock import lock_run
held = lock_run(Path(sys.argv[1]))
print("locked", flush=True)
time.sleep(600)
"""


def test_the_lock_dies_with_its_process(tmp_path: Path) -> None:
    """SIGKILL leaves no stale lock: nothing to clear by hand before re-running the command."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(NmtError, match=rf"in use by another nmt train \(pid {proc.pid} on host "):
            lock_run(tmp_path)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with lock_run(tmp_path):
        assert (tmp_path / LOCK_FILE).read_text().startswith(f"pid {os.getpid()} on host ")


def test_a_save_dir_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "run").write_text("not a folder")
    with pytest.raises(NmtError) as err:
        lock_run(tmp_path / "run")
    assert str(err.value) == f"{tmp_path / 'run'} is a file where a folder is needed; move it away or choose another location"


@pytest.mark.parametrize("code", [errno.ENOLCK, errno.EOPNOTSUPP])
def test_a_file_system_without_locks_warns_and_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    """NFS without a lock manager answers ENOLCK, some FUSE and Lustre mounts EOPNOTSUPP (injected here)."""
    def refuse(fd: int, operation: int) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(fcntl, "flock", refuse)
    held = lock_run(tmp_path)
    assert held.fd is None and held.warning is not None
    assert f"{tmp_path}: this file system does not support locks" in held.warning and "nothing stops a second nmt train" in held.warning


def test_the_holder_is_said_even_before_it_wrote_its_name(tmp_path: Path) -> None:
    fd = os.open(tmp_path / LOCK_FILE, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # locked, file still empty: the moment between locking and writing
    try:
        with pytest.raises(NmtError, match=r"in use by another nmt train \(holder not known yet\)"):
            lock_run(tmp_path)
    finally:
        os.close(fd)
    assert lock.holder_line().startswith(f"pid {os.getpid()} on host {socket.gethostname()}, since {time.strftime('%Y-%m-%d')}")
