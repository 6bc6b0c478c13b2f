"""``nmt serve`` as its users meet it: the real server in a subprocess on a free loopback port, driven over HTTP.

Concurrent clients get exactly what ``nmt translate`` prints for their lines (texts, and scores to its printed
precision), whatever else shared their batches; every bad input is a 4xx naming its field and the server
serves on; a full queue is a 503 with Retry-After; a client that leaves costs only its own segments; SIGTERM
answers every accepted request, then exits 0. The committed tiny checkpoint keeps each server start cheap.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from nmt.decode.translate import TranslateConfig, Translator
from tests.helpers import ServeProcess, http

ROOT = Path(__file__).resolve().parents[2]
CKPT = ROOT / "tests" / "fixtures" / "tiny" / "checkpoint.pt"
LIMITS = ["--max-segments", "64", "--max-body-bytes", "20000", "--max-segment-chars", "3000"]


@pytest.fixture(scope="module")
def lines() -> list[str]:
    """The fixture's test and dev sources, and an empty line (answered without the model)."""
    text = [(ROOT / "tests" / "fixtures" / f"{split}.en").read_text(encoding="utf-8").splitlines() for split in ("test", "dev")]
    return text[0] + [""] + text[1]


@pytest.fixture(scope="module")
def expected(lines: list[str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, list]:
    """What ``nmt translate --scores`` prints for each line (a subprocess, as a user runs it): (score, text); and,
    through the same Translator, its output with --beam 2 and with --nbest 3."""
    source = tmp_path_factory.mktemp("serve") / "lines.en"
    source.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    r = subprocess.run([sys.executable, "-m", "nmt", "translate", str(CKPT), "--scores", "--input", str(source)], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    default = [(float(score), text) for score, text in (row.split("\t", 1) for row in r.stdout.split("\n")[:-1])]
    numbered = list(enumerate(lines, 1))
    beam2 = Translator([CKPT], TranslateConfig(), beam=2).translate_buffer(numbered)
    nbest = Translator([CKPT], TranslateConfig(), nbest=3).translate_buffer(numbered)
    rows = [[(float(score), text) for _, score, text in (row.split("\t", 2) for row in block.split("\n")[:-1])] for block in nbest]
    return {"default": default, "beam2": [out[:-1] for out in beam2], "nbest3": rows}


@pytest.fixture(scope="module")
def server() -> ServeProcess:
    with ServeProcess(str(CKPT), "--max-wait-ms", "50", *LIMITS) as s:
        yield s


# nmt translate prints scores to 4 decimals; the last float32 bits of a score depend on the batch's padding.
SCORE_TOLERANCE = 5e-5 + 1e-5


def check_answer(request: dict, answer: dict, wanted: dict[str, list], picks: list[int]) -> None:
    """``answer`` holds, in order, exactly the texts nmt translate gives for the lines ``picks``, and its scores."""
    entries = answer["translations"]
    assert len(entries) == len(picks)
    for entry, i in zip(entries, picks):
        if request.get("nbest"):
            assert [(h["text"]) for h in entry["nbest"]] == [text for _, text in wanted["nbest3"][i]]
            assert all(abs(h["score"] - score) <= SCORE_TOLERANCE for h, (score, _) in zip(entry["nbest"], wanted["nbest3"][i]))
            assert entry["text"] == entry["nbest"][0]["text"]
        elif request.get("beam") == 2:
            assert entry == {"text": wanted["beam2"][i]}
        else:
            score, text = wanted["default"][i]
            assert entry["text"] == text
            assert abs(entry["score"] - score) <= SCORE_TOLERANCE


def test_concurrent_clients_get_exactly_what_nmt_translate_gives(server: ServeProcess, lines: list[str], expected: dict) -> None:
    """12 clients at once, each its own shuffle of the lines in requests of 1 to 7 segments, a third of them
    with beam 2 and a third with 3-best lists: every answer is the line's nmt translate output, in order."""
    before = server.metric("nmt_segments_total", outcome="translated")

    def client(seed: int) -> int:
        rng = random.Random(seed)
        order = rng.sample(range(len(lines)), len(lines))
        options = [{"scores": True}, {"beam": 2}, {"nbest": 3}][seed % 3]
        done = 0
        while done < len(order):
            picks = order[done : done + rng.randint(1, 7)]
            request = {"text": [lines[i] for i in picks], **options}
            status, _, answer = http(server.port, "POST", "/v1/translate", request)
            assert status == 200, answer
            check_answer(request, answer, expected, picks)
            done += len(picks)
        return done

    with ThreadPoolExecutor(12) as pool:
        assert sum(pool.map(client, range(12), timeout=300)) == 12 * len(lines)
    empty_lines = sum(1 for line in lines if not line.strip())
    assert server.metric("nmt_segments_total", outcome="translated") - before == 12 * (len(lines) - empty_lines)


def test_batches_hold_segments_of_several_requests(server: ServeProcess, lines: list[str], expected: dict) -> None:
    """16 one-segment requests sent together are decoded in fewer than 16 batches, each answer still exact."""
    batches = server.metric("nmt_batch_segments_count")
    barrier = threading.Barrier(16)

    def one(i: int) -> None:
        barrier.wait(timeout=60)
        status, _, answer = http(server.port, "POST", "/v1/translate", {"text": [lines[i]], "scores": True})
        assert status == 200, answer
        check_answer({}, answer, expected, [i])

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(16), timeout=120))
    assert server.metric("nmt_batch_segments_count") - batches < 16


