"""Packed batches (``--packing``): the same sentences collated as one row per side compute exactly what the
padded rows compute, for every attention, the loss and the gradients, and a training update from the same
state gives the same parameters."""

from __future__ import annotations

from dataclasses import replace
import copy
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from nmt.data.batching import collate_indices, collate_packed, pack_bucket
from nmt import atomic
from nmt.data.binarize import TokenWriter, sha256
from nmt.data.verify import checksum64
from nmt.data.dataset import ParallelDataset
from nmt.kernels import output_cross_entropy
from nmt.model.attention import SegmentMask, segment_ids
from nmt.model.transformer import Packing
from nmt.tokens import BOS, EOS, PAD
from nmt.train.config import RunConfig, TrainConfig
from nmt.train.distributed import Dist
from nmt.train.loop import Trainer
from tests.helpers import assert_same_model, tiny_model


@pytest.fixture(scope="module")
def pairs(fixture_data: Path, tmp_path_factory: pytest.TempPathFactory) -> ParallelDataset:
    """A prepared dataset (the fixture's vocabulary) whose training split is eight pairs: a one-piece source
    with a long target, a long source with a one-piece target, a one-piece pair, the fixture's longest pair,
    and four more of its training pairs."""
    folder = tmp_path_factory.mktemp("pairs")
    fixture = ParallelDataset(fixture_data, "train")
    shutil.copy(fixture_data / "spm.model", folder / "spm.model")
    longest = int(np.argmax(fixture.src_lengths + fixture.tgt_lengths))
    chosen = [(fixture.src[7][:1], fixture.tgt[longest]), (fixture.src[longest], fixture.tgt[7][:1]), (fixture.src[9][:1], fixture.tgt[9][:1]),
              fixture[longest], *(fixture[i] for i in (3, 40, 41, 120))]
    manifest = copy.deepcopy(fixture.manifest)
    for side, lang in enumerate(("en", "de")):
        writer = TokenWriter(folder / f"train.{lang}", manifest["dtype"])
        writer.add_many([np.asarray(pair[side]) for pair in chosen])
        for path in writer.commit():  # recorded as nmt prepare records them, so that opening the split verifies them
            manifest["files"][path.name] = {"bytes": path.stat().st_size, "sha256": sha256(path), "checksum64": checksum64(path)}
    atomic.write_json(folder / "manifest.json", manifest)
    return ParallelDataset(folder, "train")


def sentences(data: ParallelDataset) -> np.ndarray:
    return np.arange(len(data))


def test_a_packed_batch_holds_the_padded_batch_s_tokens(pairs: ParallelDataset) -> None:
    data = pairs
    index = sentences(data)
    padded, packed = collate_indices(data, index, 1), collate_packed(data, index, 64)
    starts_s, starts_t = packed.packing.src_starts, packed.packing.tgt_starts
    assert packed.src.shape[1] % 64 == 0 and packed.tgt_in.shape[1] % 64 == 0
    assert (packed.src_tokens, packed.tgt_tokens) == (padded.src_tokens, padded.tgt_tokens)
    for i in range(len(index)):
        for rows, stream, starts in ((padded.src, packed.src, starts_s), (padded.tgt_in, packed.tgt_in, starts_t),
                                     (padded.tgt_out, packed.tgt_out, starts_t)):
            real = rows[i][rows[i] != PAD] if rows is not padded.tgt_in else rows[i][: int(starts[i + 1] - starts[i])]
            assert torch.equal(stream[0, starts[i] : starts[i + 1]], real)
    n = len(index)
    assert int(starts_s[n]) == packed.src_tokens and int(starts_s[n + 1]) == packed.src.shape[1]  # the padding's segment
    assert (packed.src[0, starts_s[n] :] == PAD).all() and (packed.tgt_out[0, starts_t[n] :] == PAD).all()
    assert packed.tgt_in[0, starts_t[0]] == BOS and packed.src[0, starts_s[1] - 1] == EOS
    assert len(starts_s) % 64 == 0 and (starts_s[n + 1 :] == packed.src.shape[1]).all()  # empty segments after


def test_segment_mask_is_block_diagonal() -> None:
    starts = torch.tensor([0, 2, 5, 6, 6], dtype=torch.int32)
    assert segment_ids(starts, 6).tolist() == [0, 0, 1, 1, 1, 2]
    mask = SegmentMask(starts, starts, 3, 3).dense[0, 0]
    expected = torch.block_diag(torch.ones(2, 2), torch.ones(3, 3), torch.ones(1, 1)).bool()
    assert torch.equal(mask, expected)
    causal = SegmentMask(starts, starts, 3, 3, causal=True).dense[0, 0]
    assert torch.equal(causal, expected & torch.ones(6, 6, dtype=torch.bool).tril())
    assert Packing.positions(starts).tolist() == [[0, 1, 0, 1, 2, 0]]


