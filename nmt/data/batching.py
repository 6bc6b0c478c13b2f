"""Token-based batches: sentences grouped by length so padding stays small, batch order shuffled per epoch;
each batch collated as padded rows (``collate_indices``) or packed into one row per side
(``collate_packed``), where every slot but a short tail is a real token."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from nmt.data.dataset import ParallelDataset
from nmt.model.transformer import Packing
from nmt.tokens import BOS, EOS, PAD


def padded(length: int, multiple: int) -> int:
    return -(-length // multiple) * multiple


def token_batches(
    src_lengths: np.ndarray, tgt_lengths: np.ndarray, max_tokens: int, seed: int, epoch: int,
    multiple: int = 8, shuffle: bool = True,
) -> list[np.ndarray]:
    """Indices of each batch, such that (sentences × longest padded side) ≤ ``max_tokens`` (fairseq's rule).

    Sentences are sorted by target then source length (ties broken at random per epoch), cut greedily into
    batches, and the batch order is shuffled with a generator seeded by (seed, epoch): every rank computes
    the same list, and a resumed run recomputes it exactly.
    """
    rng = np.random.default_rng([seed, epoch])
    n = len(src_lengths)
    # +1 for the EOS/BOS each side gets at batch time.
    sizes = np.maximum(src_lengths, tgt_lengths).astype(np.int64) + 1
    tie = rng.permutation(n) if shuffle else np.arange(n)
    order = np.lexsort((tie, src_lengths, tgt_lengths))
    batches: list[np.ndarray] = []
    start, longest = 0, 0
    for i, idx in enumerate(order):
        size = padded(int(sizes[idx]), multiple)
        if size > max_tokens:
            raise ValueError(f"sentence {idx} needs {size} tokens, more than --max-tokens {max_tokens}")
        candidate = max(longest, size)
        if i > start and candidate * (i - start + 1) > max_tokens:
            batches.append(order[start:i])
            start, candidate = i, size
        longest = candidate
    if start < n:
        batches.append(order[start:])
    if shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


@dataclass
class Batch:
    src: Tensor  # (B, S) ids + EOS, right-padded; packed: (1, S), the sentences one after another
    tgt_in: Tensor  # (B, T) BOS + ids
    tgt_out: Tensor  # (B, T) ids + EOS
    src_tokens: int  # real (non-pad) tokens, EOS included
    tgt_tokens: int
    packing: Packing | None = None  # where each sentence starts, when packed

    @property
    def slots(self) -> int:
        return self.src.numel() + self.tgt_in.numel()

    def to(self, device: torch.device) -> "Batch":
        if device.type == "cpu":
            return self
        move = lambda t: t.pin_memory().to(device, non_blocking=True)  # noqa: E731
        p = self.packing
        packing = None if p is None else Packing(move(p.src_starts), move(p.tgt_starts), p.max_src, p.max_tgt)
        return Batch(move(self.src), move(self.tgt_in), move(self.tgt_out), self.src_tokens, self.tgt_tokens, packing)


def _rows(flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray, width: int, column: int) -> np.ndarray:
    """A (len(lengths), width) int64 array of PAD whose row r holds flat[starts[r] : starts[r] + lengths[r]]
    from ``column`` on."""
    grid = np.arange(width - column)
    inside = grid < lengths[:, None]
    out = np.full((len(lengths), width), PAD, dtype=np.int64)
    out[:, column:][inside] = flat[(starts[:, None] + grid)[inside]]
    return out


def _batch(src: tuple[np.ndarray, np.ndarray, np.ndarray], tgt: tuple[np.ndarray, np.ndarray, np.ndarray], multiple: int) -> Batch:
    """The batch of sentences given as (ids back to back, start of each, length of each) per side, in whole
    array operations: for the ~790 sentences of a 32,768-token batch, 0.8 ms against 6 ms sentence by
    sentence (docs/performance.md), time the host spends while a GPU may be waiting."""
    (src_ids, src_starts, src_lens), (tgt_ids, tgt_starts, tgt_lens) = src, tgt
    b = len(src_lens)
    s = padded(int(src_lens.max()) + 1, multiple)
    t = padded(int(tgt_lens.max()) + 1, multiple)
    rows = np.arange(b)
    source = _rows(src_ids, src_starts, src_lens, s, 0)
    source[rows, src_lens] = EOS
    tgt_in = _rows(tgt_ids, tgt_starts, tgt_lens, t, 1)
    tgt_in[:, 0] = BOS
    tgt_out = _rows(tgt_ids, tgt_starts, tgt_lens, t, 0)
    tgt_out[rows, tgt_lens] = EOS
    n_src, n_tgt = int(src_lens.sum()) + b, int(tgt_lens.sum()) + b
    return Batch(torch.from_numpy(source), torch.from_numpy(tgt_in), torch.from_numpy(tgt_out), n_src, n_tgt)


def collate(pairs: list[tuple[np.ndarray, np.ndarray]], multiple: int = 8) -> Batch:
    """Pad a list of (source ids, target ids) to multiples of ``multiple`` (tensor-core friendly): the source
    gets EOS, the decoder's input BOS in front, its output EOS at the end."""
    if not pairs:
        raise ValueError("collate: no sentence pairs")
    sides = []
    for side in zip(*pairs):
        lengths = np.fromiter((len(x) for x in side), dtype=np.int64, count=len(side))
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        sides.append((np.concatenate(side), starts, lengths))
    return _batch(sides[0], sides[1], multiple)


def collate_indices(data: ParallelDataset, index: np.ndarray, multiple: int = 8) -> Batch:
    """``collate([data[i] for i in index], multiple)``, read straight from the memory-mapped token arrays."""
    index = np.asarray(index, dtype=np.int64)
    sides = [(side.tokens, side.offsets[index], side.lengths[index].astype(np.int64)) for side in (data.src, data.tgt)]
    return _batch(sides[0], sides[1], multiple)


def pack_bucket(max_tokens: int) -> int:
    """The multiple a packed row's length is padded to: a sixteenth of ``--max-tokens`` (in multiples of 8,
    at least 64), so that compiled code sees at most 16 row lengths per side and the padding is at most about
    6 % of a full batch."""
    return max(64, max_tokens // 16 // 8 * 8)


def _stream(flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray, before: int | None, after: int | None,
            length: int) -> np.ndarray:
    """One row of ``length`` ids: each sentence's ids (flat[starts[i] : starts[i] + lengths[i]]), preceded by
    ``before`` and followed by ``after`` where given, one sentence after another; PAD after the last."""
    extra = (before is not None) + (after is not None)
    sizes = lengths + extra
    total = int(sizes.sum())
    sentence = np.repeat(np.arange(len(lengths)), sizes)
    offset = np.arange(total) - np.repeat(np.cumsum(sizes) - sizes, sizes)  # position within the sentence
    inner = offset - (before is not None)  # position within the sentence's own ids
    out = np.full(length, PAD, dtype=np.int64)
    real = (inner >= 0) & (inner < lengths[sentence])
    out[:total][real] = flat[starts[sentence[real]] + inner[real]]
    if before is not None:
        out[:total][inner < 0] = before
    if after is not None:
        out[:total][inner >= lengths[sentence]] = after
    return out


def collate_packed(data: ParallelDataset, index: np.ndarray, bucket: int) -> Batch:
    """The sentences ``index`` of ``data`` packed: each side one row, the sentences back to back (the source
    with EOS, the decoder's input with BOS in front, its output with EOS at the end), then PAD up to the next
    multiple of ``bucket`` (at least one PAD: the padding forms a last segment of its own on both sides, so no
    position is left with nothing to attend to). The segment starts are padded to a multiple of 64 entries
    by repeating the end (empty segments), so compiled code sees few shapes."""
    index = np.asarray(index, dtype=np.int64)
    src_lens, tgt_lens = (side.lengths[index].astype(np.int64) for side in (data.src, data.tgt))
    n = len(index)
    real_s, real_t = int(src_lens.sum()) + n, int(tgt_lens.sum()) + n
    s_len, t_len = (-(-(real + 1) // bucket) * bucket for real in (real_s, real_t))
    src = _stream(data.src.tokens, data.src.offsets[index], src_lens, None, EOS, s_len)
    tgt_in = _stream(data.tgt.tokens, data.tgt.offsets[index], tgt_lens, BOS, None, t_len)
    tgt_out = _stream(data.tgt.tokens, data.tgt.offsets[index], tgt_lens, None, EOS, t_len)
    entries = -(-(n + 2) // 64) * 64

    def starts(lengths: np.ndarray, real: int, length: int) -> np.ndarray:
        out = np.full(entries, length, dtype=np.int32)
        out[0] = 0
        out[1 : n + 1] = np.cumsum(lengths + 1)
        out[n + 1] = length  # the padding's segment: real .. length
        assert out[n] == real
        return out

    longest = lambda lengths, real, length: -(-max(int(lengths.max()) + 1, length - real) // 64) * 64  # noqa: E731
    packing = Packing(torch.from_numpy(starts(src_lens, real_s, s_len)), torch.from_numpy(starts(tgt_lens, real_t, t_len)),
                      longest(src_lens, real_s, s_len), longest(tgt_lens, real_t, t_len))
    return Batch(torch.from_numpy(src)[None], torch.from_numpy(tgt_in)[None], torch.from_numpy(tgt_out)[None], real_s, real_t, packing)