LONG_TOKENS = "жщ" * 600  # 1,200 characters (under --max-segment-chars 3000), over 1,023 tokens: byte pieces


@pytest.mark.parametrize("body, status, field", [
    (b'{"text": ["Open the file."', 400, "body"),  # malformed JSON
    (b"", 400, "body"),  # empty body
    (b'{"text": ["Open the \xff file."]}', 400, "body"),  # invalid UTF-8
    (b'{"text": ["\\ud800"]}', 400, "body"),  # a lone surrogate is no text
    (b'["Open the file."]', 422, "body"),  # not an object
    (b'{"txt": ["Open the file."]}', 422, "text"),  # missing
    (b'{"text": "Open the file."}', 422, "text"),  # a string, not a list
    (b'{"text": ["Open the file.", 3]}', 422, "text[1]"),
    (b'{"text": []}', 422, "text"),  # empty input
    (b'{"text": ["Quit"], "beam": "4"}', 422, "beam"),
    (b'{"text": ["Quit"], "beam": 0}', 422, "beam"),
    (b'{"text": ["Quit"], "beam": 17}', 422, "beam"),  # over --max-beam (16)
    (b'{"text": ["Quit"], "nbest": 5}', 422, "nbest"),  # more than the beam (4)
    (b'{"text": ["Quit"], "scores": 1}', 422, "scores"),
    (b'{"text": ["Quit"], "colour": "blue"}', 422, "colour"),
    (json.dumps({"text": ["Quit"] * 65}).encode(), 413, "text"),  # over --max-segments 64
    (json.dumps({"text": ["Quit", "x" * 21000]}).encode(), 413, "body"),  # over --max-body-bytes 20000
    (json.dumps({"text": ["Quit", "Open", "x" * 3001]}).encode(), 422, "text[2]"),  # over --max-segment-chars
    (json.dumps({"text": ["Quit", LONG_TOKENS]}).encode(), 422, "text[1]"),  # over the model's 1,023 tokens
], ids=["malformed-json", "empty-body", "invalid-utf8", "lone-surrogate", "not-an-object", "missing-text", "text-not-a-list",
        "segment-not-a-string", "no-segments", "beam-as-string", "beam-0", "beam-over-limit", "nbest-over-beam", "scores-not-bool",
        "unknown-field", "too-many-segments", "body-over-limit", "segment-over-chars", "segment-over-tokens"])
