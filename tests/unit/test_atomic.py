"""nmt.atomic: every file of nmt is written under a temporary name and renamed, so readers see old or new, never half."""

import errno
import os
import shutil
from pathlib import Path

import pytest

from nmt import atomic
from nmt.errors import NmtError
from tests.helpers import fail_writes, small_disk


def leftovers(folder: Path) -> list[str]:
    """Temporary files or folders (dot names) left in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_temporary_is_a_hidden_sibling_that_globs_miss(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint_5.pt"
    tmp = atomic.temporary(path)
    assert tmp == tmp_path / ".checkpoint_5.pt.tmp"
    tmp.write_text("half")
    assert list(tmp_path.glob("checkpoint_*.pt")) == []


def test_open_replaces_only_at_the_end(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    path.write_text("old\n")
    with atomic.atomic_open(path) as f:
        f.write("new, ")
        f.flush()
        assert path.read_text() == "old\n"  # a reader meanwhile still sees the whole old file
        f.write("complete\n")
    assert path.read_text() == "new, complete\n"
    assert leftovers(tmp_path) == []


def test_raising_block_keeps_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    path.write_text("old\n")
    with pytest.raises(KeyboardInterrupt):  # BaseException too: Ctrl-C must not leave half a file
        with atomic.atomic_open(path) as f:
            f.write("half")
            raise KeyboardInterrupt
    assert path.read_text() == "old\n"
    assert leftovers(tmp_path) == []
    with pytest.raises(RuntimeError):
        with atomic.atomic_open(tmp_path / "never.txt") as f:
            f.write("half")
            raise RuntimeError("disk full")
    assert not (tmp_path / "never.txt").exists() and leftovers(tmp_path) == []


def test_a_temporary_left_by_a_killed_run_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    atomic.temporary(path).write_text("stale bytes from a killed run, longer than the new text")
    atomic.write_text(path, "fresh")
    assert path.read_text() == "fresh" and leftovers(tmp_path) == []
    # A half-extracted folder: the new block must start from an empty temporary, not inherit its members.
    folder = tmp_path / "raw.tgz.d"
    stale = atomic.temporary(folder)
    (stale / "half").mkdir(parents=True)
    with atomic.atomic_path(folder) as tmp:
        tmp.mkdir()
        (tmp / "whole.txt").write_text("x")
    assert sorted(p.name for p in folder.iterdir()) == ["whole.txt"] and leftovers(tmp_path) == []


def test_text_is_utf8_and_binary_mode_works(tmp_path: Path) -> None:
    atomic.write_text(tmp_path / "t.txt", "Größe „%s“ …\n")
    assert (tmp_path / "t.txt").read_bytes() == "Größe „%s“ …\n".encode("utf-8")
    with atomic.atomic_open(tmp_path / "b.bin", "wb") as f:
        f.write(b"\x00\xff")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\xff"


def test_write_json_round_trips(tmp_path: Path) -> None:
    import json

    obj = {"splits": {"train": {"pairs": 3}}, "tests": ["test"], "ü": 1.5}
    atomic.write_json(tmp_path / "m.json", obj)
    assert json.loads((tmp_path / "m.json").read_text()) == obj
    assert (tmp_path / "m.json").read_text().endswith("\n")


def test_atomic_path_makes_parents_and_works_for_a_folder(tmp_path: Path) -> None:
    dest = tmp_path / "deep" / "extracted"
    with atomic.atomic_path(dest) as tmp:
        tmp.mkdir()
        (tmp / "member.txt").write_text("x")
        assert not dest.exists()
    assert (dest / "member.txt").read_text() == "x"
    assert leftovers(dest.parent) == []
    with pytest.raises(ValueError):
        with atomic.atomic_path(tmp_path / "deep" / "broken") as tmp:
            tmp.mkdir()
            (tmp / "part.txt").write_text("y")
            raise ValueError("truncated archive")
    assert not (tmp_path / "deep" / "broken").exists()
    assert leftovers(dest.parent) == []  # the half-extracted folder went with it


def test_durable_writes_files_and_folders(tmp_path: Path) -> None:
    with atomic.atomic_path(tmp_path / "ckpt.pt", durable=True) as tmp:
        tmp.write_bytes(b"weights")
    assert (tmp_path / "ckpt.pt").read_bytes() == b"weights"
    with atomic.atomic_open(tmp_path / "d.txt", durable=True) as f:
        f.write("flushed")
    assert (tmp_path / "d.txt").read_text() == "flushed"
    folder_tmp = tmp_path / ".dir.tmp"
    folder_tmp.mkdir()
    atomic.commit(folder_tmp, tmp_path / "dir", durable=True)
    assert (tmp_path / "dir").is_dir() and leftovers(tmp_path) == []


def test_discard_removes_files_folders_and_nothing(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    (tmp_path / "d" / "e").mkdir(parents=True)
    atomic.discard(tmp_path / "f")
    atomic.discard(tmp_path / "d")
    atomic.discard(tmp_path / "missing")
    assert list(tmp_path.iterdir()) == []


def test_link_or_copy_is_the_same_file_and_replaces(tmp_path: Path) -> None:
    source = tmp_path / "checkpoint_10.pt"
    source.write_bytes(b"update 10")
    last = tmp_path / "checkpoint_last.pt"
    last.write_bytes(b"update 5")
    atomic.link_or_copy(source, last)
    assert last.read_bytes() == b"update 10"
    assert last.stat().st_ino == source.stat().st_ino  # a hard link on one file system: no second copy
    # The link is replaced, not written through: saving a new numbered file leaves the old one alone.
    newer = tmp_path / "checkpoint_20.pt"
    newer.write_bytes(b"update 20")
    atomic.link_or_copy(newer, last)
    assert last.read_bytes() == b"update 20" and source.read_bytes() == b"update 10"
    assert leftovers(tmp_path) == []


def test_link_or_copy_falls_back_to_a_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Hard links fail across file systems and on some mounts; simulate that one failure.
    def refuse(self: Path, target: Path) -> None:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(Path, "hardlink_to", refuse)
    source = tmp_path / "a"
    source.write_bytes(b"payload")
    atomic.link_or_copy(source, tmp_path / "b")
    assert (tmp_path / "b").read_bytes() == b"payload"
    assert (tmp_path / "b").stat().st_ino != source.stat().st_ino
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------ operating-system faults: one line, nothing half-written


@pytest.mark.parametrize("code,expected", [
    (errno.ENOSPC, "{path}: no space left on the device; free space there (or choose another location) and run the command again"),
    (errno.EDQUOT, "{path}: disk quota exceeded; free space there (or choose another location) and run the command again"),
    (errno.EROFS, "{path}: read-only file system; choose a location on a writable one"),
    (errno.EACCES, "{path}: permission denied; check the owner and permissions of {folder}, or choose another location"),
    (errno.EPERM, "{path}: permission denied; check the owner and permissions of {folder}, or choose another location"),
    (errno.EISDIR, "{path} is a folder where a file is needed; give a file name"),
    (errno.EIO, "{path}: input/output error: the disk or network file system is failing; check it (dmesg) before going on"),
    (errno.EFBIG, "{path}: file too large for this file system or for the process's file size limit (ulimit -f)"),
    (errno.EXDEV, "{path}: Invalid cross-device link (EXDEV)"),
])
def test_each_fault_is_one_line_naming_the_file_not_its_temporary(tmp_path: Path, code: int, expected: str) -> None:
    path = tmp_path / "run" / "checkpoint_5.pt"
    path.parent.mkdir()
    err = OSError(code, os.strerror(code), str(atomic.temporary(path)))  # the OS names the file it was writing: ours
    assert str(atomic.fault(err, path)) == expected.format(path=path, folder=path.parent)
    assert str(atomic.fault(OSError(code, os.strerror(code)), path)) == expected.format(path=path, folder=path.parent)  # no name given


def test_a_file_where_a_folder_is_needed_is_named(tmp_path: Path) -> None:
    (tmp_path / "runs").write_text("a file, not a folder")
    for target in (tmp_path / "runs", tmp_path / "runs" / "base" / "deeper"):
        with pytest.raises(NmtError) as err:
            atomic.make_dir(target)
        assert str(err.value) == f"{tmp_path / 'runs'} is a file where a folder is needed; move it away or choose another location"
    with pytest.raises(NmtError, match=rf"^{tmp_path / 'runs'} is a file where a folder is needed"):
        atomic.write_json(tmp_path / "runs" / "config.json", {})
    with pytest.raises(NmtError, match=rf"^{tmp_path / 'runs'} is a file where a folder is needed"):
        with atomic.atomic_dir(tmp_path / "runs" / "export"):
            pass
    assert (tmp_path / "runs").read_text() == "a file, not a folder" and leftovers(tmp_path) == []


def test_a_folder_removed_while_writing(tmp_path: Path) -> None:
    """The folder disappears under a write (a user cleaning up, a scratch purge): its name, no traceback."""
    folder = tmp_path / "run"
    with pytest.raises(NmtError) as err:
        with atomic.atomic_open(folder / "valid.hyp") as f:
            f.write("half")
            shutil.rmtree(folder)
    assert str(err.value) == f"{folder}: folder not found (removed while nmt was writing?); create it or choose another location"


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EIO])
def test_a_write_that_fails_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    """Injected into the files nmt.atomic opens: 10 bytes fit, the rest does not (small_disk is the real one)."""
    path = tmp_path / "summary.json"
    path.write_text("old\n")
    fail_writes(monkeypatch, atomic, code, room=10)
    with pytest.raises(NmtError) as err:
        atomic.write_json(path, {"updates": list(range(100))})
    assert str(err.value) == str(atomic.fault(OSError(code, os.strerror(code)), path))  # the line each fault has (above)
    assert path.read_text() == "old\n" and leftovers(tmp_path) == []


@pytest.mark.parametrize("code", [errno.EACCES, errno.EROFS])
def test_a_file_that_cannot_be_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    """Injected: as root (CI) permissions do not bind, so opening the temporary is made to fail."""
    fail_writes(monkeypatch, atomic, code, at_open=True)
    with pytest.raises(NmtError) as err:
        atomic.write_text(tmp_path / "valid.hyp", "x")
    assert str(err.value) == str(atomic.fault(OSError(code, os.strerror(code)), tmp_path / "valid.hyp"))
    assert leftovers(tmp_path) == [] and not (tmp_path / "valid.hyp").exists()


@pytest.mark.parametrize("code", [errno.EACCES, errno.EROFS])
def test_a_folder_that_cannot_be_made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    def refuse(self: Path, *args: object, **kwargs: object) -> None:
        raise OSError(code, os.strerror(code), str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(NmtError) as err:
        atomic.write_text(tmp_path / "runs" / "base" / "config.json", "{}")
    assert str(err.value) == str(atomic.fault(OSError(code, os.strerror(code)), tmp_path / "runs" / "base"))


@pytest.mark.parametrize("call", ["fsync", "replace"])
def test_a_flush_or_rename_that_fails_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, call: str) -> None:
    """fsync reports deferred write errors (NFS, a failing disk); a rename can need a new directory block."""
    path = tmp_path / "checkpoint_last.pt"
    path.write_bytes(b"update 5")

    def fail(*args: object) -> None:
        raise OSError(errno.EIO if call == "fsync" else errno.ENOSPC, "injected")

    monkeypatch.setattr(os, call, fail)
    with pytest.raises(NmtError, match=rf"^{path}: (input/output error|no space left)"):
        with atomic.atomic_path(path, durable=True) as tmp:
            tmp.write_bytes(b"update 10")
    monkeypatch.undo()
    assert path.read_bytes() == b"update 5" and leftovers(tmp_path) == []


def test_a_failed_folder_swap_puts_the_old_folder_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "export"
    out.mkdir()
    (out / "model.bin").write_text("old")
    real, calls = os.replace, []

    def second_fails(a: object, b: object) -> None:
        calls.append(b)
        if len(calls) == 2:  # old folder moved aside; now the new one cannot take its place
            raise OSError(errno.ENOSPC, "injected")
        real(a, b)

    monkeypatch.setattr(os, "replace", second_fails)
    with pytest.raises(NmtError, match=rf"^{out}: no space left"):
        with atomic.atomic_dir(out) as tmp:
            (tmp / "model.bin").write_text("new")
    assert (out / "model.bin").read_text() == "old" and leftovers(tmp_path) == []


def test_a_library_error_on_a_full_disk_is_named_as_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CTranslate2 and safetensors write files themselves and report a full disk in their own exceptions
    (safetensors: SafetensorError 'I/O error: No space left on device'): a file system left nearly full
    says what happened. Elsewhere the library's error goes through unchanged."""
    with pytest.raises(RuntimeError, match="a bug"):
        with atomic.atomic_dir(tmp_path / "out"):
            raise RuntimeError("a bug")
    monkeypatch.setattr(atomic, "space_left", lambda folder: 4096)
    with pytest.raises(NmtError, match=rf"^{tmp_path / 'out'}: no space left on the device"):
        with atomic.atomic_dir(tmp_path / "out"):
            raise RuntimeError("Error while serializing: I/O error")
    assert leftovers(tmp_path) == []


