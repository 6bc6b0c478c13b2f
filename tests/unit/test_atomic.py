"""nmt.atomic: every file of nmt is written under a temporary name and renamed, so readers see old or new, never half."""

from pathlib import Path

import pytest

from nmt import atomic


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
