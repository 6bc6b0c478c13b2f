"""A tiny model must learn to copy and to reverse: the cheapest proof that gradients reach every part."""

import pytest
import torch

from nmt.train.loss import label_smoothed_nll
from nmt.train.schedule import inverse_sqrt_lr
from tests.helpers import tiny_model


@pytest.mark.parametrize("task", ["copy", "reverse"])
def test_tiny_learns(task: str) -> None:
    vocab, length, batch = 20, 8, 64
    model = tiny_model(vocab, d_model=64, d_ff=256, heads=4).train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, betas=(0.9, 0.98), eps=1e-9)

    def sample(rows: int = batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = torch.randint(4, vocab, (rows, length))
        y = x if task == "copy" else x.flip(1)
        eos = torch.full((rows, 1), 3)
        src = torch.cat([x, eos], 1)
        tgt_in = torch.cat([torch.full((rows, 1), 2), y], 1)
        tgt_out = torch.cat([y, eos], 1)
        return src, tgt_in, tgt_out

    # A warm-up and a decaying rate, as in real training: with a constant 3e-3 the reverse task ended
    # anywhere between 0.9 and 1.0 depending on the machine's thread count; with this schedule it reached
    # 1.0 on every seed and thread count tried.
    for step in range(1, 401):
        for group in opt.param_groups:
            group["lr"] = inverse_sqrt_lr(step, 3e-3, 50, 0.0)
        src, tgt_in, tgt_out = sample()
        logits = model(src, tgt_in)
        loss, _, n = label_smoothed_nll(logits.log_softmax(-1).view(-1, vocab), tgt_out.reshape(-1), 0.0, pad_id=0)
        opt.zero_grad()
        (loss / n).backward()
        opt.step()
    model.eval()
    src, tgt_in, tgt_out = sample(1024)
    with torch.no_grad():
        accuracy = (model(src, tgt_in).argmax(-1) == tgt_out).float().mean().item()
    assert accuracy > 0.95
