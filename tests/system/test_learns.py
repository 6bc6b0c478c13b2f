"""A tiny model must learn to copy and to reverse: the cheapest proof that gradients reach every part."""

import pytest
import torch

from nmt.model.config import model_config
from nmt.model.transformer import Transformer
from nmt.train.loss import label_smoothed_nll


@pytest.mark.parametrize("task", ["copy", "reverse"])
def test_tiny_learns(task: str) -> None:
    torch.manual_seed(0)
    vocab, length, batch = 20, 8, 64
    model = Transformer(model_config("tiny", vocab_size=vocab, dropout=0.0, d_model=64, d_ff=256))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, betas=(0.9, 0.98), eps=1e-9)

    def sample() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = torch.randint(4, vocab, (batch, length))
        y = x if task == "copy" else x.flip(1)
        eos = torch.full((batch, 1), 3)
        src = torch.cat([x, eos], 1)
        tgt_in = torch.cat([torch.full((batch, 1), 2), y], 1)
        tgt_out = torch.cat([y, eos], 1)
        return src, tgt_in, tgt_out

    for _ in range(400):
        src, tgt_in, tgt_out = sample()
        logits = model(src, tgt_in)
        loss, _, n = label_smoothed_nll(logits.log_softmax(-1).view(-1, vocab), tgt_out.reshape(-1), 0.0, pad_id=0)
        opt.zero_grad()
        (loss / n).backward()
        opt.step()
    model.eval()
    src, tgt_in, tgt_out = sample()
    with torch.no_grad():
        accuracy = (model(src, tgt_in).argmax(-1) == tgt_out).float().mean().item()
    assert accuracy > 0.95
