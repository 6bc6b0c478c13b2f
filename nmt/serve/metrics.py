"""The server's Prometheus metrics (``GET /metrics``), in a registry of their own so that two servers in one
process (the tests) never share counts, and nothing but these is exposed."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Latency buckets in seconds: a short sentence takes milliseconds, a request of hundreds of segments seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
TOKEN_BUCKETS = (16, 64, 256, 512, 1024, 2048, 4096, 8192, 16384)


class Metrics:
    """Counters, gauges and histograms of one server."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("nmt_requests", "HTTP requests answered, by endpoint and status code (499: the client left first).",
                                ["endpoint", "status"], registry=r)
        self.errors = Counter("nmt_errors", "Requests refused or failed, by kind (json, utf8, type, empty, too_many_segments, "
                              "body_too_large, segment_too_long, unsupported, queue_full, loading, stopping, disconnected, "
                              "not_found, method, internal).", ["kind"], registry=r)
        self.segments = Counter("nmt_segments", "Segments by outcome: translated by the model, empty (answered without it), "
                                "cancelled (their client left before they were decoded).", ["outcome"], registry=r)
        self.queue_depth = Gauge("nmt_queue_depth", "Segments accepted and not yet answered: waiting or being decoded.", registry=r)
        self.ready = Gauge("nmt_ready", "1 once the model is loaded and translations are accepted, else 0.", registry=r)
        self.batch_segments = Histogram("nmt_batch_segments", "Segments per decoded batch.", buckets=SIZE_BUCKETS, registry=r)
        self.batch_tokens = Histogram("nmt_batch_tokens", "Padded source tokens per decoded batch (EOS counted).",
                                      buckets=TOKEN_BUCKETS, registry=r)
        self.batch_seconds = Histogram("nmt_batch_seconds", "Time to decode one batch.", buckets=LATENCY_BUCKETS, registry=r)
        self.latency = Histogram("nmt_request_seconds", "Time from a request's arrival to its answer, by endpoint.", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=r)

    def answered(self, endpoint: str, status: int, seconds: float) -> None:
        """Count one answered request and its latency."""
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        """The metrics in Prometheus' text format, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
