"""Write to a temporary name, then rename: the one way every file of nmt is written.

A reader, or a run killed at any moment, sees either the old file or the complete new one, never half of
one. ``durable`` also flushes the data and the directory entry to disk before returning (checkpoints).
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator


def temporary(path: Path) -> Path:
    """The temporary name used for ``path``: a dot file beside it, so globs for the real name miss it."""
    return path.with_name(f".{path.name}.tmp")


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
def atomic_path(path: Path, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for the caller (or a library) to write; rename it over
    ``path`` when the block ends normally, remove it when the block raises."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary(path)
    discard(tmp)  # left over by a killed run
    try:
        yield tmp
    except BaseException:
        discard(tmp)
        raise
    commit(tmp, path, durable)


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path`` to fill; when the block ends normally it takes the
    place of ``path`` (an existing folder there, empty or not, is replaced: the caller decides whether it
    may be), when the block raises it is removed. Readers see the old folder or the complete new one; while
    an old non-empty folder is swapped out, ``path`` is absent for the moment between two renames."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = temporary(path), path.with_name(f".{path.name}.old")
    discard(tmp)  # left over by a killed run
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        discard(tmp)
        raise
    if path.is_dir() and not path.is_symlink() and any(path.iterdir()):
        discard(old)
        os.replace(path, old)
    os.replace(tmp, path)
    discard(old)


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
