"""How a buffer of sources is cut into batches for the search: longest first, by padded source tokens. Apart
from ``nmt.decode.translate`` so that ``nmt serve``'s batching, in the server's process, needs no torch."""

from __future__ import annotations

from typing import Sequence


def token_batches(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """The indices of sources of ``lengths`` (ids, EOS not counted), longest first (ties in input order), cut
    into batches of at most ``max_tokens`` padded source tokens, EOS counted; a longer source is a batch alone."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches, start = [], 0
    while start < len(order):
        size = max(1, max_tokens // (lengths[order[start]] + 1))
        batches.append(order[start : start + size])
        start += size
    return batches
