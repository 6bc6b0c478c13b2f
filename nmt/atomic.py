"""Write to a temporary name, then rename: the one way every file of nmt is written.

A reader, or a run killed at any moment, sees either the old file or the complete new one, never half of
one. ``durable`` also flushes the data and the directory entry to disk before returning (checkpoints).

This is also where operating-system faults are met: a full disk, a quota, a read-only file system, a
permission, a file where a folder is needed, a folder removed while nmt writes into it. Each becomes one
``NmtError`` line naming the path and what to do (``fault``), after the temporary is removed, so the old
file, if any, is untouched and nothing half-written is left behind.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

from nmt.errors import NmtError

# A library that writes a file itself (torch.save by path, CTranslate2, safetensors) may report a failed
# write as its own exception without the errno; a file system left with less than this after such a
# failure was full.
NEARLY_FULL = 1 << 20


def temporary(path: Path) -> Path:
    """The temporary name used for ``path``: a dot file beside it, so globs for the real name miss it."""
    return path.with_name(f".{path.name}.tmp")


def _user_name(name: str | bytes | None, path: Path) -> Path:
    """The path a user knows for an OSError's file name: ``path`` for none or a temporary of ours."""
    if name is None:
        return path
    named = Path(os.fsdecode(name))
    if named.name.startswith(".") and named.name.endswith((".tmp", ".old")):
        return named.with_name(named.name[1:-4])  # .X.tmp is written for X: X is what the user asked for
    return named


def _file_in_the_way(path: Path) -> Path | None:
    """The first component of ``path``, from the root down, that exists and is not a folder."""
    for p in reversed([path, *path.parents]):
        if p.exists() and not p.is_dir():
            return p
    return None


def fault(err: OSError, path: Path) -> NmtError:
    """The one line for operating-system fault ``err``, met while writing ``path``: what went wrong, where,
    and what to do. The file named is the one the user asked for, never our temporary."""
    where = _user_name(err.filename, path)
    code = err.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        why = "disk quota exceeded" if code == errno.EDQUOT else "no space left on the device"
        return NmtError(f"{where}: {why}; free space there (or choose another location) and run the command again")
    if code == errno.EROFS:
        return NmtError(f"{where}: read-only file system; choose a location on a writable one")
    if code in (errno.EACCES, errno.EPERM):
        return NmtError(f"{where}: permission denied; check the owner and permissions of {where.parent}, or choose another location")
    if code in (errno.ENOTDIR, errno.EEXIST) and (blocker := _file_in_the_way(where)) is not None:
        return NmtError(f"{blocker} is a file where a folder is needed; move it away or choose another location")
    if code == errno.EISDIR:
        return NmtError(f"{where} is a folder where a file is needed; give a file name")
    if code == errno.ENOENT and not where.parent.is_dir():
        return NmtError(f"{where.parent}: folder not found (removed while nmt was writing?); create it or choose another location")
    if code == errno.EFBIG:
        return NmtError(f"{where}: file too large for this file system or for the process's file size limit (ulimit -f)")
    if code == errno.EIO:
        return NmtError(f"{where}: input/output error: the disk or network file system is failing; check it (dmesg) before going on")
    name = errno.errorcode.get(code or 0, "")
    return NmtError(f"{where}: {err.strerror or err}{f' ({name})' if name else ''}")


# Faults of the local file system that trying again will not cure (a download retries the others).
LOCAL_FAULTS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.ENOTDIR, errno.EISDIR})


@contextmanager
def os_faults(path: Path) -> Iterator[None]:
    """Turn an OSError of the operating system raised in the block, while ``path`` is written, into the one
    line of ``fault``. OSErrors without an errno are a library's (a gzip stream that is not one) and pass
    through for the caller to word."""
    try:
        yield
    except OSError as err:
        if err.errno is None:
            raise
        raise fault(err, path) from err


