"""nmt serve under load: throughput and latency at 1, 8 and 64 concurrent clients, against the same lines
translated from a file as ``nmt translate`` does, and the latency of one short sentence on an idle server.

    python bench/serve.py runs/quickstart/averaged.pt --lines data-bin/gettext-en-de/test.en --n 1000

The file baseline is ``nmt translate``'s own path (``Translator.translate_stream``, buffers of 2000 lines
sorted by length, batches of --max-tokens), timed in this process without the start-up. ``nmt serve`` runs
in a subprocess (``--port 0``); file and server runs alternate (--repeat), and medians are reported. Each client is a thread with one keep-alive connection sending one
line per request, the next line as soon as the answer is in, until every line is translated; the clients
share the machine with the server, as they would on a 2-core box. Every answer is checked against the file's
output line for line (``identical``). Prints a Markdown table and, with --json, the raw figures.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]


def file_baseline(translator: "Translator", lines: list[str]) -> tuple[float, list[str]]:  # noqa: F821
    """Seconds ``nmt translate`` spends on ``lines`` (model loaded), and its output lines."""
    source, out = io.BytesIO("".join(line + "\n" for line in lines).encode()), io.StringIO()
    start = time.perf_counter()
    translator.translate_stream(source, out, 2000)
    return time.perf_counter() - start, out.getvalue().split("\n")[:-1]


class Server:
    """``nmt serve`` in a subprocess on a free loopback port."""

    def __init__(self, checkpoint: Path, extra: list[str]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "nmt", "serve", str(checkpoint), "--port", "0", *extra], cwd=ROOT,
                                     stdout=subprocess.PIPE, text=True)
        self.port = int(re.search(r":(\d+)/", self.proc.stdout.readline()).group(1))
        while True:
            try:
                if self.request("GET", "/health")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
        conn.request(method, path, json.dumps(body) if body else None)
        r = conn.getresponse()
        return r.status, json.loads(r.read())

    def metrics(self) -> dict[str, float]:
        """The batch histograms' sums and counts from /metrics."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        wanted = ("nmt_batch_segments_sum", "nmt_batch_segments_count", "nmt_batch_seconds_sum")
        return {name: float(value) for name, value in (line.split(" ") for line in text.splitlines() if line.startswith(wanted))}

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def run_clients(clients: int, count: int, one: Callable[[int], None]) -> float:
    """Seconds for ``clients`` threads to call ``one(i)`` for every i below ``count``, each taking the next i."""
    cursor, lock = iter(range(count)), threading.Lock()

    def client() -> None:
        while True:
            with lock:
                i = next(cursor, None)
            if i is None:
                return
            one(i)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start


