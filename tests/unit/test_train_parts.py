
import errno
import os
from pathlib import Path

import pytest
import torch

from nmt.errors import NmtError
from nmt.train.config import derive_update_freq
from nmt.train.resume import archive_run
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


def test_update_freq_keeps_tokens_per_update_across_device_counts() -> None:
    assert derive_update_freq(25000, 3125, 1) == 8
    assert derive_update_freq(25000, 3125, 8) == 1
    assert derive_update_freq(25000, 3125, 64) == 1
    assert derive_update_freq(25000, 3125, 2) == 4


def test_reset_on_a_folder_that_refuses_the_move(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--reset moves the earlier run aside; a permission refusing that (injected) is one line, not a traceback."""
    (tmp_path / "checkpoint_last.pt").write_bytes(b"x")

    def refuse(self: Path, target: Path) -> None:
        raise OSError(errno.EACCES, os.strerror(errno.EACCES), str(self), None, str(target))

    monkeypatch.setattr(Path, "rename", refuse)
    with pytest.raises(NmtError) as err:
        archive_run(tmp_path, print)
    assert str(err.value) == (f"{tmp_path / 'checkpoint_last.pt'}: permission denied; check the owner and permissions of {tmp_path}, "
                              "or choose another location")
