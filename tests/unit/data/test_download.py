"""nmt.data.download, the parts that need no server: mirror URLs, checksums, file:// downloads, safe extraction.

Resuming over HTTP and the WMT mirror are tested in tests/integration/test_prepare.py.
"""

import errno
import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from nmt.data.download import download, extract, md5sum, mirror_url, verify_archive
from nmt.errors import NmtError
from tests.helpers import fail_writes


def tar_bytes(members: dict[str, str], links: dict[str, str] | None = None, mode: str = "w:gz") -> bytes:
    """A tar archive of text ``members`` and, optionally, symbolic ``links`` (name → target)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for name, text in members.items():
            data = text.encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return buf.getvalue()


@pytest.mark.parametrize("mirror, expected", [
    (None, "http://www.statmt.org/wmt14/test-full.tgz"),
    ("", "http://www.statmt.org/wmt14/test-full.tgz"),
    ("http://127.0.0.1:8000", "http://127.0.0.1:8000/wmt14/test-full.tgz"),
    ("https://mirror.example/statmt/", "https://mirror.example/statmt/wmt14/test-full.tgz"),
])
def test_mirror_url(mirror: str | None, expected: str) -> None:
    assert mirror_url("http://www.statmt.org/wmt14/test-full.tgz", mirror) == expected


def test_md5_and_verify(tmp_path: Path) -> None:
    data = b"x" * (3 << 20)  # several read blocks
    (tmp_path / "a.tgz").write_bytes(data)
    digest = hashlib.md5(data).hexdigest()
    assert md5sum(tmp_path / "a.tgz") == digest
    verify_archive(tmp_path / "a.tgz", digest)
    verify_archive(tmp_path / "a.tgz", None)  # no published checksum: nothing to check
    with pytest.raises(NmtError) as err:
        verify_archive(tmp_path / "a.tgz", "0" * 32)
    assert str(err.value) == f"{tmp_path / 'a.tgz'}: md5 {digest} does not match the published {'0' * 32}"


def test_download_of_a_local_file(tmp_path: Path) -> None:
    source = tmp_path / "src.tgz"
    source.write_bytes(b"archive bytes")
    out = download(source.as_uri(), tmp_path / "raw" / "dl.tgz", md5=hashlib.md5(b"archive bytes").hexdigest(), retries=0)
    assert out == tmp_path / "raw" / "dl.tgz" and out.read_bytes() == b"archive bytes"
    assert sorted(p.name for p in out.parent.iterdir()) == ["dl.tgz"]  # no .part left
    calls: list[tuple[int, int | None]] = []
    download(source.as_uri(), tmp_path / "again.tgz", retries=0, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (13, 13)


def test_download_with_a_wrong_md5_keeps_nothing(tmp_path: Path) -> None:
    source = tmp_path / "src.tgz"
    source.write_bytes(b"tampered")
    url = source.as_uri()
    with pytest.raises(NmtError, match=rf"^{url}: md5 {hashlib.md5(b'tampered').hexdigest()} does not match the published {'f' * 32}; "):
        download(url, tmp_path / "out" / "x.tgz", md5="f" * 32, retries=0)
    assert list((tmp_path / "out").iterdir()) == []


def test_download_of_a_missing_file_fails_after_the_retries(tmp_path: Path) -> None:
    with pytest.raises(NmtError, match=r"^cannot download file://.*/none\.tgz after 2 tries: "):
        download((tmp_path / "none.tgz").as_uri(), tmp_path / "x.tgz", retries=1, backoff=0.0)
    assert not (tmp_path / "x.tgz").exists()


def test_extract(tmp_path: Path) -> None:
    (tmp_path / "a.tgz").write_bytes(tar_bytes({"test/newstest2014-src.en.sgm": "<seg id=\"1\">Hi</seg>\n", "README": "r"}))
    out = extract(tmp_path / "a.tgz", tmp_path / "a.tgz.d")
    assert (out / "test" / "newstest2014-src.en.sgm").read_text() == "<seg id=\"1\">Hi</seg>\n"
    assert (out / "README").read_text() == "r"
    # Already extracted: left as it is (a re-run does not extract again).
    (out / "README").write_text("changed")
    extract(tmp_path / "a.tgz", tmp_path / "a.tgz.d")
    assert (out / "README").read_text() == "changed"
    (tmp_path / "b.tar").write_bytes(tar_bytes({"giga-fren.release2.fixed.en.gz": "x"}, mode="w"))
    assert (extract(tmp_path / "b.tar", tmp_path / "b.d") / "giga-fren.release2.fixed.en.gz").exists()


@pytest.mark.parametrize("members, links", [
    ({"/etc/absolute.txt": "x"}, None),
    ({"ok.txt": "x", "a/../../escape.txt": "x"}, None),
    ({"ok.txt": "x"}, {"link": "/etc/passwd"}),
    ({"ok.txt": "x"}, {"inner-link": "ok.txt"}),  # links are refused even inside the folder
])
def test_extract_refuses_escaping_members_and_links(tmp_path: Path, members: dict[str, str], links: dict[str, str] | None) -> None:
    (tmp_path / "evil.tgz").write_bytes(tar_bytes(members, links))
    with pytest.raises(NmtError, match=r"would be written outside the extraction folder or is a link; refusing to extract"):
        extract(tmp_path / "evil.tgz", tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.tgz"]  # nothing extracted, no temporary folder


def test_a_full_disk_while_downloading_is_not_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A network error is worth a retry; a full disk is not (injected into the .part file's writes)."""
    from nmt.data import download as module

    source = tmp_path / "src.tgz"
    source.write_bytes(b"archive bytes" * 100)
    fail_writes(monkeypatch, module, errno.ENOSPC, room=100)
    waits: list[float] = []
    monkeypatch.setattr(module.time, "sleep", waits.append)
    with pytest.raises(NmtError) as err:
        download(source.as_uri(), tmp_path / "raw" / "dl.tgz", retries=3)
    assert str(err.value) == f"{tmp_path / 'raw' / 'dl.tgz.part'}: no space left on the device; free space there (or choose another location) and run the command again"
    assert waits == [] and not (tmp_path / "raw" / "dl.tgz").exists()


def test_a_full_disk_while_extracting_is_not_called_a_corrupt_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nmt.data import download as module

    archive = tmp_path / "a.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        data = b"line\n" * 1000
        info = tarfile.TarInfo("corpus/train.en")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    fail_writes(monkeypatch, module, errno.ENOSPC, room=1000)
    with pytest.raises(NmtError) as err:
        extract(archive, tmp_path / "a.tgz.d")
    assert str(err.value) == f"{tmp_path / 'a.tgz.d'}: no space left on the device; free space there (or choose another location) and run the command again"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tgz"]