def load(port: int, lines: list[str], clients: int) -> tuple[float, list[float], list[str]]:
    """``clients`` threads, one line per request, until all ``lines`` are answered: (seconds, latencies, outputs)."""
    outputs = [""] * len(lines)
    latencies: list[float] = []
    local = threading.local()  # one keep-alive connection per client thread

    def one(i: int) -> None:
        if not hasattr(local, "conn"):
            local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        start = time.perf_counter()
        local.conn.request("POST", "/v1/translate", json.dumps({"text": [lines[i]]}), {"Content-Type": "application/json"})
        response = local.conn.getresponse()
        body = json.loads(response.read())
        latencies.append(time.perf_counter() - start)  # list.append is atomic
        assert response.status == 200, body
        outputs[i] = body["translations"][0]["text"]

    return run_clients(clients, len(lines), one), latencies, outputs


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def batcher_alone(engine: "TorchEngine", lines: list[str], clients: int) -> tuple[float, float]:  # noqa: F821
    """Seconds for ``clients`` threads to have ``lines`` translated one a job through the batcher in this
    process, without HTTP, and the mean segments a batch: what batching alone costs or gains."""
    from nmt.serve.batcher import Batcher
    from nmt.serve.metrics import Metrics

    metrics = Metrics()
    batcher = Batcher(engine, metrics, max_queue=4096, max_wait=0.005)
    batcher.start()
    sources = [engine.tokenize(line) for line in lines]
    took = run_clients(clients, len(lines), lambda i: batcher.submit([sources[i]], engine.decode).future.result())
    batcher.close()
    get = metrics.registry.get_sample_value
    return took, get("nmt_batch_segments_sum") / get("nmt_batch_segments_count")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--lines", type=Path, required=True, help="source lines, one a line")
    parser.add_argument("--n", type=int, default=1000, help="how many of them")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--threads", type=int, default=None, help="torch threads, for the file and the server alike")
    parser.add_argument("--serve-args", default="", help="more options for nmt serve, e.g. '--max-wait-ms 10'")
    parser.add_argument("--repeat", type=int, default=3, help="alternating file and server runs; medians are reported")
    parser.add_argument("--short", default="The document could not be saved.", help="the short sentence timed alone")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    lines = [line for line in args.lines.read_text(encoding="utf-8").splitlines() if line.strip()][: args.n]
    import torch

    from nmt.decode.translate import TranslateConfig, Translator

    if args.threads:
        torch.set_num_threads(args.threads)
    translator = Translator([args.checkpoint], TranslateConfig(device="cpu"))
    translator.translate_buffer(list(enumerate(lines[:50], 1)))  # warm-up
    from nmt.serve.engine import TorchEngine

    engine = TorchEngine([args.checkpoint], device="cpu")
    alone: list[tuple[float, float]] = []
    extra = (["--threads", str(args.threads)] if args.threads else []) + args.serve_args.split()
    server = Server(args.checkpoint, extra)
    files: list[float] = []
    runs: dict[int, list[dict]] = {c: [] for c in args.clients}
    try:
        load(server.port, lines[:64], 8)  # warm-up
        # File and server runs alternate, --repeat times: on a shared machine the load of others changes
        # from one minute to the next, and the medians compare runs made under the same conditions.
        for _ in range(args.repeat):
            seconds, reference = file_baseline(translator, lines)
            files.append(seconds)
            alone.append(batcher_alone(engine, lines, max(args.clients)))
            for clients in args.clients:
                before = server.metrics()
                took, latencies, outputs = load(server.port, lines, clients)
                after = {k: v - before[k] for k, v in server.metrics().items()}
                runs[clients].append({"seconds": took, "latencies": latencies,
                                      "batch": after["nmt_batch_segments_sum"] / after["nmt_batch_segments_count"],
                                      "busy": after["nmt_batch_seconds_sum"] / took,
                                      "identical": sum(a == b for a, b in zip(outputs, reference)) / len(lines)})
        short = []
        for _ in range(50):  # one short sentence at a time on an idle server
            start = time.perf_counter()
            server.request("POST", "/v1/translate", {"text": [args.short]})
            short.append(time.perf_counter() - start)
    finally:
        server.stop()
    seconds = statistics.median(files)
    rows = [{"setup": "nmt translate, a file", "clients": 0, "seconds": seconds, "lines_per_s": len(lines) / seconds,
             "all_lines_per_s": [len(lines) / f for f in files]}]
    took, batch = sorted(alone)[len(alone) // 2]
    rows.append({"setup": "batcher alone, no HTTP", "clients": max(args.clients), "seconds": took, "lines_per_s": len(lines) / took,
                 "all_lines_per_s": [len(lines) / a for a, _ in alone], "batch": batch})
    for clients, done in runs.items():
        mid = sorted(done, key=lambda r: r["seconds"])[len(done) // 2]
        rows.append({"setup": "nmt serve", "clients": clients, "seconds": mid["seconds"], "lines_per_s": len(lines) / mid["seconds"],
                     "all_lines_per_s": [len(lines) / r["seconds"] for r in done], "batch": mid["batch"], "busy": mid["busy"],
                     "p50_ms": 1000 * statistics.median(mid["latencies"]), "p99_ms": 1000 * percentile(mid["latencies"], 0.99),
                     "identical": min(r["identical"] for r in done)})
    base = rows[0]["lines_per_s"]
    print(f"{len(lines)} lines of {args.lines}, {args.checkpoint}; {cpu_name()}, torch threads {args.threads or 'default'}; "
          f"medians of {args.repeat} alternating runs\n")
    print("| setup | clients | lines/s | × file | p50 ms | p99 ms | segments a batch | decoder busy | identical |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "p50_ms" in r:
            print(f"| {r['setup']} | {r['clients']} | {r['lines_per_s']:.1f} | {r['lines_per_s'] / base:.2f} | {r['p50_ms']:.0f} | "
                  f"{r['p99_ms']:.0f} | {r['batch']:.1f} | {100 * r['busy']:.0f} % | {100 * r['identical']:.1f} % |")
        elif r["clients"]:
            print(f"| {r['setup']} | {r['clients']} | {r['lines_per_s']:.1f} | {r['lines_per_s'] / base:.2f} | | | {r['batch']:.1f} | | |")
        else:
            print(f"| {r['setup']} | | {r['lines_per_s']:.1f} | 1.00 | | | | | |")
    print(f"\none short sentence ({args.short!r}) on an idle server: p50 {1000 * statistics.median(short):.1f} ms, "
          f"p99 {1000 * percentile(short, 0.99):.1f} ms")
    if args.json:
        print(json.dumps({"rows": rows, "short_ms": [1000 * s for s in short]}))


if __name__ == "__main__":
    main()
