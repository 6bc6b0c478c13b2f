"""Forward+backward and full training-step throughput: nmt's Transformer beside torch.nn.Transformer.

Both models have the same dimensions, embeddings and tied output projection, and see the same batches in
the same run. Prints target tokens per second and the ratio (ours / reference).

    python bench/throughput.py --arch tiny base --threads 2 --steps 10
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from torch import nn

from nmt.model.config import model_config
from nmt.model.transformer import Transformer
from nmt.train.loss import label_smoothed_nll


class Reference(nn.Module):
    """torch.nn.Transformer with the paper's embeddings (scaled, sinusoidal PE) and a tied output layer."""

    def __init__(self, vocab: int, d: int, d_ff: int, heads: int, layers: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d, padding_idx=0)
        self.core = nn.Transformer(d, heads, layers, layers, d_ff, dropout=0.1, batch_first=True)
        self.scale = math.sqrt(d)
        from nmt.model.layers import sinusoidal_positions

        self.register_buffer("pe", sinusoidal_positions(1024, d))

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        x = self.embed(src) * self.scale + self.pe[: src.size(1)]
        y = self.embed(tgt) * self.scale + self.pe[: tgt.size(1)]
        mask = nn.Transformer.generate_square_subsequent_mask(tgt.size(1), device=src.device)
        h = self.core(x, y, tgt_mask=mask, src_key_padding_mask=src == 0, memory_key_padding_mask=src == 0, tgt_is_causal=True)
        return h @ self.embed.weight.t()


def batches(n: int, vocab: int, tokens: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Batches of sentences 10-40 tokens long, about ``tokens`` padded slots each, right-padded."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(10, 40, (1,), generator=g))
        rows = max(1, tokens // (length + 8))
        src = torch.randint(4, vocab, (rows, length + 8), generator=g)
        tgt = torch.randint(4, vocab, (rows, length + 8), generator=g)
        for i in range(rows):  # ragged lengths inside a batch, as after length bucketing
            cut = length + int(torch.randint(0, 8, (1,), generator=g))
            src[i, cut:] = 0
            tgt[i, cut:] = 0
        out.append((src, tgt[:, :-1], tgt[:, 1:]))
    return out


def measure(model: nn.Module, data: list, vocab: int, optimise: bool) -> float:
    """Target tokens per second of forward+backward (and an Adam step when ``optimise``)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-4) if optimise else None
    model.train()
    tokens, start = 0, 0.0
    for i, (src, tgt_in, tgt_out) in enumerate(data):
        if i == 1:  # the first step pays for warm-up
            start, tokens = time.perf_counter(), 0
        logits = model(src, tgt_in)
        loss, _, n = label_smoothed_nll(logits.float().log_softmax(-1).view(-1, vocab), tgt_out.reshape(-1), 0.1, 0)
        (loss / n).backward()
        if opt:
            opt.step()
            opt.zero_grad()
        else:
            model.zero_grad()
        tokens += int(n)
    return tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="+", default=["tiny", "base"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--train", action="store_true", help="Full training steps (with Adam) instead of forward+backward.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    what = "training step (fwd+bwd+Adam)" if args.train else "forward+backward"
    print(f"{what}, {args.threads} threads, vocab {args.vocab}, ~{args.max_tokens} slots per batch, torch {torch.__version__}")
    for arch in args.arch:
        cfg = model_config(arch, vocab_size=args.vocab)
        torch.manual_seed(0)
        ours = Transformer(cfg)
        ref = Reference(args.vocab, cfg.d_model, cfg.d_ff, cfg.heads, cfg.encoder_layers)
        data = batches(args.steps + 1, args.vocab, args.max_tokens)
        # Alternate the two so that both see the same machine state.
        a, b = measure(ours, data, args.vocab, args.train), measure(ref, data, args.vocab, args.train)
        a2, b2 = measure(ours, data, args.vocab, args.train), measure(ref, data, args.vocab, args.train)
        ours_tps, ref_tps = max(a, a2), max(b, b2)
        print(f"{arch:5s} nmt {ours_tps:9.0f} tgt tok/s   torch.nn.Transformer {ref_tps:9.0f} tgt tok/s   ratio {ours_tps / ref_tps:.2f}")


if __name__ == "__main__":
    main()
