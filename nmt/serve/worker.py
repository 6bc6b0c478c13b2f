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
the server was killed (and at the server's exit, whatever the path to it). If the decoding process dies,
the batch it was decoding fails and the next batch starts a new one.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.util
import signal
import sys
import threading
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import sentencepiece as spm

from nmt.data.text import normalise
from nmt.decode.config import DecodeConfig
from nmt.errors import NmtError
from nmt.serve.engine import Output

if TYPE_CHECKING:
    from nmt.inspect.maps import SentenceAttention

# What a service manager or a terminal sends to every process of the server; the decoding process ignores
# them from its first instruction on (blocked while it starts, as multiprocessing's resource tracker does).
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


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
        self.lock = threading.Lock()  # one exchange on the pipe at a time: a batch, or the page's attention pass
        self._conn: Connection | None = None
        self._process: multiprocessing.process.BaseProcess | None = None
        self._at_exit: multiprocessing.util.Finalize | None = None
        self._exit_code: int | None = None  # of a decoding process that died with work
        self._info = self._start()
        self.decode: DecodeConfig = self._info["decode"]
        self.max_source_tokens: int = self._info["max_source_tokens"]
        self.src_lang, self.tgt_lang = self._info["src_lang"], self._info["tgt_lang"]
        self.description: str = self._info["description"]
        self._spm = spm.SentencePieceProcessor(model_proto=self._info["spm"])

    def _start(self) -> dict[str, Any]:
        """Start the decoding process and wait until its model is loaded; its description of the model."""
        # spawn, not fork: the server's process has threads (the event loop's, the batcher's), which a fork does not carry.
        ctx = multiprocessing.get_context("spawn")
        ours, theirs = ctx.Pipe()
        process = ctx.Process(target=_serve_pipe, args=(theirs, *self._args), name="nmt-decode", daemon=True)
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # inherited through fork and exec
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        theirs.close()
        self._conn, self._process = ours, process
        # At the server's exit by any path (a stop while the model loads, an error), before multiprocessing
        # joins its children: this one would wait for a pipe that only the exit closes.
        self._at_exit = multiprocessing.util.Finalize(None, _end_now, args=(ours, process), exitpriority=10)
        try:
            kind, payload = self._receive()
        except DecoderDied:
            raise NmtError(f"the decoding process ended while it loaded the model (exit code {self._exit_code})") from None
        if kind != "ready":
            self._abandon()
            raise NmtError(payload)
        return payload

    def tokenize(self, text: str) -> list[int]:
        """``Translator.tokenize``: the same normalisation and SentencePiece model, in the server's process."""
        return self._spm.encode(normalise(text, self.src_lang))

    def translate(self, sources: list[Sequence], decode: DecodeConfig,
                  on_done: Callable[[int, list[Output]], None] | None = None) -> list[list[Output]]:
        """``TorchEngine.translate`` in the decoding process; ``on_done`` is called here as each search ends.
        Raises ``DecoderDied`` if the decoding process dies meanwhile (the next call starts a new one)."""
        results: list[list[Output] | None] = [None] * len(sources)
        failure: Exception | None = None
        with self.lock:
            self._request(("translate", [list(s) for s in sources], decode, on_done is not None))
            try:
                while (reply := self._receive())[0] == "done":
                    i, outputs = reply[1]
                    results[i] = outputs
                    if on_done is not None:
                        try:
                            on_done(i, outputs)
                        except Exception as err:  # noqa: BLE001 - raised once the reply is read whole, the pipe in step
                            failure = failure or err
            except BaseException:
                self._abandon()  # a reply read in part leaves the pipe out of step: the next call starts anew
                raise
        kind, payload = reply
        if kind != "result":
            raise _error(kind, payload)
        if failure is not None:
            raise failure
        return [late if early is None else early for early, late in zip(results, payload, strict=True)]

    def attention(self, source: Sequence, best: Output) -> SentenceAttention:
        """``TorchEngine.attention`` in the decoding process."""
        with self.lock:
            self._request(("attention", list(source), best))
            try:
                kind, payload = self._receive()
            except BaseException:
                self._abandon()
                raise
        if kind != "attention":
            raise _error(kind, payload)
        return payload

    def close(self) -> None:
        """End the decoding process once it has finished what it is doing (it ends when its pipe closes); killed
        after 10 s."""
        locked = self.lock.acquire(timeout=30)  # the page's attention pass may still be running
        try:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            if self._process is not None:
                self._process.join(timeout=10)
            self._abandon()
        finally:
            if locked:
                self.lock.release()

    def _abandon(self) -> None:
        """Kill the decoding process, if any, and forget it."""
        if self._at_exit is not None:
            self._at_exit()  # runs _end_now once, and no more at exit
            self._at_exit = None
        self._conn, self._process = None, None

    def _request(self, message: tuple) -> None:
        if self._process is None or not self._process.is_alive():  # died since the last request: a new one
            code = self._exit_code if self._process is None else self._process.exitcode
            print(f"nmt serve: the decoding process ended (exit code {code}); starting a new one", file=sys.stderr, flush=True)
            self._abandon()
            if self._start() != self._info:
                self._abandon()
                raise NmtError("the checkpoint changed on disk since the server started; restart the server to serve it")
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
        """The decoding process is gone: its exit code kept, the process forgotten."""
        if self._process is not None:
            self._process.join(timeout=5)
            self._exit_code = self._process.exitcode
        self._abandon()
        return DecoderDied(f"the decoding process ended (exit code {self._exit_code}); the next batch starts a new one")


def _end_now(conn: Connection, process: multiprocessing.process.BaseProcess) -> None:
    """Close the pipe and kill the process if it still runs (nothing is left to drain by then)."""
    conn.close()
    if process.is_alive():
        process.kill()
    process.join(timeout=5)


def _error(kind: str, payload: str) -> Exception:
    """What the decoding process reported: nmt's one-line errors as such, anything else as a RuntimeError."""
    return NmtError(payload) if kind == "nmt-error" else RuntimeError(payload)


def _serve_pipe(conn: Connection, checkpoints: list[str], device: str, dtype: str, threads: int, overrides: dict) -> None:
    """The decoding process: load the model, say so, then answer requests until the pipe closes."""
    for sig in STOP_SIGNALS:  # the server decides when this process ends: it closes the pipe
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # blocked by the server while this process started
    import torch

    from nmt.serve.engine import TorchEngine

    torch.set_num_threads(threads)
    sending = threading.Lock()  # the translator's workers may end searches at once (several batches)

    def send(message: tuple) -> None:
        with sending:
            conn.send(message)

    try:
        try:
            engine = TorchEngine([Path(p) for p in checkpoints], device=device, dtype=dtype, **overrides)
        except Exception as err:  # noqa: BLE001 - the server reports it as its one-line error and stops
            send(("error", str(err) if isinstance(err, NmtError) else f"{type(err).__name__}: {err}"))
            return
        send(("ready", {"decode": engine.decode, "max_source_tokens": engine.max_source_tokens, "src_lang": engine.src_lang,
                        "tgt_lang": engine.tgt_lang, "description": engine.description,
                        "spm": engine.translator.spm.serialized_model_proto()}))
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
                        send(("done", (i, outputs)))
                        sent.add(i)

                    found = engine.translate(sources, decode, done if early else None)
                    send(("result", [None if i in sent else outputs for i, outputs in enumerate(found)]))
                else:
                    _, source, best = request
                    send(("attention", engine.attention(source, best)))
            except NmtError as err:
                send(("nmt-error", str(err)))
            except (BrokenPipeError, ConnectionResetError):
                raise
            except Exception as err:  # noqa: BLE001 - the batch fails, this process lives on
                send(("error", f"{type(err).__name__}: {err}"))
    except (BrokenPipeError, ConnectionResetError):  # the server is gone
        return
