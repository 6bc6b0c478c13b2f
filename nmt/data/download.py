"""Download with HTTP Range resume, retries with backoff and an atomic rename; verify; extract safely."""

from __future__ import annotations

import hashlib
import shutil
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable

from nmt import atomic
from nmt.errors import NmtError

CHUNK = 1 << 20
Progress = Callable[[int, int | None], None]  # (bytes so far, total or None)


def mirror_url(url: str, mirror: str | None) -> str:
    """Replace scheme and host of ``url`` by ``mirror`` (which may carry a path prefix)."""
    if not mirror:
        return url
    path = urllib.parse.urlsplit(url).path
    return mirror.rstrip("/") + path


def md5sum(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _total_from(resp: urllib.response.addinfourl, offset: int) -> int | None:
    content_range = resp.headers.get("Content-Range")  # bytes 100-199/200
    if content_range and "/" in content_range:
        total = content_range.rsplit("/", 1)[1]
        return int(total) if total.isdigit() else None
    length = resp.headers.get("Content-Length")
    return offset + int(length) if length and length.isdigit() else None


def download(
    url: str,
    dest: Path,
    md5: str | None = None,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 60.0,
    progress: Progress | None = None,
) -> Path:
    """Fetch ``url`` to ``dest``, resuming a previous ``dest.part`` with an HTTP Range request.

    The file only appears under its final name once complete and verified: its size against the
    server's, and its md5 where one is published. A retry resumes from what was already received, which is
    why the partial file has a name of its own (``.part``) that survives a failure, unlike nmt's other
    temporary files.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    last_error = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        offset = part.stat().st_size if part.exists() else 0
        request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                if offset and resp.status != 206:  # server ignored Range: start over
                    offset = 0
                total = _total_from(resp, offset)
                with open(part, "ab" if offset else "wb") as out:
                    received = offset
                    while block := resp.read(CHUNK):
                        out.write(block)
                        received += len(block)
                        if progress:
                            progress(received, total)
            if total is not None and received != total:
                last_error = f"connection closed after {received} of {total} bytes"
                continue
        except urllib.error.HTTPError as err:
            if err.code == 416 and offset:  # asked past the end: the part file is already whole
                total = offset
            else:
                last_error = f"HTTP {err.code} {err.reason}"
                if 400 <= err.code < 500 and err.code not in (408, 429):
                    break
                continue
        except (urllib.error.URLError, OSError, TimeoutError) as err:
            if isinstance(err, OSError) and err.errno in atomic.LOCAL_FAULTS:
                raise atomic.fault(err, part) from err  # a full disk: retrying would only fill it again
            last_error = str(getattr(err, "reason", err))
            continue
        if md5 and (actual := md5sum(part)) != md5:
            part.unlink()
            raise NmtError(f"{url}: md5 {actual} does not match the published {md5}; the partial file was removed, run again")
        atomic.commit(part, dest)
        return dest
    raise NmtError(f"cannot download {url} after {retries + 1} tries: {last_error}")


def verify_archive(path: Path, md5: str | None) -> None:
    """Check an archive the user supplied (``--raw-dir``) against its published md5, if any."""
    if md5 and (actual := md5sum(path)) != md5:
        raise NmtError(f"{path}: md5 {actual} does not match the published {md5}")


def _check_member(member: tarfile.TarInfo, root: Path, archive: Path) -> None:
    target = (root / member.name).resolve()
    if not target.is_relative_to(root.resolve()) or member.issym() or member.islnk() or member.isdev():
        raise NmtError(f"{archive}: member '{member.name}' would be written outside the extraction folder or is a link; refusing to extract")


def extract(archive: Path, dest: Path) -> Path:
    """Extract ``archive`` (tar, tgz) into ``dest`` atomically; refuse members that escape ``dest``.

    Extraction goes to a temporary folder renamed on success, so a truncated archive leaves nothing behind.
    """
    if dest.exists():
        return dest
    try:
        with atomic.atomic_path(dest) as tmp:
            tmp.mkdir(parents=True)
            with tarfile.open(archive, "r:*") as tar:
                for member in tar:
                    _check_member(member, tmp, archive)
                    if member.isdir():
                        (tmp / member.name).mkdir(parents=True, exist_ok=True)
                        continue
                    target = tmp / member.name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    source = tar.extractfile(member)
                    if source is None:
                        continue
                    with source, open(target, "wb") as out:
                        shutil.copyfileobj(source, out, CHUNK)
    except (tarfile.TarError, EOFError, OSError, ValueError) as err:
        raise NmtError(f"{archive}: corrupt or truncated archive ({err}); delete it and run again to re-download") from None
    return dest