def test_bad_input_is_a_4xx_naming_the_field(server: ServeProcess, body: bytes, status: int, field: str) -> None:
    kind_count = server.metric("nmt_requests_total", endpoint="translate", status=str(status))
    got, headers, answer = http(server.port, "POST", "/v1/translate", body, {"Content-Type": "application/json"})
    assert (got, answer["field"]) == (status, field), answer
    assert answer["error"].startswith(f"{field}: ") and "\n" not in answer["error"]
    assert headers["content-type"] == "application/json"
    assert server.metric("nmt_requests_total", endpoint="translate", status=str(status)) == kind_count + 1
    got, _, answer = http(server.port, "POST", "/v1/translate", {"text": ["Quit"]})  # and the server serves on
    assert got == 200 and answer["translations"][0]["text"]


def test_body_over_the_limit_without_a_length_is_refused_while_it_streams(server: ServeProcess) -> None:
    """A chunked body is counted as it arrives: refused at the limit, not buffered whole."""
    conn = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    try:
        conn.sendall(b"POST /v1/translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b'{"text": ["' + b"x" * 8000
        for _ in range(4):  # 32 kB, over the 20 kB limit
            conn.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            chunk = b"y" * 8000
        answer = b""
        while b'"}' not in answer and (part := conn.recv(65536)):
            answer += part
    finally:
        conn.close()
    assert answer.startswith(b"HTTP/1.1 413") and b'"field":"body"' in answer


def test_a_client_that_leaves_during_its_body_is_counted_and_forgotten(server: ServeProcess) -> None:
    gone = server.metric("nmt_requests_total", endpoint="translate", status="499")
    conn = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    conn.sendall(b'POST /v1/translate HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"text": ["Open')
    time.sleep(0.2)
    conn.close()
    wait_for(lambda: server.metric("nmt_requests_total", endpoint="translate", status="499") == gone + 1)
    assert http(server.port, "POST", "/v1/translate", {"text": ["Quit"]})[0] == 200


def test_other_errors_are_one_line_json(server: ServeProcess) -> None:
    assert http(server.port, "GET", "/nowhere")[::2] == (404, {"error": "/nowhere: Not Found", "field": "path"})
    status, _, answer = http(server.port, "GET", "/v1/translate")
    assert status == 405 and answer["field"] == "path"
    status, _, answer = http(server.port, "POST", "/v1/attention", {"text": "  "})
    assert (status, answer["field"]) == (422, "text")


def test_health_metrics_and_openapi(server: ServeProcess) -> None:
    status, _, health = http(server.port, "GET", "/health")
    assert status == 200 and health["status"] == "ready" and health["decode"]["beam"] == 4
    assert health["source_language"] == "en" and health["target_language"] == "de"
    status, headers, text = http(server.port, "GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=")
    for sample in ("nmt_requests_total{", "nmt_segments_total{", "nmt_queue_depth ", "nmt_ready 1.0", "nmt_batch_segments_bucket{",
                   "nmt_batch_tokens_bucket{", "nmt_request_seconds_bucket{endpoint=\"translate\"", "# TYPE nmt_errors_total counter"):
        assert sample in text, sample
    status, _, spec = http(server.port, "GET", "/openapi.json")
    body = spec["paths"]["/v1/translate"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert status == 200 and set(body["properties"]) == {"text", "beam", "nbest", "scores"} and body["required"] == ["text"]


@pytest.fixture(scope="module")
def slow_server() -> ServeProcess:
    """A batch waits 4 s for company, and the queue holds 6 segments: requests stay queued long enough to be
    watched, refused or abandoned."""
    with ServeProcess(str(CKPT), "--max-wait-ms", "4000", "--max-queue", "6", "--max-segments", "6") as s:
        yield s


def wait_for(condition, seconds: float = 30) -> None:  # noqa: ANN001 - a predicate
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_full_queue_is_503_with_retry_after(slow_server: ServeProcess, lines: list[str], expected: dict) -> None:
    picks = list(range(6))
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(http, slow_server.port, "POST", "/v1/translate", {"text": [lines[i] for i in picks], "scores": True})
        wait_for(lambda: slow_server.metric("nmt_queue_depth") == 6)
        status, headers, answer = http(slow_server.port, "POST", "/v1/translate", {"text": ["Quit"]})
        assert status == 503 and int(headers["retry-after"]) >= 1
        assert answer["error"] == "server: the queue is full (6 segments)"
        status, _, answer = first.result(timeout=60)  # what was accepted is answered
    assert status == 200
    check_answer({}, answer, expected, picks)
    assert slow_server.metric("nmt_errors_total", kind="queue_full") == 1
    assert http(slow_server.port, "POST", "/v1/translate", {"text": ["Quit"]})[0] == 200


def test_client_that_leaves_costs_only_its_own_segments(slow_server: ServeProcess, lines: list[str], expected: dict) -> None:
    """A client sends 5 segments and hangs up while they wait; another's segment, queued behind them, is
    answered, and the 5 are dropped from the queue, never decoded."""
    translated = slow_server.metric("nmt_segments_total", outcome="translated")
    leaver = socket.create_connection(("127.0.0.1", slow_server.port), timeout=30)
    body = json.dumps({"text": lines[:5]}).encode()
    leaver.sendall(b"POST /v1/translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    wait_for(lambda: slow_server.metric("nmt_queue_depth") == 5)
    with ThreadPoolExecutor(1) as pool:
        other = pool.submit(http, slow_server.port, "POST", "/v1/translate", {"text": [lines[7]], "scores": True})
        wait_for(lambda: slow_server.metric("nmt_queue_depth") == 6)
        leaver.close()
        wait_for(lambda: slow_server.metric("nmt_segments_total", outcome="cancelled") == 5)
        status, _, answer = other.result(timeout=60)
    assert status == 200
    check_answer({}, answer, expected, [7])
    assert slow_server.metric("nmt_segments_total", outcome="translated") - translated == 1
    assert slow_server.metric("nmt_errors_total", kind="disconnected") == 1
    assert slow_server.metric("nmt_queue_depth") == 0


def test_sigterm_answers_what_was_accepted_and_exits_0(lines: list[str], expected: dict) -> None:
    """Six clients' requests wait in the queue when SIGTERM comes: new connections are refused at once, each
    of the six is answered exactly, and the process exits 0."""
    with ServeProcess(str(CKPT), "--max-wait-ms", "5000") as s:
        with ThreadPoolExecutor(6) as pool:
            picks = [[3 * c, 3 * c + 1, 3 * c + 2] for c in range(6)]
            sent = [pool.submit(http, s.port, "POST", "/v1/translate", {"text": [lines[i] for i in p], "scores": True}) for p in picks]
            wait_for(lambda: s.metric("nmt_queue_depth") == 18)
            s.proc.send_signal(15)

            def refused() -> bool:
                try:
                    socket.create_connection(("127.0.0.1", s.port), timeout=1).close()
                    return False
                except ConnectionRefusedError:
                    return True

            wait_for(refused, 5)
            assert not any(f.done() for f in sent)  # refused while the accepted requests still wait
            for future, p in zip(sent, picks):
                status, _, answer = future.result(timeout=60)
                assert status == 200
                check_answer({}, answer, expected, p)
        assert s.proc.wait(60) == 0
    assert "SIGTERM: no new connections; finishing 18 queued segments" in s.stderr


def decoding_process(server: ServeProcess) -> int:
    """The pid of the server's decoding process (``nmt.serve.worker``): its child started by multiprocessing's
    spawn (the other child, multiprocessing's resource tracker, is not it)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == server.proc.pid and b"spawn_main" in cmdline:
            found.append(int(stat.parent.name))
    assert len(found) == 1, found
    return found[0]


def alive(pid: int) -> bool:
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the process's mappings in /proc (Linux)")
def test_the_server_process_loads_no_torch(server: ServeProcess, lines: list[str]) -> None:
    """The model and torch live in the decoding process; the server's own stays small, even once it has drawn
    an attention map (which it unpickles from the decoding process)."""
    status, _, answer = http(server.port, "POST", "/v1/attention", {"text": lines[0]})
    assert status == 200 and answer["maps_html"]
    assert "libtorch" not in Path(f"/proc/{server.proc.pid}/maps").read_text()
    assert "libtorch" in Path(f"/proc/{decoding_process(server)}/maps").read_text()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the decoding process through /proc (Linux)")
def test_sigterm_to_every_process_of_the_service_still_answers_everything(lines: list[str], expected: dict) -> None:
    """A service manager stopping the service signals all its processes (systemd's default): the decoding
    process ignores SIGTERM, decodes what was queued, and ends with the server, which exits 0."""
    with ServeProcess(str(CKPT), "--max-wait-ms", "3000") as s:
        child = decoding_process(s)
        with ThreadPoolExecutor(2) as pool:
            picks = [[0, 1, 2], [3, 4]]
            sent = [pool.submit(http, s.port, "POST", "/v1/translate", {"text": [lines[i] for i in p], "scores": True}) for p in picks]
            wait_for(lambda: s.metric("nmt_queue_depth") == 5)
            s.proc.send_signal(15)
            os.kill(child, 15)
            for future, p in zip(sent, picks):
                status, _, answer = future.result(timeout=60)
                assert status == 200
                check_answer({}, answer, expected, p)
        assert s.proc.wait(60) == 0
        wait_for(lambda: not alive(child), 10)
    assert "decoding process ended" not in s.stderr  # the same process decoded the queue


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the decoding process through /proc (Linux)")
def test_a_decoding_process_that_dies_is_replaced_and_one_that_outlives_the_server_ends(lines: list[str], expected: dict) -> None:
    with ServeProcess(str(CKPT), "--max-wait-ms", "3000") as s:
        first = decoding_process(s)
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(http, s.port, "POST", "/v1/translate", {"text": [lines[5]], "scores": True})
            wait_for(lambda: s.metric("nmt_queue_depth") == 1)
            os.kill(first, 9)  # killed (out of memory, say) while the request waits: its batch starts a new one
            status, _, answer = waiting.result(timeout=120)
        assert status == 200
        check_answer({}, answer, expected, [5])
        second = decoding_process(s)
        assert second != first
        status, _, answer = http(s.port, "POST", "/v1/translate", {"text": [lines[6]], "scores": True})
        assert status == 200
        check_answer({}, answer, expected, [6])
        s.proc.kill()  # the server dies without stopping in order: its decoding process sees the pipe close
        s.proc.wait(30)
        wait_for(lambda: not alive(second), 10)
    assert "nmt serve: the decoding process ended (exit code -9); starting a new one" in s.stderr


def test_a_model_that_cannot_load_is_one_line_and_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    r = subprocess.run([sys.executable, "-m", "nmt", "serve", str(bad), "--port", "0"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith(f"nmt: error: {bad}: not a readable nmt checkpoint")
    r = subprocess.run([sys.executable, "-m", "nmt", "serve", "--port", "0"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr == "nmt: error: give checkpoints, or --ctranslate2 DIR (one of the two)\n"


def test_a_ctranslate2_folder_is_served_as_ct2translator_translates(lines: list[str], tmp_path: Path) -> None:
    pytest.importorskip("ctranslate2")
    from nmt.decode.config import decode_config
    from nmt.export import export
    from nmt.export.ct2 import CT2Translator

    folder = tmp_path / "ct2"
    export(CKPT, "ctranslate2", folder)
    r = subprocess.run([sys.executable, "-m", "nmt", "serve", "--ctranslate2", str(folder), "--port", "0"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)  # the checkpoint's [decode] has the gnmt penalty
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("nmt: error: CTranslate2 divides scores by |Y|^α: use --penalty fairseq")
    ct2 = CT2Translator(folder, threads=1)
    wanted = ct2.translate(lines, decode_config({"decode": ct2.info["decode"]}, penalty="fairseq"))
    with ServeProcess("--ctranslate2", str(folder), "--penalty", "fairseq", "--threads", "1") as s:
        status, _, answer = http(s.port, "POST", "/v1/translate", {"text": lines})
        assert status == 200 and [t["text"] for t in answer["translations"]] == wanted
        status, _, answer = http(s.port, "POST", "/v1/translate", {"text": lines[:2], "nbest": 2})
        assert (status, answer["error"]) == (422, "nbest: not available with a CTranslate2 model")
        status, _, answer = http(s.port, "POST", "/v1/attention", {"text": lines[0]})
        assert status == 200 and answer["translation"] == wanted[0] and answer["maps_html"] is None and "CTranslate2" in answer["note"]
