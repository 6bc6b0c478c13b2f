"""One writer per run folder: ``nmt train`` holds an exclusive lock on ``RUN/train.lock`` for its whole life.

The lock is the operating system's (``flock``), held through an open file: it goes when the process ends,
however it ends (SIGKILL, a crash, a lost node), so a killed run never leaves a stale lock to clear by hand.
The file itself stays (removing it would let two processes lock two different files of one name); it
holds who has it (host, process id, start time), for the message that refuses a second trainer.

Multi-process runs take it on the writing rank (rank 0) only, before anything is written.

What it does not guarantee (docs/robustness.md): on NFS, Linux implements ``flock`` with the server's byte-
range locks (NFSv4 leases, NFSv3 NLM), which hold across clients, but a client that stays unreachable longer
than its lease (about 90 s) loses the lock while its process may still write; mounts with ``nolock`` or
``local_lock=flock``, and Lustre without ``-o flock``, give locks that only this machine sees. A file system
that refuses locks altogether gets a warning, and the run goes on unlocked.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from nmt import atomic
from nmt.errors import NmtError

LOCK_FILE = "train.lock"
# What a file system without locks answers: NFS without a lock manager, FUSE file systems, Lustre without -o flock.
_UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)


@dataclass
class RunLock:
    """The lock on one run folder, held while ``fd`` is open (``fd`` is None when the file system refused
    locks and the run goes on unlocked, ``warning`` saying so)."""

    save_dir: Path
    fd: int | None
    warning: str | None = None

    def release(self) -> None:
        """Let go of the lock (also what the end of the process does)."""
        if self.fd is not None:
            os.close(self.fd)  # closing the only descriptor of the open file releases its flock
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def holder_line() -> str:
    """Who holds a lock: what this process writes into the lock file."""
    return f"pid {os.getpid()} on host {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}"


def lock_run(save_dir: Path) -> RunLock:
    """Create ``save_dir`` if needed and lock it for this process; raise an ``NmtError`` naming the folder and
    the holder if another process has it."""
    atomic.make_dir(save_dir)
    path = save_dir / LOCK_FILE
    with atomic.os_faults(path):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_holder(fd)
        os.close(fd)
        raise NmtError(f"{save_dir} is in use by another nmt train ({holder}); wait for it to end, or train into another --save-dir") from None
    except OSError as err:
        os.close(fd)
        if err.errno in _UNSUPPORTED:
            return RunLock(save_dir, None, f"[yellow]{save_dir}: this file system does not support locks ({err.strerror}); "
                                           "nothing stops a second nmt train from writing into this folder at the same time")
        raise atomic.fault(err, path) from err
    with atomic.os_faults(path):
        line = (holder_line() + "\n").encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, line, 0)
    return RunLock(save_dir, fd)


def _read_holder(fd: int) -> str:
    """The holder's line from the lock file, or why it is not known (written a moment after locking)."""
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text.splitlines()[0] if text else "holder not known yet"
