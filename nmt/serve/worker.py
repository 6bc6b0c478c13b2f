"""The PyTorch model of ``nmt serve`` searched in a process of its own, beside the HTTP process.

In one process, the decoding thread and the HTTP event loop share Python's global interpreter lock. A search
step is some 190 torch calls, each of which gives the lock up and takes it back, and each take waits while the
event loop holds it: with 64 clients on 2 cores the decoding thread computed for 72-77 % of its time and waited
for the rest (docs/performance.md, "Serving"). In a process of its own it waits for nothing.

``ProcessEngine`` is the server's side: the ``Engine`` the batcher calls, which tokenizes in the server's
process and sends token ids to the decoding process over a pipe; that process runs ``TorchEngine``, exactly
what ``nmt translate`` runs, and sends each segment's hypotheses back as its search ends. The decoding
process ignores SIGINT and SIGTERM (a service manager sends them to every process of the service, and the
server stops in order: it drains its queue, then closes the pipe) and ends when the pipe closes, also when
the server was killed. If the decoding process dies, the batch it was decoding fails and the next batch
starts a new one.
"""

from __future__ import annotations

import multiprocessing
import signal
import sys
import threading
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Callable, Sequence

from nmt.decode.config import DecodeConfig
from nmt.errors import NmtError
from nmt.inspect.attend import SentenceAttention
from nmt.serve.engine import Output


class DecoderDied(RuntimeError):
    """The decoding process ended while it had work (killed, or out of memory)."""


class ProcessEngine:
    """Checkpoints searched as ``TorchEngine`` searches them, in a decoding process of their own, with
    ``threads`` torch threads there."""

    has_scores = True
    has_attention = True

    def __init__(self, checkpoints: Sequence[Path], device: str = "auto", dtype: str = "fp32", threads: int = 1,
                 **decode_overrides: object) -> None:
        self._args = ([str(p) for p in checkpoints], device, dtype, threads, decode_overrides)
        self.lock = threading.Lock()  # one request on the pipe at a time: a batch, or the page's attention pass
        self._conn: Connection | None = None
        self._process: multiprocessing.process.BaseProcess | None = None
        info = self._start()
        import sentencepiece as spm

        self.decode: DecodeConfig = info["decode"]
        self.max_source_tokens: int = info["max_source_tokens"]
        self.src_lang, self.tgt_lang = info["src_lang"], info["tgt_lang"]
        self.description: str = info["description"]
        self._spm = spm.SentencePieceProcessor(model_proto=info["spm"])

    def _start(self) -> dict[str, Any]:
        """Start the decoding process and wait until its model is loaded; its description of the model."""
        # spawn, not fork: the server's process has threads (and may hold torch's), which a fork does not carry.
        ctx = multiprocessing.get_context("spawn")
        ours, theirs = ctx.Pipe()
        process = ctx.Process(target=_serve_pipe, args=(theirs, *self._args), name="nmt-decode", daemon=True)
        process.start()
        theirs.close()
        self._conn, self._process = ours, process
        kind, payload = self._receive()
        if kind != "ready":
            self.close()
            raise NmtError(payload)
        return payload

    def tokenize(self, text: str) -> list[int]:
        """``Translator.tokenize``: the same normalisation and SentencePiece model, in the server's process."""
        from nmt.data.text import normalise

        return self._spm.encode(normalise(text, self.src_lang))

    def translate(self, sources: list[Sequence], decode: DecodeConfig,
                  on_done: Callable[[int, list[Output]], None] | None = None) -> list[list[Output]]:
        """``TorchEngine.translate`` in the decoding process; ``on_done`` is called here as each search ends."""
        results: list[list[Output] | None] = [None] * len(sources)
        with self.lock:
            self._request(("translate", [list(s) for s in sources], decode, on_done is not None))
            while True:
                kind, payload = self._receive()
                if kind == "done":
                    i, outputs = payload
                    results[i] = outputs
                    assert on_done is not None
                    on_done(i, outputs)
                elif kind == "result":
                    return [late if early is None else early for early, late in zip(results, payload)]
                else:
                    raise _error(kind, payload)

    def attention(self, source: Sequence, best: Output) -> SentenceAttention:
        """``TorchEngine.attention`` in the decoding process."""
        with self.lock:
            self._request(("attention", list(source), best))
            kind, payload = self._receive()
        if kind != "attention":
            raise _error(kind, payload)
        return payload

    def close(self) -> None:
        """End the decoding process (it ends when its pipe closes)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._process is not None:
            self._process.join(timeout=10)
            if self._process.is_alive():
                self._process.kill()
                self._process.join()
            self._process = None

    def _request(self, message: tuple) -> None:
        if self._process is None or not self._process.is_alive():  # died since the last request: a new one
            code = None if self._process is None else self._process.exitcode
            print(f"nmt serve: the decoding process ended (exit code {code}); starting a new one", file=sys.stderr, flush=True)
            self.close()
            self._start()
        assert self._conn is not None
        try:
            self._conn.send(message)
        except OSError:
            raise self._died() from None

    def _receive(self) -> tuple[str, Any]:
        assert self._conn is not None
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            raise self._died() from None

    def _died(self) -> DecoderDied:
        process = self._process
        code = None
        if process is not None:
            process.join(timeout=5)
            code = process.exitcode
        self.close()
        return DecoderDied(f"the decoding process ended (exit code {code}); the next batch starts a new one")


def _error(kind: str, payload: str) -> Exception:
    """What the decoding process reported: nmt's one-line errors as such, anything else as a RuntimeError."""
    return NmtError(payload) if kind == "nmt-error" else RuntimeError(payload)


def _serve_pipe(conn: Connection, checkpoints: list[str], device: str, dtype: str, threads: int, overrides: dict) -> None:
    """The decoding process: load the model, say so, then answer requests until the pipe closes."""
    for sig in (signal.SIGINT, signal.SIGTERM):  # the server decides when this process ends: it closes the pipe
        signal.signal(sig, signal.SIG_IGN)
    import torch

    from nmt.serve.engine import TorchEngine

    torch.set_num_threads(threads)
    try:
        engine = TorchEngine([Path(p) for p in checkpoints], device=device, dtype=dtype, **overrides)
    except Exception as err:  # noqa: BLE001 - the server reports it as its one-line error and stops
        conn.send(("error", str(err) if isinstance(err, NmtError) else f"{type(err).__name__}: {err}"))
        return
    translator = engine.translator
    conn.send(("ready", {"decode": engine.decode, "max_source_tokens": engine.max_source_tokens, "src_lang": engine.src_lang,
                         "tgt_lang": engine.tgt_lang, "description": engine.description, "spm": translator.spm.serialized_model_proto()}))
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):  # the server closed the pipe, or is gone
            return
        try:
            if request[0] == "translate":
                _, sources, decode, early = request
                sent: set[int] = set()

                def done(i: int, outputs: list[Output]) -> None:
                    conn.send(("done", (i, outputs)))
                    sent.add(i)

                found = engine.translate(sources, decode, done if early else None)
                conn.send(("result", [None if i in sent else outputs for i, outputs in enumerate(found)]))
            else:
                _, source, best = request
                conn.send(("attention", engine.attention(source, best)))
        except (BrokenPipeError, ConnectionResetError):
            return
        except NmtError as err:
            conn.send(("nmt-error", str(err)))
        except Exception as err:  # noqa: BLE001 - the batch fails, this process lives on
            conn.send(("error", f"{type(err).__name__}: {err}"))
