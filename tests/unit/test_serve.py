"""nmt/serve/ in parts: the batcher over the real tiny checkpoint (grouping, bounds, cancelling, draining), the
decoding process and its pipe (answers, errors, death), the application in this process while its model
loads, and the words the server says about who can reach it."""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import uvicorn

from nmt.decode.order import token_batches
from nmt.serve.api import field_name
from nmt.serve.app import State, create_app
from nmt.serve.batcher import Batcher, Closed, QueueFull
from nmt.serve.config import Limits, ServeConfig
from nmt.serve.engine import TorchEngine
from nmt.serve.metrics import Metrics
from nmt.serve.server import bind, reach, start_loading
from nmt.serve.worker import DecoderDied, ProcessEngine
from tests.helpers import http

CKPT = Path(__file__).resolve().parents[1] / "fixtures" / "tiny" / "checkpoint.pt"
SOURCES = ["Open the file.", "Quit", "Do you want to save the changes to the document before closing?", "Upload", "Delete this file?",
           "No internet connection"]


@pytest.fixture(scope="module")
def engine() -> TorchEngine:
    return TorchEngine([CKPT], device="cpu")


@pytest.fixture(scope="module")
def process_engine() -> ProcessEngine:
    engine = ProcessEngine([CKPT], device="cpu")
    yield engine
    engine.close()