def space_left(folder: Path) -> int | None:
    """Bytes an unprivileged process may still write on ``folder``'s file system, if it can be told."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def make_dir(path: Path) -> Path:
    """``mkdir -p path``, an OS fault (a file in the way, a permission, a read-only disk) as one line."""
    with os_faults(path):
        path.mkdir(parents=True, exist_ok=True)
    return path


def _failed_write(err: BaseException, tmp: Path, path: Path) -> BaseException:
    """What to raise for ``err``, raised while ``tmp`` was written for ``path`` (before ``tmp`` is removed):
    a library's own exception for a write that failed on a full disk becomes ``fault``'s line; anything
    else is raised as it is."""
    if isinstance(err, Exception) and not isinstance(err, (OSError, NmtError)):
        left = space_left(tmp.parent)
        if left is not None and left < NEARLY_FULL:
            return fault(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), path)
    return err


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(tmp: Path, path: Path, durable: bool = False) -> None:
    """Rename ``tmp`` over ``path`` (a file or a folder)."""
    if durable and tmp.is_file():
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    os.replace(tmp, path)
    if durable:
        _fsync_dir(path.parent)


def discard(tmp: Path) -> None:
    """Remove a temporary file or folder, if it is there."""
    if tmp.is_dir() and not tmp.is_symlink():
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.unlink(missing_ok=True)


@contextmanager
def _removed_on_failure(tmp: Path, path: Path) -> Iterator[None]:
    """Remove ``tmp`` when the block raises. A library's own exception for a write that failed on a full
    disk (``_failed_write``) becomes ``fault``'s line."""
    try:
        yield
    except BaseException as err:
        raised = _failed_write(err, tmp, path)
        discard(tmp)
        if raised is not err:
            raise raised from err
        raise


@contextmanager
def atomic_path(path: Path, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for the caller (or a library) to write; rename it over
    ``path`` when the block ends normally, remove it when the block (or the rename) raises. OS faults
    become one line (``fault``)."""
    make_dir(path.parent)
    tmp = temporary(path)
    with os_faults(path), _removed_on_failure(tmp, path):
        discard(tmp)  # left over by a killed run
        yield tmp
        commit(tmp, path, durable)


def _swap_in(tmp: Path, path: Path, old: Path) -> None:
    """Rename folder ``tmp`` to ``path``, moving a non-empty folder there to ``old`` first; put it back
    if the second rename fails."""
    if path.is_dir() and not path.is_symlink() and any(path.iterdir()):
        discard(old)
        os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        if old.exists() and not path.exists():
            os.replace(old, path)
        raise
    discard(old)


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path`` to fill; when the block ends normally it takes the
    place of ``path`` (an existing folder there, empty or not, is replaced: the caller decides whether it
    may be), when the block raises it is removed. Readers see the old folder or the complete new one; while
    an old non-empty folder is swapped out, ``path`` is absent for the moment between two renames. OS
    faults become one line (``fault``)."""
    make_dir(path.parent)
    tmp, old = temporary(path), path.with_name(f".{path.name}.old")
    with os_faults(path), _removed_on_failure(tmp, path):
        discard(tmp)  # left over by a killed run
        tmp.mkdir()
        yield tmp
        _swap_in(tmp, path, old)


@contextmanager
def atomic_open(path: Path, mode: str = "w", durable: bool = False, **kwargs: Any) -> Iterator[IO]:
    """``open(path, mode)`` that only replaces ``path`` once the block has written everything."""
    if "b" not in mode:
        kwargs.setdefault("encoding", "utf-8")
    with atomic_path(path, durable) as tmp:
        with open(tmp, mode, **kwargs) as f:
            yield f


def write_text(path: Path, text: str) -> None:
    with atomic_open(path) as f:
        f.write(text)


def write_json(path: Path, obj: object, indent: int | None = 1) -> None:
    write_text(path, json.dumps(obj, indent=indent) + "\n")


def link_or_copy(source: Path, path: Path) -> None:
    """Make ``path`` the same file as ``source`` (a hard link, else a copy), replacing it atomically."""
    with atomic_path(path) as tmp:
        try:
            tmp.hardlink_to(source)
        except OSError:
            shutil.copyfile(source, tmp)
