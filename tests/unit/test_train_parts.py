
import pytest
import torch

from nmt.config import derive_update_freq
from nmt.train import loss as loss_module
from nmt.train.loss import label_smoothed_nll, output_cross_entropy
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


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("rows", [150, 64, 5])  # three blocks of 64, the last one short; one full block; one short block
@pytest.mark.parametrize("pad_blocks", [True, False])  # the CPU's plan (the last block padded to 64 rows), a GPU's (short)
def test_output_cross_entropy_equals_projection_then_loss(precision: str, rows: int, pad_blocks: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The output projection and the loss together (logits never stored, gradients computed in the forward
    pass) against autograd through F.linear and label_smoothed_nll in float64: the sums, and the gradients
    of the hidden states and of the weight, with padding, an incoming gradient other than 1, and the weight
    used a second time (tied embeddings) so that its gradients add up."""
    monkeypatch.setattr(loss_module, "block_plan", lambda vocab, device_type: (64, pad_blocks))
    torch.manual_seed(0)
    V, d, eps, pad = 11, 16, 0.1, 0
    hidden = torch.randn(rows, d)
    weight = torch.randn(V, d)
    target = torch.randint(0, V, (rows,))
    target[::4] = pad
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss, nll, n = output_cross_entropy(h, w, target, eps, pad)
    (0.37 * loss + w.sum()).backward()
    h64, w64 = hidden.double().requires_grad_(), weight.double().requires_grad_()
    if precision == "bf16":  # the products' inputs as bf16 sees them
        h64, w64 = hidden.bfloat16().double().requires_grad_(), weight.bfloat16().double().requires_grad_()
    ref_loss, ref_nll, ref_n = label_smoothed_nll(torch.nn.functional.linear(h64, w64).log_softmax(-1), target, eps, pad)
    (0.37 * ref_loss + w64.sum()).backward()
    tol = dict(rtol=1e-5, atol=1e-5) if precision == "fp32" else dict(rtol=1.5e-2, atol=1.5e-2)
    assert n.item() == ref_n.item() == (target != pad).sum().item()
    torch.testing.assert_close((loss.double(), nll.double()), (ref_loss, ref_nll), **tol)
    assert h.grad.dtype == w.grad.dtype == torch.float32
    torch.testing.assert_close(h.grad.double(), h64.grad, **tol)
    torch.testing.assert_close(w.grad.double(), w64.grad, **tol)
    assert h.grad[target == pad].abs().max() == 0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        assert torch.equal(torch.stack(output_cross_entropy(hidden, weight, target, eps, pad)[:2]), torch.stack([loss, nll]).detach())


def test_update_freq_keeps_tokens_per_update_across_device_counts() -> None:
    assert derive_update_freq(25000, 3125, 1) == 8
    assert derive_update_freq(25000, 3125, 8) == 1
    assert derive_update_freq(25000, 3125, 64) == 1
    assert derive_update_freq(25000, 3125, 2) == 4
