"""Batching across requests: one queue of segments, one thread that decodes them.

A request's segments join the queue as one ``Job``. The decoding thread waits until the oldest queued segment
has waited ``max_wait`` seconds (or the queue holds a full batch of tokens, or the server is stopping), then
cuts the segments that share the oldest one's search settings exactly as ``nmt translate`` cuts a buffer
(``nmt.decode.order.token_batches``: longest first, ``max_tokens`` padded source tokens a batch) and decodes
the batch that holds the oldest segment. Segments are never held back for more than one batch by later
arrivals, a request with its own beam or n-best size is batched with its peers only, and since the beam
search decodes each sentence on its own (``nmt.decode.beam``), every segment gets what ``nmt translate``
gives for it, whatever else shared its batch.

The queue is bounded (``max_queue`` segments waiting or decoding): ``submit`` refuses what would overflow it
instead of letting memory grow. ``cancel`` drops a job's segments that are still waiting (its client left);
a batch already decoding finishes. ``close`` refuses new jobs, decodes every queued segment, then stops.
"""

from __future__ import annotations

import math
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Sequence

from nmt.decode.config import DecodeConfig
from nmt.decode.order import token_batches
from nmt.serve.engine import Engine, Output
from nmt.serve.metrics import Metrics


class QueueFull(Exception):
    """The queue cannot take the job; ``retry_after`` is when it may, in whole seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"queue full; retry after {retry_after} s")
        self.retry_after = retry_after


class Closed(Exception):
    """The batcher is stopping and takes no new job."""


@dataclass(eq=False)
class Job:
    """One request's segments; ``future`` gets their hypotheses, in order, once the last is decoded."""

    size: int
    future: Future = field(default_factory=Future)
    results: list[list[Output]] = field(default_factory=list)
    remaining: int = 0
    cancelled: bool = False

    def __post_init__(self) -> None:
        self.results = [[] for _ in range(self.size)]
        self.remaining = self.size
        if self.size == 0:
            self.future.set_result(self.results)


@dataclass(eq=False)
class _Segment:
    source: Sequence  # token ids (or CTranslate2 pieces), EOS not included
    decode: DecodeConfig
    job: Job
    index: int  # in the job
    arrived: float  # time.monotonic()


