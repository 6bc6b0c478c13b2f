"""What ``nmt serve`` is told: the model, the address, the search and the limits that keep it up under load."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from nmt.errors import NmtError


@dataclass(frozen=True)
class Limits:
    """What one request may ask, and how much the server holds at once. Past a limit a request is refused with
    a 4xx naming the field (or a 503 when the queue is full); the server never grows without bound."""

    max_body_bytes: int = 1_000_000  # a request's body, before it is parsed
    max_segments: int = 256  # segments in one request
    max_segment_chars: int = 4_000  # characters of one segment, before tokenization (tokens: the model's limit)
    max_queue: int = 4_096  # segments accepted and not yet answered, over all requests; past it: 503
    max_beam: int = 16  # the widest beam a request may ask for

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) < 1:
                raise NmtError(f"--{f.name.replace('_', '-')} must be at least 1, not {getattr(self, f.name)}")
        if self.max_segments > self.max_queue:
            raise NmtError(f"--max-segments {self.max_segments} exceeds --max-queue {self.max_queue}: such a request could never be queued")


@dataclass(frozen=True)
class ServeConfig:
    """One ``nmt serve``: checkpoints (or a CTranslate2 folder), where to listen, the search, the limits."""

    checkpoints: tuple[Path, ...] = ()  # one, or several to ensemble
    ctranslate2: Path | None = None  # a folder written by ``nmt export --to ctranslate2``, instead of checkpoints
    host: str = "127.0.0.1"  # loopback: this machine only
    port: int = 8080  # 0: any free port (printed)
    decode: dict = field(default_factory=dict)  # overrides of the model's [decode] settings (None: unset)
    device: str = "auto"
    dtype: str = "fp32"
    threads: int | None = None  # torch's (or CTranslate2's) CPU threads
    max_wait_ms: float = 5.0  # how long a batch's first segment waits for others to join it
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        if bool(self.checkpoints) == (self.ctranslate2 is not None):
            raise NmtError("give checkpoints, or --ctranslate2 DIR (one of the two)")
        for path in self.checkpoints:
            if not path.is_file():
                raise NmtError(f"{path}: file not found")
        if self.ctranslate2 is not None and not self.ctranslate2.is_dir():
            raise NmtError(f"{self.ctranslate2}: folder not found")
        if not 0 <= self.port <= 65535:
            raise NmtError(f"--port must be between 0 and 65535, not {self.port}")
        if not 0 <= self.max_wait_ms <= 10_000:
            raise NmtError(f"--max-wait-ms must be between 0 and 10000, not {self.max_wait_ms:g}")
        if self.threads is not None and self.threads < 1:
            raise NmtError(f"--threads must be at least 1, not {self.threads}")
