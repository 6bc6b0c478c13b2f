"""What several test modules build the same way: the tiny model, a checkpoint of it, corpora and prepared
datasets, and a reader of the attention page. (Test modules never import each other; they import from here.)"""

from __future__ import annotations

from dataclasses import asdict
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import sentencepiece as spm
import torch

from nmt import checkpoint
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


def head_of(corpus: Path, out: Path, counts: dict[str, int]) -> Path:
    """The first ``counts[split]`` lines of each split of ``corpus`` ({split}.en and {split}.de), as ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    for split, n in counts.items():
        for lang in ("en", "de"):
            lines = (corpus / f"{split}.{lang}").read_text(encoding="utf-8").splitlines()[:n]
            (out / f"{split}.{lang}").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return out


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