def test_an_oserror_without_errno_is_the_callers_to_word(tmp_path: Path) -> None:
    """A library's OSError without an errno (gzip.BadGzipFile) is no OS fault: it reaches the caller as it is."""
    import gzip

    with pytest.raises(gzip.BadGzipFile):
        with atomic.atomic_path(tmp_path / "x.d"):
            raise gzip.BadGzipFile("Not a gzipped file")
    assert leftovers(tmp_path) == []


def test_a_real_full_disk(tmp_path: Path) -> None:
    """A 64 KiB tmpfs: the write fails as the kernel fails it; the old file survives whole."""
    with small_disk(tmp_path / "disk", 64) as disk:
        atomic.write_text(disk / "a.txt", "old\n")
        with pytest.raises(NmtError) as err:
            atomic.write_text(disk / "a.txt", "x" * 200_000)
        assert str(err.value) == f"{disk / 'a.txt'}: no space left on the device; free space there (or choose another location) and run the command again"
        assert (disk / "a.txt").read_text() == "old\n" and leftovers(disk) == []


def test_a_real_read_only_disk(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", 64, read_only=True) as disk:
        for write in (lambda: atomic.write_text(disk / "a.txt", "x"), lambda: atomic.make_dir(disk / "runs" / "base")):
            with pytest.raises(NmtError, match=rf"^{disk}/(a.txt|runs): read-only file system; choose a location on a writable one$"):
                write()
