"""What several test modules build the same way: the tiny model, a checkpoint of it, corpora and prepared
datasets, and a reader of the attention page. (Test modules never import each other; they import from here.)"""

from __future__ import annotations

import builtins
import errno
import os
import platform
import subprocess
from contextlib import contextmanager
from dataclasses import asdict
from html.parser import HTMLParser
from pathlib import Path
from types import ModuleType
from typing import IO, Any, Iterator

import pytest
import sentencepiece as spm
import torch

from nmt import checkpoint
from nmt.kernels import native
from nmt.model.config import model_config
from nmt.model.transformer import Transformer

TINY = dict(d_model=32, d_ff=64, heads=2, dropout=0.0)  # two layers of each stack (the preset's)


def tiny_model(vocab_size: int = 40, seed: int = 0, offset_vectors: bool = False, **overrides: Any) -> Transformer:
    """The tests' Transformer: two layers of width 32, two heads, no dropout, weights drawn from ``seed``, in
    evaluation mode. ``offset_vectors`` moves every bias and layer norm off its initial value (0 or 1), so
    that a misplaced one shows; ``overrides`` change any ``ModelConfig`` field."""
    torch.manual_seed(seed)
    model = Transformer(model_config("tiny", vocab_size=vocab_size, **{**TINY, **overrides}))
    if offset_vectors:
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 1:
                    p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def prepare_local(corpus: Path, dest: Path, vocab_size: int, **options: Any) -> Path:
    """``nmt prepare local`` of an EN-DE ``corpus`` folder (train, and dev and test where present) into ``dest``,
    with one worker; ``options`` are further ``PrepareConfig`` fields."""
    from nmt.data.prepare import PrepareConfig, prepare

    present = lambda split: str(corpus / split) if (corpus / f"{split}.en").exists() else None  # noqa: E731
    prepare(PrepareConfig(corpus="local", dest=dest, src="en", tgt="de", train=str(corpus / "train"), valid=present("dev"),
                          test=present("test"), vocab_size=vocab_size, **{"workers": 1, **options}))
    return dest


def vocab_tensor(spm_model: Path) -> torch.Tensor:
    """The SentencePiece model as a checkpoint carries it: its bytes as a uint8 tensor."""
    return torch.frombuffer(bytearray(spm_model.read_bytes()), dtype=torch.uint8)


def random_checkpoint(spm_model: Path, path: Path, **overrides: Any) -> Path:
    """An untrained tiny model (``offset_vectors``, seed 0) with ``spm_model``'s vocabulary, saved as a
    checkpoint that searches with beam 2 and at most |source| + 1 + 6 output tokens (its [decode] settings)."""
    size = spm.SentencePieceProcessor(model_file=str(spm_model)).get_piece_size()
    model = tiny_model(size, offset_vectors=True, **overrides)
    checkpoint.save({"model": model.state_dict(), "model_config": asdict(model.cfg), "vocab": vocab_tensor(spm_model),
                     "config": {"decode": {"beam": 2, "max_len_b": 6}}, "manifest": {"src": "en", "tgt": "de"}}, path)
    return path


