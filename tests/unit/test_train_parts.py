
import numpy as np
import pytest
import torch

from nmt.data.batching import collate, padded, token_batches
from nmt.config import derive_update_freq
from nmt.train.loss import label_smoothed_nll
from nmt.train.schedule import inverse_sqrt_lr, noam_lr


def test_noam_schedule_matches_paper_formula() -> None:
    assert noam_lr(4000, 512, 4000) == pytest.approx(6.9877e-4, rel=1e-4)
    assert noam_lr(4000, 1024, 4000) == pytest.approx(4.941e-4, rel=1e-3)
    assert noam_lr(2000, 512, 4000) == pytest.approx(noam_lr(16000, 512, 4000))
    for step in (1, 10, 3999, 4000, 4001, 100_000):
        expected = 512**-0.5 * min(step**-0.5, step * 4000**-1.5)
        assert noam_lr(step, 512, 4000) == pytest.approx(expected, rel=1e-12)
    assert noam_lr(100, 512, 4000, scale=2.0) == pytest.approx(2 * noam_lr(100, 512, 4000))


def test_inverse_sqrt_schedule() -> None:
    assert inverse_sqrt_lr(4000, 5e-4, 4000) == pytest.approx(5e-4)
    assert inverse_sqrt_lr(16000, 5e-4, 4000) == pytest.approx(2.5e-4)
    assert inverse_sqrt_lr(2000, 5e-4, 4000, init=0.0) == pytest.approx(2.5e-4)
    # With peak = the paper's big peak, fairseq's schedule equals the paper's after warm-up.
    assert inverse_sqrt_lr(9000, noam_lr(4000, 1024, 4000), 4000) == pytest.approx(noam_lr(9000, 1024, 4000))


def test_label_smoothed_loss_equals_direct_computation() -> None:
    torch.manual_seed(0)
    V, eps, pad = 7, 0.1, 0
    lprobs = torch.randn(5, V).log_softmax(-1)
    target = torch.tensor([3, 0, 6, 1, 0])
    loss, nll, n = label_smoothed_nll(lprobs, target, eps, pad)
    expected_loss = expected_nll = 0.0
    for i, t in enumerate(target.tolist()):
        if t == pad:
            continue
        q = torch.full((V,), eps / (V - 1))
        q[t] = 1 - eps
        expected_loss += -(q * lprobs[i]).sum().item()
        expected_nll += -lprobs[i, t].item()
    assert n.item() == 3
    assert loss.item() == pytest.approx(expected_loss, rel=1e-6)
    assert nll.item() == pytest.approx(expected_nll, rel=1e-6)
    # PyTorch's built-in spreads ε/V, a different target distribution.
    builtin = torch.nn.functional.cross_entropy(lprobs, target, ignore_index=pad, label_smoothing=eps, reduction="sum")
    assert builtin.item() != pytest.approx(loss.item(), rel=1e-7)


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


def test_update_freq_keeps_tokens_per_update_across_device_counts() -> None:
    assert derive_update_freq(25000, 3125, 1) == 8
    assert derive_update_freq(25000, 3125, 8) == 1
    assert derive_update_freq(25000, 3125, 64) == 1
    assert derive_update_freq(25000, 3125, 2) == 4


def test_token_dtype_follows_vocabulary_size() -> None:
    from nmt.data.binarize import token_dtype

    assert token_dtype(65536) == "uint16" and token_dtype(65537) == "int32"