def count(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_token_batches_cut_longest_first_by_padded_tokens() -> None:
    assert token_batches([3, 9, 1, 9, 4], 20) == [[1, 3], [4, 0, 2]]  # widths 10 (2 fit 20) then 5 (4 fit)
    assert token_batches([30, 2], 8) == [[0], [1]]  # longer than the budget: a batch alone


def test_segments_of_several_jobs_share_a_batch_per_setting(engine: TorchEngine) -> None:
    """Three jobs queued before the thread starts: the two with the server's settings are decoded in one
    batch, the one with beam 2 in another; each gets what the translator gives it alone."""
    metrics = Metrics()
    batcher = Batcher(engine, metrics, max_queue=100, max_wait=0)
    ids = [engine.tokenize(s) for s in SOURCES]
    beam2 = replace(engine.decode, beam=2)
    jobs = [batcher.submit(ids[:4], engine.decode), batcher.submit(ids[4:], beam2), batcher.submit(ids[2:3], engine.decode)]
    batcher.start()
    found = [job.future.result(timeout=60) for job in jobs]
    batcher.close()
    alone = lambda i, d: [h.tokens for h in engine.translator.translate_ids([ids[i]], d)[0]]  # noqa: E731
    assert [[list(o.tokens) for o in hyps] for hyps in found[0]] == [alone(i, engine.decode) for i in range(4)]
    assert [[list(o.tokens) for o in hyps] for hyps in found[1]] == [alone(i, beam2) for i in (4, 5)]
    assert [o.text for o in found[2][0]] == [o.text for o in found[0][2]]
    assert count(metrics, "nmt_batch_segments_count") == 2 and count(metrics, "nmt_batch_segments_sum") == 7
    assert count(metrics, "nmt_queue_depth") == 0


@pytest.mark.parametrize("kind", ["engine", "process_engine"])
def test_a_short_segment_is_answered_before_its_batch_ends(kind: str, request: pytest.FixtureRequest) -> None:
    """A job's answer goes out as soon as its last segment's search ends, not when its batch's longest does:
    its client can send its next request meanwhile. Through the decoding process too."""
    engine = request.getfixturevalue(kind)
    batcher = Batcher(engine, Metrics(), max_queue=10, max_wait=0)
    long = "Do you want to save the changes to the document before closing? " * 4
    short, slow = batcher.submit([engine.tokenize("Quit")], engine.decode), batcher.submit([engine.tokenize(long)], engine.decode)
    at: dict[str, float] = {}
    short.future.add_done_callback(lambda _: at.setdefault("short", time.monotonic()))
    slow.future.add_done_callback(lambda _: at.setdefault("slow", time.monotonic()))
    batcher.start()
    slow.future.result(timeout=60)
    batcher.close()
    assert batcher.metrics.registry.get_sample_value("nmt_batch_segments_count") == 1  # one batch held both
    assert at["slow"] - at["short"] > 0.005  # the long search went on for many steps after the short one's answer


def test_the_decoding_process_answers_as_the_translator_does(engine: TorchEngine, process_engine: ProcessEngine) -> None:
    """Tokens, texts and scores of every hypothesis, and the attention pass, as ``TorchEngine`` gives them in
    this process; the pipe stays in step after a failing ``on_done``, and after an error in the model."""
    ids = [engine.tokenize(s) for s in SOURCES]
    assert [process_engine.tokenize(s) for s in SOURCES] == ids
    assert (process_engine.decode, process_engine.max_source_tokens) == (engine.decode, engine.max_source_tokens)
    nbest = replace(engine.decode, nbest=2)
    assert process_engine.translate(ids, nbest) == engine.translate(ids, nbest)
    early: dict[int, list] = {}
    got = process_engine.translate(ids, engine.decode, lambda i, outputs: early.setdefault(i, outputs))
    assert got == engine.translate(ids, engine.decode) and early == dict(enumerate(got))
    best = got[0][0]
    mine, theirs = engine.attention(ids[0], best), process_engine.attention(ids[0], best)
    assert theirs.source == mine.source and theirs.target_out == mine.target_out
    for maps in ("encoder", "decoder", "cross"):  # one torch thread there, this process's count here: last bits
        np.testing.assert_allclose(getattr(theirs, maps), getattr(mine, maps), atol=1e-4)

    def fails(i: int, outputs: list) -> None:
        raise ValueError("a callback that fails")

    with pytest.raises(ValueError, match="a callback that fails"):  # after the whole reply was read
        process_engine.translate(ids, engine.decode, fails)
    with pytest.raises(RuntimeError, match="IndexError"):  # an id beyond the vocabulary: the model raises there
        process_engine.translate([[10**6]], engine.decode)
    words = lambda found: [[(o.text, o.tokens) for o in hyps] for hyps in found]  # noqa: E731 - scores' last bits follow the padding
    assert words(process_engine.translate(ids[:2], engine.decode)) == words(got[:2])  # in step: this batch's own answers


def test_a_decoding_process_killed_during_a_batch_fails_that_batch_and_is_replaced(engine: TorchEngine,
                                                                                  capsys: pytest.CaptureFixture) -> None:
    """SIGKILL (the out-of-memory killer, say) while a batch decodes: that batch raises ``DecoderDied``, the
    next starts a new decoding process and is answered. The kill comes when the short segment's answer
    arrives, while the long one still decodes; a batch that ended before the kill landed is tried again."""
    dying = ProcessEngine([CKPT], device="cpu")
    try:
        ids = [engine.tokenize("Quit"), engine.tokenize("Do you want to save the changes to the document before closing? " * 4)]
        for _ in range(5):
            pid = dying._process.pid

            def kill(i: int, outputs: list, pid: int = pid) -> None:
                os.kill(pid, signal.SIGKILL)

            try:
                dying.translate(ids, engine.decode, kill)
            except DecoderDied as err:
                assert "exit code -9" in str(err)
                break
            assert "starting a new one" in capsys.readouterr().err  # the batch ended first; the next starts anew
        else:
            pytest.fail("the long segment never outlasted the kill")
        assert dying.translate(ids, engine.decode) == engine.translate(ids, engine.decode)
        assert "nmt serve: the decoding process ended (exit code -9); starting a new one" in capsys.readouterr().err
    finally:
        dying.close()
    assert dying._process is None


def test_the_queue_is_bounded_and_closing_drains_it(engine: TorchEngine) -> None:
    batcher = Batcher(engine, Metrics(), max_queue=4, max_wait=10)  # would wait 10 s for company, but for close()
    ids = [engine.tokenize(s) for s in SOURCES]
    job = batcher.submit(ids[:3], engine.decode)
    with pytest.raises(QueueFull) as full:
        batcher.submit(ids[3:5], engine.decode)
    assert full.value.retry_after == 1 and batcher.depth == 3
    assert batcher.submit([], engine.decode).future.result(timeout=0) == []  # nothing to queue: answered at once
    batcher.start()
    start = time.monotonic()
    batcher.close()
    assert job.future.result(timeout=0)[0][0].text and time.monotonic() - start < 10
    with pytest.raises(Closed):
        batcher.submit(ids[:1], engine.decode)


def test_cancelling_drops_only_that_jobs_waiting_segments(engine: TorchEngine) -> None:
    metrics = Metrics()
    batcher = Batcher(engine, metrics, max_queue=10, max_wait=0)
    ids = [engine.tokenize(s) for s in SOURCES]
    gone, stays = batcher.submit(ids[:3], engine.decode), batcher.submit(ids[3:4], engine.decode)
    batcher.cancel(gone)
    assert batcher.depth == 1
    batcher.start()
    assert stays.future.result(timeout=60)[0][0].text
    batcher.close()
    assert not gone.future.done()
    assert count(metrics, "nmt_segments_total", outcome="cancelled") == 3
    assert count(metrics, "nmt_segments_total", outcome="translated") == 1


def test_health_says_loading_until_the_model_is_loaded() -> None:
    """The application in this process, on a real socket: 503 with Retry-After while loading, then ready."""
    state = State(Limits())
    server = uvicorn.Server(uvicorn.Config(create_app(state), log_level="warning", lifespan="on"))
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        status, headers, body = http(port, "GET", "/health")
        assert (status, body, headers["retry-after"]) == (503, {"status": "loading"}, "2")
        status, headers, body = http(port, "POST", "/v1/translate", {"text": ["Quit"]})
        assert (status, body["error"], headers["retry-after"]) == (503, "server: the model is loading", "2")
        failures: list[str] = []
        start_loading(ServeConfig(checkpoints=(CKPT,), device="cpu"), state, failures.append).join(60)
        assert not failures and http(port, "GET", "/health")[0] == 200
        status, _, body = http(port, "POST", "/v1/translate", {"text": ["Quit"]})
        assert status == 200 and body["translations"][0]["text"]
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
    assert state.stopping and state.batcher is not None and state.batcher.depth == 0


def test_who_can_reach_the_server_is_said() -> None:
    assert reach("127.0.0.1", 8080) == reach("localhost", 8080) == "loopback: this machine only"
    everyone = reach("0.0.0.0", 8080)
    assert everyone.startswith("WARNING: anyone who can reach every network interface of this machine") and "port 8080" in everyone
    assert "no authentication" in reach("192.0.2.7", 80) and "reach 192.0.2.7 on port 80" in reach("192.0.2.7", 80)


def test_field_names_read_as_the_client_wrote_them() -> None:
    assert field_name(("text", 3)) == "text[3]" and field_name(("beam",)) == "beam" and field_name(()) == ""