def assert_same_model(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Parameters of two runs that summed the same numbers in another order (other ranks, threads, kernels or
    memory alignment) agree to rounding, but for the few elements whose gradient is itself rounding noise:
    Adam turns noise of either sign into steps of about ±lr. The key biases are all such elements (softmax
    ignores a shift of every score, so their gradient is 0 in exact arithmetic) and are left out; elsewhere
    the odd weight whose gradient cancels to almost nothing is, and which one depends on the CPU's kernels,
    so up to one element in a thousand of a tensor may differ, by no more than a few such steps (lr stays
    below 0.01 in these runs). A bug in the data order, the gradient reduction or resumption moves most
    elements of a tensor."""
    assert a.keys() == b.keys()
    for k in a:
        x, y = a[k], b[k]
        if k.endswith("in_proj_bias"):  # [query | key | value] with d_k = d_v
            (qx, _, vx), (qy, _, vy) = x.chunk(3), y.chunk(3)
            x, y = torch.cat([qx, vx]), torch.cat([qy, vy])
        apart = ~torch.isclose(x, y, atol=1e-5, rtol=1e-4)
        assert torch.isfinite(x).all() and torch.isfinite(y).all() and float((x - y).abs().max()) < 0.05, k
        assert int(apart.sum()) <= max(1, x.numel() // 1000), (
            f"{k}: {int(apart.sum())} of {x.numel()} elements differ, by up to {float((x - y).abs().max()):.3g}")


class Grids(HTMLParser):
    """Collects each map of the page: its data attributes, rows × columns, header labels and cell titles."""

    def __init__(self) -> None:
        super().__init__()
        self.grids: list[dict] = []
        self.external: list[str] = []
        self.scripts = 0
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "script":
            self.scripts += 1
        if any(k in a for k in ("src", "href")) or tag in ("link", "iframe", "img"):
            self.external.append(f"{tag} {a}")
        if tag == "section" and "grid" in (a.get("class") or ""):
            self.grids.append({"kind": a["data-kind"], "layer": int(a["data-layer"]), "head": a["data-head"],
                               "hidden": "hidden" in a, "cols": [], "rows": [], "cells": []})
        elif tag == "tr" and self.grids:
            self.grids[-1]["cells"].append([])
        elif tag == "td":
            self.grids[-1]["cells"][-1].append(a)
        elif tag == "th":
            self._in = a.get("class")

    def handle_endtag(self, tag: str) -> None:
        if tag == "th":
            self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "col":
            self.grids[-1]["cols"].append(data)
        elif self._in == "row":
            self.grids[-1]["rows"].append(data)


# ------------------------------------------------------------------ operating-system faults

@contextmanager
def small_disk(folder: Path, kib: int, read_only: bool = False) -> Iterator[Path]:
    """A tmpfs of ``kib`` KiB mounted on ``folder`` (read-only if asked) for the block, the real fault of a
    full or read-only disk. Skips the test where mounting is not allowed (not root, a container without
    CAP_SYS_ADMIN); every such test has a twin that injects the same fault (``fail_writes``)."""
    folder.mkdir(parents=True, exist_ok=True)
    options = f"size={kib}k" + (",ro" if read_only else "")
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("no mount command here; the injected-fault twin of this test covers the fault")
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or 'refused'}); the injected-fault twin of this test covers the fault")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


class Disk:
    """The room left on a pretend disk, shared by the files opened through ``fail_writes``."""

    def __init__(self, room: int, code: int) -> None:
        self.room, self.code = room, code

    def fault(self) -> OSError:
        return OSError(self.code, os.strerror(self.code))


class FailingFile:
    """A real file whose writes fail as the kernel's do once its disk is full: what fits is written (a short
    write), then OSError with the errno; everything else goes to the real file."""

    def __init__(self, f: IO, disk: Disk) -> None:
        self.f, self.disk = f, disk

    def write(self, data: Any) -> int:
        if isinstance(data, str):  # text: all or nothing (a text file's buffer hides short writes anyway)
            if len(data.encode()) > self.disk.room:
                raise self.disk.fault()
            self.disk.room -= len(data.encode())
            return self.f.write(data)
        raw = memoryview(data).cast("B")
        fits = min(len(raw), self.disk.room)
        if fits:
            self.f.write(raw[:fits])
            self.disk.room -= fits
        if fits < len(raw):
            raise self.disk.fault()
        return len(raw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.f, name)

    def __enter__(self) -> "FailingFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.f.close()


def fail_writes(monkeypatch: pytest.MonkeyPatch, module: ModuleType, code: int = errno.ENOSPC, room: int = 0, at_open: bool = False) -> Disk:
    """Inject an OS fault into the files ``module`` opens for writing (through its name ``open``): their
    writes fail with ``code`` once ``room`` bytes have been written in all, or (``at_open``) opening one
    fails, as a permission or a read-only file system does. For machines where ``small_disk`` cannot mount."""
    real = builtins.open
    disk = Disk(room, code)

    def opener(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if not any(c in mode for c in "wax+"):
            return real(file, mode, *args, **kwargs)
        if at_open:
            raise OSError(code, os.strerror(code), str(file))
        return FailingFile(real(file, mode, *args, **kwargs), disk)

    monkeypatch.setattr(module, "open", opener, raising=False)
    return disk


def dot_files(folder: Path) -> list[str]:
    """Temporaries (dot names) anywhere under ``folder``: what a failed write must not leave behind."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*"))


