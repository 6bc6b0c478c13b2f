"""nmt.data.batching: token-budget batches of sentences of similar length, and padding them into tensors.

The first two tests moved here from tests/unit/test_train_parts.py unchanged."""

from pathlib import Path

import numpy as np
import pytest
import torch

from nmt.data.batching import Batch, collate, collate_indices, padded, token_batches
from nmt.data.dataset import ParallelDataset
from nmt.tokens import BOS, EOS, PAD


def test_token_batches_respect_budget_and_cover_everything() -> None:
    rng = np.random.default_rng(0)
    src, tgt = rng.integers(1, 60, 500), rng.integers(1, 60, 500)
    batches = token_batches(src, tgt, 512, seed=3, epoch=1)
    seen = np.sort(np.concatenate(batches))
    assert (seen == np.arange(500)).all()
    for b in batches:
        assert len(b) * padded(int(max(src[b].max(), tgt[b].max())) + 1, 8) <= 512
    again = token_batches(src, tgt, 512, seed=3, epoch=1)
    assert all((a == b).all() for a, b in zip(batches, again))
    other = token_batches(src, tgt, 512, seed=3, epoch=2)
    assert any(len(a) != len(b) or (a != b).any() for a, b in zip(batches, other))
    with pytest.raises(ValueError, match="max-tokens"):
        token_batches(np.array([100]), np.array([5]), 64, 0, 0)


def test_collate_adds_bos_eos_and_pads_to_multiple_of_8() -> None:
    batch = collate([(np.array([5, 6]), np.array([7])), (np.array([5]), np.array([8, 9, 10]))])
    assert batch.src.shape == (2, 8) and batch.tgt_in.shape == (2, 8)
    assert batch.src[0, :3].tolist() == [5, 6, 3]
    assert batch.tgt_in[1, :4].tolist() == [2, 8, 9, 10]
    assert batch.tgt_out[1, :4].tolist() == [8, 9, 10, 3]
    assert batch.tgt_tokens == 2 + 4 and batch.src_tokens == 3 + 2


@pytest.mark.parametrize("length, multiple, expected", [(0, 8, 0), (1, 8, 8), (8, 8, 8), (9, 8, 16), (5, 1, 5), (17, 4, 20)])
def test_padded(length: int, multiple: int, expected: int) -> None:
    assert padded(length, multiple) == expected


def test_unshuffled_batches_are_cut_greedily_in_length_order() -> None:
    # Sizes (longer side + 1): [4, 2, 6, 8]; sorted by target then source length: 1, 0, 2, 3.
    # 2×4 = 8 fits in 16; adding sentence 2 would need 3×6 = 18; then 2×8 = 16 fits exactly.
    src, tgt = np.array([3, 1, 2, 7]), np.array([2, 1, 5, 7])
    batches = token_batches(src, tgt, max_tokens=16, seed=0, epoch=0, multiple=1, shuffle=False)
    assert [b.tolist() for b in batches] == [[1, 0], [2, 3]]
    # With padding to 8, every sentence takes 8 slots: two per batch of 16.
    batches = token_batches(src, tgt, max_tokens=16, seed=0, epoch=0, multiple=8, shuffle=False)
    assert [b.tolist() for b in batches] == [[1, 0], [2, 3]]
    batches = token_batches(src, tgt, max_tokens=15, seed=0, epoch=0, multiple=8, shuffle=False)
    assert [b.tolist() for b in batches] == [[1], [0], [2], [3]]
    # A new batch starts from its own first sentence's size, not the longest of the previous batch.
    src, tgt = np.array([10, 1, 1]), np.array([1, 2, 2])  # sizes 11, 3, 3
    batches = token_batches(src, tgt, max_tokens=11, seed=0, epoch=0, multiple=1, shuffle=False)
    assert [b.tolist() for b in batches] == [[0], [1, 2]]


def test_ties_are_broken_by_source_length_then_at_random() -> None:
    src, tgt = np.array([5, 2, 9, 2]), np.array([4, 4, 4, 4])
    batches = token_batches(src, tgt, max_tokens=1000, seed=0, epoch=0, multiple=1, shuffle=False)
    assert [b.tolist() for b in batches] == [[1, 3, 0, 2]]
    orders = {tuple(token_batches(src, tgt, 1000, seed=0, epoch=e, multiple=1)[0].tolist()) for e in range(20)}
    assert orders == {(1, 3, 0, 2), (3, 1, 0, 2)}  # only equal-length sentences swap


def test_batches_of_the_fixture_training_split(fixture_data: Path) -> None:
    data = ParallelDataset(fixture_data, "train")
    batches = token_batches(data.src_lengths, data.tgt_lengths, max_tokens=256, seed=1, epoch=1)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(data)))
    for b in batches:
        batch = collate([data[int(i)] for i in b])  # each side padded to a multiple of 8 of its own longest + 1
        assert batch.src.numel() <= 256 and batch.tgt_in.numel() <= 256
    assert len(batches) > 1


def test_collate_exact_tensors_without_padding_multiple() -> None:
    batch = collate([(np.array([5, 6]), np.array([7])), (np.array([9]), np.array([8, 9, 10]))], multiple=1)
    assert batch.src.tolist() == [[5, 6, EOS], [9, EOS, PAD]]
    assert batch.tgt_in.tolist() == [[BOS, 7, PAD, PAD], [BOS, 8, 9, 10]]
    assert batch.tgt_out.tolist() == [[7, EOS, PAD, PAD], [8, 9, 10, EOS]]
    assert batch.src.dtype == torch.int64
    assert batch.slots == 6 + 8
    assert batch.to(torch.device("cpu")) is batch


def test_collate_of_an_empty_source() -> None:
    batch = collate([(np.array([], dtype=np.uint16), np.array([4], dtype=np.uint16))], multiple=1)
    assert batch.src.tolist() == [[EOS]] and batch.src_tokens == 1 and batch.tgt_tokens == 2
    assert isinstance(batch, Batch)


def _collate_one_by_one(pairs: list[tuple[np.ndarray, np.ndarray]], multiple: int) -> list[list[list[int]]]:
    """The padded (source, decoder input, decoder output) built sentence by sentence, as a reference."""
    s = padded(max(len(x) for x, _ in pairs) + 1, multiple)
    t = padded(max(len(y) for _, y in pairs) + 1, multiple)
    fill = lambda ids, width: list(ids) + [PAD] * (width - len(ids))  # noqa: E731
    return [[fill([*map(int, x), EOS], s) for x, _ in pairs], [fill([BOS, *map(int, y)], t) for _, y in pairs],
            [fill([*map(int, y), EOS], t) for _, y in pairs]]


@pytest.mark.parametrize("multiple", [1, 8])
def test_collate_and_collate_indices_equal_a_sentence_by_sentence_reference(fixture_data: Path, multiple: int) -> None:
    data = ParallelDataset(fixture_data, "train")
    batches = token_batches(data.src_lengths, data.tgt_lengths, max_tokens=256, seed=1, epoch=1, multiple=multiple)
    for b in batches:
        pairs = [data[int(i)] for i in b]
        expected = _collate_one_by_one(pairs, multiple)
        for batch in (collate(pairs, multiple), collate_indices(data, b, multiple)):
            assert [batch.src.tolist(), batch.tgt_in.tolist(), batch.tgt_out.tolist()] == expected
            assert batch.src_tokens == sum(len(x) + 1 for x, _ in pairs)
            assert batch.tgt_tokens == sum(len(y) + 1 for _, y in pairs)
            assert batch.src.dtype == batch.tgt_in.dtype == batch.tgt_out.dtype == torch.int64