def padded_and_packed(data: ParallelDataset, **model: object) -> tuple:
    index = sentences(data)
    return tiny_model(data.manifest["vocab"]["size"], offset_vectors=True, **model), collate_indices(data, index, 1), collate_packed(data, index, 64)


def real_rows(rows: torch.Tensor, tokens: torch.Tensor) -> list[torch.Tensor]:
    """Each sentence's real positions of a padded (B, T, d) tensor."""
    return [rows[i, : int((tokens[i] != PAD).sum())] for i in range(rows.size(0))]


def packed_rows(stream: torch.Tensor, starts: torch.Tensor, n: int) -> list[torch.Tensor]:
    return [stream[0, starts[i] : starts[i + 1]] for i in range(n)]


@pytest.mark.parametrize("variant", [{}, {"pre_norm": True}, {"positions": "learned"}])
def test_packed_outputs_equal_padded_outputs(pairs: ParallelDataset, variant: dict) -> None:
    """The encoder (its self-attention), the decoder (causal self-attention and attention to the encoder):
    every real position of every sentence, packed, equals the same position padded, to float32 rounding."""
    model, padded, packed = padded_and_packed(pairs, **variant)
    n, p = padded.src.size(0), packed.packing
    with torch.no_grad():
        enc_padded, enc_packed = model.encode(padded.src), model.encode(packed.src, p)
        for a, b in zip(real_rows(enc_padded.memory, padded.src), packed_rows(enc_packed.memory, p.src_starts, n)):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
        dec_padded = model.decode_features(padded.tgt_in, enc_padded)
        dec_packed = model.decode_features(packed.tgt_in, enc_packed, p)
        lengths = (padded.tgt_out != PAD).sum(1)
        for i, b in enumerate(packed_rows(dec_packed, p.tgt_starts, n)):
            torch.testing.assert_close(b, dec_padded[i, : int(lengths[i])], rtol=1e-5, atol=1e-5)


def test_packed_loss_and_gradients_equal_padded(pairs: ParallelDataset) -> None:
    model, padded, packed = padded_and_packed(pairs)
    results = []
    for batch in (padded, packed):
        model.zero_grad()
        hidden = model.features(batch.src, batch.tgt_in, batch.packing)
        loss, nll, n = output_cross_entropy(hidden.flatten(0, 1), model.output_weight, batch.tgt_out.view(-1), 0.1, PAD)
        loss.backward()
        results.append((loss.detach(), nll, n, {k: p.grad.clone() for k, p in model.named_parameters()}))
    (loss_a, nll_a, n_a, grads_a), (loss_b, nll_b, n_b, grads_b) = results
    assert n_a == n_b
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(nll_b, nll_a, rtol=1e-5, atol=1e-4)
    for name, g in grads_a.items():
        torch.testing.assert_close(grads_b[name], g, rtol=1e-4, atol=1e-5, msg=name)


def test_a_mask_that_lets_a_sentence_see_its_neighbour_is_caught(pairs: ParallelDataset, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests above have teeth: with the first two sentences merged into one segment in the encoder's mask
    only, their outputs change."""
    model, padded, packed = padded_and_packed(pairs)
    p = packed.packing
    leaky = p.src_starts.clone()
    leaky[1] = leaky[0]  # sentence 0 and 1 one segment: each sees the other
    monkeypatch.setattr(p, "encoder", SegmentMask(leaky, leaky, p.max_src * 2, p.max_src * 2))
    with torch.no_grad():
        got = packed_rows(model.encode(packed.src, p).memory, p.src_starts, 2)
        want = real_rows(model.encode(padded.src).memory, padded.src)[:2]
    assert not all(torch.allclose(a, b, rtol=1e-5, atol=1e-5) for a, b in zip(got, want))


def test_one_update_packed_equals_one_update_padded(fixture_data: Path, tmp_path: Path) -> None:
    """The same batch from the same state: the updated parameters agree to rounding."""
    t = TrainConfig(max_tokens=512, warmup=4, save_minutes=1e9, validate_every=1000)
    model = {"d_model": 32, "d_ff": 64, "heads": 2, "dropout": 0.0}
    trainers = [Trainer(RunConfig(data=fixture_data, save_dir=tmp_path / str(pack), arch="tiny", model=model,
                                  train=replace(t, packing=pack), cpu=True), Dist()) for pack in (False, True)]
    batch = trainers[0].epoch_batches(1)[0]
    initial = {k: v.clone() for k, v in trainers[0].model.state_dict().items()}
    for trainer in trainers:
        trainer.train_step([batch])
    a, b = (tr.model.state_dict() for tr in trainers)
    assert_same_model(a, b)
    assert all(not torch.equal(a[k], initial[k]) for k in a)  # the update moved every parameter


def test_pack_bucket() -> None:
    assert pack_bucket(512) == 64 and pack_bucket(4096) == 256 and pack_bucket(32768) == 2048 and pack_bucket(1000) == 64
