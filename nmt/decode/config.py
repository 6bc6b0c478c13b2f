"""The search's settings: what ``nmt translate``, ``nmt attend``, validation BLEU and the recipes' ``[decode]``
table set."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from nmt.decode.penalty import PENALTIES
from nmt.errors import NmtError

STOPS = ("bound", "beam")


@dataclass(frozen=True)
class DecodeConfig:
    """Beam search settings, shared by ``nmt translate``, validation BLEU and the recipes. Defaults are §6.1's
    but for the stopping rule, which is the peers' (the paper recipes ask for the paper's)."""

    beam: int = 4
    lenpen: float = 0.6  # α
    penalty: str = "gnmt"  # "gnmt": ((5+|Y|)/6)^α (paper); "fairseq": |Y|^α
    max_len_a: float = 1.0  # output length limit a·|source| + b (paper: |source| + 50)
    max_len_b: int = 50
    nbest: int = 1
    max_tokens: int = 4096  # source tokens per batch, before the beam multiplies them
    # The search's rule (nmt.decode.beam). "beam": hypotheses finish from the top `beam` candidates and a
    # sentence stops once `beam` have finished, as fairseq, Marian and CTranslate2 do. "bound":
    # tensor2tensor's search, as the paper's Table 2 was decoded: hypotheses finish from all 2·beam
    # candidates, and a sentence stops once no live hypothesis can enter its `beam` best finished ones,
    # which must assume the penalty of the longest possible output and so searches on long after the answer
    # is settled: 1.7-3.4x the time for a few changed lines (docs/performance.md). The default is what users
    # of the peers expect; the paper recipes set "bound".
    stop: str = "beam"

    def __post_init__(self) -> None:
        if self.stop not in STOPS:
            raise NmtError(f"--stop must be one of {', '.join(STOPS)}, not '{self.stop}'")
        if self.penalty not in PENALTIES:
            raise NmtError(f"--penalty must be one of {', '.join(PENALTIES)}, not '{self.penalty}'")
        if self.beam < 1:
            raise NmtError(f"--beam must be at least 1, not {self.beam}")
        if not 1 <= self.nbest <= self.beam:
            raise NmtError(f"--nbest {self.nbest} must be between 1 and --beam {self.beam}")
        if self.max_tokens < 1:
            raise NmtError(f"--max-tokens must be at least 1, not {self.max_tokens}")
        if self.max_len_a < 0 or self.max_len_b < 0 or (self.max_len_a == 0 and self.max_len_b == 0):
            raise NmtError(f"--max-len-a {self.max_len_a} and --max-len-b {self.max_len_b} leave no room for an output")

    def max_output_len(self, n_src: int, max_positions: int) -> int:
        """Most output tokens, EOS included, for a source of ``n_src`` ids (EOS excluded): a·|source| + b with
        both lengths counting their EOS, as tensor2tensor's decode_length = input length + 50 does, so
        that the paper's rule lets through |source| + 50 real tokens; capped by the model's positions."""
        limit = int(self.max_len_a * (n_src + 1) + self.max_len_b)
        return max(1, min(limit, max_positions))


def decode_config(plain_run: dict[str, Any] | None, **overrides: Any) -> DecodeConfig:
    """The ``DecodeConfig`` a checkpoint's run configuration carries, with ``overrides`` that are not None on top."""
    stored = dict((plain_run or {}).get("decode", {}))
    known = {f.name for f in fields(DecodeConfig)}
    values = {k: v for k, v in stored.items() if k in known}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return DecodeConfig(**values)