class Batcher:
    """The queue and its decoding thread (``start`` it; ``close`` it to drain and stop)."""

    def __init__(self, engine: Engine, metrics: Metrics, max_queue: int, max_wait: float) -> None:
        self.engine, self.metrics = engine, metrics
        self.max_queue, self.max_wait = max_queue, max_wait
        self._cond = threading.Condition()
        self._pending: list[_Segment] = []  # in arrival order
        self._pending_tokens = 0
        self._depth = 0  # segments accepted and not yet answered: pending and decoding
        self._closing = False
        self._rate = 0.0  # segments decoded per second, a moving average: what Retry-After is estimated from
        self._thread = threading.Thread(target=self._run, name="nmt-decode", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def depth(self) -> int:
        return self._depth

    def submit(self, sources: list[Sequence], decode: DecodeConfig) -> Job:
        """Queue ``sources`` (one job) to be decoded with ``decode``; raises ``QueueFull`` or ``Closed``."""
        job = Job(len(sources))
        if not sources:
            return job
        with self._cond:
            if self._closing:
                raise Closed()
            if self._depth + len(sources) > self.max_queue:
                raise QueueFull(self._retry_after(len(sources)))
            now = time.monotonic()
            self._pending += [_Segment(src, decode, job, i, now) for i, src in enumerate(sources)]
            self._pending_tokens += sum(len(src) + 1 for src in sources)
            self._depth += len(sources)
            self.metrics.queue_depth.set(self._depth)
            self._cond.notify()
        return job

    def cancel(self, job: Job) -> None:
        """Drop the job's segments that are still waiting (its client is gone); a batch decoding finishes."""
        with self._cond:
            job.cancelled = True
            dropped = [s for s in self._pending if s.job is job]
            if dropped:
                self._pending = [s for s in self._pending if s.job is not job]
                self._pending_tokens -= sum(len(s.source) + 1 for s in dropped)
                self._depth -= len(dropped)
                self.metrics.queue_depth.set(self._depth)
                self.metrics.segments.labels("cancelled").inc(len(dropped))

    def close(self) -> None:
        """Take no new job, decode every queued segment, stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join()

    def _retry_after(self, extra: int) -> int:
        """Seconds until the queue has likely drained enough for ``extra`` more segments (1 to 60)."""
        if self._rate <= 0:
            return 1
        return min(60, max(1, math.ceil((self._depth + extra - self.max_queue) / self._rate)))

    def _run(self) -> None:
        while True:
            with self._cond:
                batch = self._next_batch()
            if batch is None:
                return
            self._decode(batch)

    def _next_batch(self) -> list[_Segment] | None:
        """Wait for a batch and take it off the queue (the lock held); None once closed and drained."""
        while True:
            if not self._pending:
                if self._closing:
                    return None
                self._cond.wait()
                continue
            left = self._pending[0].arrived + self.max_wait - time.monotonic()
            full = self._pending_tokens >= self._pending[0].decode.max_tokens
            if self._closing or full or left <= 0:
                break
            self._cond.wait(left)
        oldest = self._pending[0]
        peers = [s for s in self._pending if s.decode == oldest.decode]  # in arrival order: the oldest is peers[0]
        chosen = next(b for b in token_batches([len(s.source) for s in peers], oldest.decode.max_tokens) if 0 in b)
        batch = [peers[i] for i in chosen]
        taken = {id(s) for s in batch}
        self._pending = [s for s in self._pending if id(s) not in taken]
        self._pending_tokens -= sum(len(s.source) + 1 for s in batch)
        return batch

    def _decode(self, batch: list[_Segment]) -> None:
        """Decode one batch, answering each segment as soon as its search ends (its client can then send
        its next request while the batch goes on); a failure fails the batch's jobs, not the thread."""
        start = time.monotonic()
        answered = [False] * len(batch)

        def done(i: int, outputs: list[Output]) -> None:
            with self._cond:
                answered[i] = True
                self._depth -= 1
                self.metrics.queue_depth.set(self._depth)
                job = batch[i].job
                if job.future.done():  # an earlier batch of this job failed
                    return
                job.results[batch[i].index] = outputs
                job.remaining -= 1
                if job.remaining == 0:
                    job.future.set_result(job.results)

        try:
            outputs = self.engine.translate([s.source for s in batch], batch[0].decode, done)
        except Exception as err:  # noqa: BLE001 - whatever the model raised goes to the requests, the thread lives on
            self._fail([s for s, was in zip(batch, answered) if not was], err)
            return
        for i, hyps in enumerate(outputs):  # those the engine did not answer early
            if not answered[i]:
                done(i, hyps)
        seconds = time.monotonic() - start
        self.metrics.batch_segments.observe(len(batch))
        self.metrics.batch_tokens.observe((max(len(s.source) for s in batch) + 1) * len(batch))
        self.metrics.batch_seconds.observe(seconds)
        self.metrics.segments.labels("translated").inc(len(batch))
        rate = len(batch) / max(seconds, 1e-6)
        self._rate = rate if self._rate == 0 else 0.8 * self._rate + 0.2 * rate

    def _fail(self, unanswered: list[_Segment], error: Exception) -> None:
        """The jobs of ``unanswered`` get ``error``; their segments still queued are dropped (decoded for nobody)."""
        with self._cond:
            failed = {id(s.job) for s in unanswered}
            dropped = [s for s in self._pending if id(s.job) in failed]
            self._pending = [s for s in self._pending if id(s.job) not in failed]
            self._pending_tokens -= sum(len(s.source) + 1 for s in dropped)
            self._depth -= len(unanswered) + len(dropped)
            self.metrics.queue_depth.set(self._depth)
            for segment in unanswered:
                if not segment.job.future.done():
                    segment.job.future.set_exception(error)
