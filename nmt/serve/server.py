"""Running ``nmt serve``: bind the socket, say who can reach it, load the model while the port already answers
``/health``, run uvicorn, and stop in order.

Stopping: on SIGTERM (or Ctrl-C) uvicorn closes the listening socket, lets every request in flight finish
(their segments are in the queue, and the decoding thread keeps going), then ends the application, which
drains the batcher. The process then exits 0: uvicorn would re-raise the signal after its orderly stop, and a
service manager would take that finished stop for a kill.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import socket
import sys
import threading
import time
from typing import Callable, Iterator

import uvicorn

from nmt.errors import NmtError
from nmt.serve.app import State, create_app
from nmt.serve.batcher import Batcher
from nmt.serve.config import ServeConfig
from nmt.serve.engine import CT2Engine, Engine
from nmt.serve.worker import ProcessEngine


class _Server(uvicorn.Server):
    """uvicorn's server, ending with status 0 after an orderly stop on SIGTERM or SIGINT."""

    def __init__(self, config: uvicorn.Config, state: State) -> None:
        super().__init__(config)
        self.state = state

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: object) -> None:
        if not self.should_exit:
            depth = self.state.batcher.depth if self.state.batcher else 0
            # os.write, not print: a signal handler may interrupt a print of the main thread.
            queued = f"{depth} queued segment{'' if depth == 1 else 's'}"
            os.write(2, f"nmt serve: {signal.Signals(sig).name}: no new connections; finishing {queued}\n".encode())
        self.state.stopping = True
        super().handle_exit(sig, frame)  # type: ignore[arg-type]


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (0: a free port), or a one-line error."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # "::" takes IPv4 clients as well
        sock.bind(address)
        sock.listen(2048)
    except OSError as err:
        raise NmtError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    sock.set_inheritable(True)
    return sock


def reach(host: str, port: int) -> str:
    """Who can now reach the server: this machine only for a loopback address, else whom it is exposed to."""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)}
    except OSError:
        addresses = {host}
    if all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
        return "loopback: this machine only"
    if any(ipaddress.ip_address(a.split("%")[0]).is_unspecified for a in addresses):
        try:
            mine = sorted({i[4][0] for i in socket.getaddrinfo(socket.gethostname(), None)} - {"127.0.0.1", "::1"})
        except OSError:
            mine = []
        where = f"every network interface of this machine ({', '.join(mine) or 'its addresses'})"
    else:
        where = ", ".join(sorted(addresses))
    return (f"WARNING: anyone who can reach {where} on port {port} can translate and read the page; "
            "nmt serve has no authentication and no TLS (put a reverse proxy in front for those)")


def load(cfg: ServeConfig) -> Engine:
    """The model: PyTorch checkpoints, or the CTranslate2 folder."""
    decode = {k: v for k, v in cfg.decode.items() if v is not None}
    if cfg.ctranslate2 is not None:
        if cfg.device not in ("auto", "cpu", "cuda"):
            raise NmtError(f"--device {cfg.device}: with --ctranslate2, auto, cpu or cuda")
        return CT2Engine(cfg.ctranslate2, threads=decoding_threads(cfg), device=cfg.device, **decode)
    return ProcessEngine(cfg.checkpoints, device=cfg.device, dtype=cfg.dtype, threads=decoding_threads(cfg), **decode)


def decoding_threads(cfg: ServeConfig) -> int:
    """``--threads``, else the cores less one: the HTTP side needs the other. OpenMP's threads wait for each
    other at every operation, so one that the event loop pushes off its core stalls the whole decoding step."""
    return cfg.threads or max(1, (os.cpu_count() or 2) - 1)


def start_loading(cfg: ServeConfig, state: State, failed: Callable[[str], None]) -> threading.Thread:
    """Load the model in a thread, then start the batcher and mark ``state`` ready; ``failed`` gets nmt's
    one-line error instead. The port answers meanwhile: ``/health`` says ``loading``."""

    def loader() -> None:
        start = time.monotonic()
        try:
            engine = load(cfg)
        except Exception as err:  # noqa: BLE001 - reported as nmt's one-line error, and the server stops
            failed(str(err) if isinstance(err, NmtError) else f"{type(err).__name__}: {err}")
            return
        if state.stopping:  # stopped while the model loaded: nothing was accepted, nothing to drain
            engine.close()
            return
        batcher = Batcher(engine, state.metrics, cfg.limits.max_queue, cfg.max_wait_ms / 1000)
        batcher.start()

        def shutdown() -> None:
            batcher.close()
            engine.close()

        state.on_shutdown = shutdown
        state.engine, state.batcher = engine, batcher
        state.metrics.ready.set(1)
        d = engine.decode
        print(f"nmt serve: ready in {time.monotonic() - start:.1f} s: {engine.description}; beam {d.beam}, {d.penalty} penalty "
              f"α {d.lenpen}, stop {d.stop}; batches of {d.max_tokens} tokens after at most {cfg.max_wait_ms:g} ms", flush=True)

    thread = threading.Thread(target=loader, name="nmt-load", daemon=True)
    thread.start()
    return thread


def serve(cfg: ServeConfig) -> None:
    """Serve until SIGTERM or Ctrl-C; NmtError if the socket or the model cannot be had. A checkpoint's server
    process imports no torch: the model and torch live in the decoding process."""
    sock = bind(cfg.host, cfg.port)
    host, port = sock.getsockname()[:2]
    state = State(cfg.limits)
    server = _Server(uvicorn.Config(create_app(state), log_level="warning", access_log=False, lifespan="on",
                                    timeout_graceful_shutdown=None, server_header=False), state)
    shown = f"[{host}]" if ":" in host else host
    print(f"nmt serve: listening on http://{shown}:{port}/ ({reach(cfg.host, port)})", flush=True)
    failure: list[str] = []

    def failed(message: str) -> None:
        failure.append(message)
        server.should_exit = True

    start_loading(cfg, state, failed)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        state.metrics.ready.set(0)
    if failure:
        raise NmtError(failure[0])
    print("nmt serve: stopped", file=sys.stderr, flush=True)