# ------------------------------------------------------------------------------------------ nmt serve

def http(port: int, method: str, path: str, body: bytes | str | dict | list | None = None, headers: dict[str, str] | None = None,
         timeout: float = 60) -> tuple[int, dict[str, str], Any]:
    """One request to the server on 127.0.0.1:``port``: (status, headers, JSON body, or text where not JSON).
    A dict or list body is sent as JSON, bytes as they are."""
    import http.client
    import json

    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        raw = response.read()
        found = {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()
    try:
        return response.status, found, json.loads(raw)
    except ValueError:
        return response.status, found, raw.decode("utf-8", errors="replace")


class ServeProcess:
    """``nmt serve ARGS --port 0`` in a subprocess (this checkout's code), ready once /health says so; stopped
    with SIGTERM when the ``with`` block ends (killed if it has not stopped within ``stop_timeout``)."""

    def __init__(self, *args: str, ready_timeout: float = 120, stop_timeout: float = 60) -> None:
        self.args, self.ready_timeout, self.stop_timeout = args, ready_timeout, stop_timeout
        self.port = 0
        self.stderr = ""

    def __enter__(self) -> "ServeProcess":
        import re
        import subprocess
        import sys
        import time

        root = Path(__file__).resolve().parents[1]
        self.proc = subprocess.Popen([sys.executable, "-m", "nmt", "serve", *self.args, "--port", "0"], cwd=root,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first = self.proc.stdout.readline()  # printed once the socket listens, before the model loads
        found = re.search(r"http://127\.0\.0\.1:(\d+)/", first)
        if not found:
            self.proc.kill()
            raise RuntimeError(f"nmt serve did not start: {first}{self.proc.stderr.read()}")
        self.port = int(found.group(1))
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nmt serve exited with {self.proc.returncode}: {self.proc.stderr.read()}")
            if http(self.port, "GET", "/health")[0] == 200:
                return self
            time.sleep(0.1)
        self.proc.kill()
        raise RuntimeError("nmt serve was not ready in time")

    def stop(self) -> int:
        """SIGTERM, then the exit status (the process is killed after ``stop_timeout`` seconds)."""
        import signal
        import subprocess

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.stderr = self.proc.stderr.read()
        return self.proc.returncode

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.proc.stdout.close()
        self.proc.stderr.close()

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample of /metrics (0 when absent)."""
        wanted = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
        for line in http(self.port, "GET", "/metrics")[2].splitlines():
            if line.split(" ")[0] == wanted:
                return float(line.split(" ")[1])
        return 0.0


# x86-64 levels below an AVX-512 CPU's, with the flags Linux lists for each: the C library built for them
# (NMT_NATIVE_MARCH) has the narrower vectors of AVX2 (8 floats) or SSE (4), whose code the suite then tests
# on any x86-64 CPU that can run it.
OLDER_TARGETS = {"x86-64-v3": (8, ("avx2", "fma", "bmi2", "movbe")), "x86-64-v2": (4, ("sse4_2", "popcnt", "ssse3"))}


def use_native_target(target: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make this test's C library the one built for ``target`` ("native", or one of ``OLDER_TARGETS``); skips
    where no compiler is, or where this CPU cannot run that target's code."""
    if native._compiler() is None:
        pytest.skip("no C compiler on this machine: the torch path is tested")
    if target == "native":
        monkeypatch.delenv("NMT_NATIVE_MARCH", raising=False)
    else:
        width, flags = OLDER_TARGETS[target]
        cpu = native._cpu_signature()
        if platform.machine() not in ("x86_64", "AMD64") or not all(f" {flag}" in cpu for flag in flags):
            pytest.skip(f"this CPU cannot run code built for {target}")
        monkeypatch.setenv("NMT_NATIVE_MARCH", target)
    monkeypatch.setattr(native, "_loaded", [])
    lib = native.library()
    if lib is None:
        pytest.fail(f"a C compiler is here, but the C library of decoding for {target} could not be built or was wrong")
    if target != "native":
        assert lib.nmt_vector_width() == width
