"""Decoding speed at beam 4 on the test split of the shared gettext-en-de corpus, on CPU threads.

Ours (``Translator``, batched by tokens) beside Hugging Face's ``MarianMTModel.generate`` built with the
same dimensions and beam (randomly initialised, so only its speed per generated token is comparable;
``pip install transformers`` for that row).

    python bench/decode_bench.py runs/quickstart/averaged.pt --threads 2 [--lines 500]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from nmt.decode.translate import TranslateConfig, Translator

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "gettext-en-de" / "test.en"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--input", type=Path, default=SHARED)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--beam", type=int, default=4)
    parser.add_argument("--lines", type=int, default=0, help="Only the first N lines (0: all).")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lines = args.input.read_text(encoding="utf-8").splitlines()
    if args.lines:
        lines = lines[: args.lines]
    translator = Translator([args.checkpoint], TranslateConfig(beam=args.beam))
    start = time.perf_counter()
    out = translator.translate_buffer(list(enumerate(lines, 1)))
    seconds = time.perf_counter() - start
    out_tokens = sum(len(translator.spm.encode(o.rstrip("\n"))) + 1 for o in out)
    print(f"nmt: {len(lines)} sentences in {seconds:.1f} s = {len(lines) / seconds:.1f} sent/s, {out_tokens / seconds:.0f} output tok/s "
          f"(beam {args.beam}, {args.threads} threads)")
    try:
        from transformers import MarianConfig, MarianMTModel
    except ImportError:
        print("transformers is not installed: no MarianMTModel row (pip install transformers)")
        return
    cfg = translator.models[0].cfg
    marian = MarianMTModel(MarianConfig(
        vocab_size=cfg.vocab_size, d_model=cfg.d_model, encoder_layers=cfg.encoder_layers, decoder_layers=cfg.decoder_layers,
        encoder_attention_heads=cfg.heads, decoder_attention_heads=cfg.heads, encoder_ffn_dim=cfg.d_ff, decoder_ffn_dim=cfg.d_ff,
        pad_token_id=0, eos_token_id=3, decoder_start_token_id=2, max_position_embeddings=cfg.max_positions,
        scale_embedding=True, share_encoder_decoder_embeddings=True)).eval()
    ids = [translator.spm.encode(line) + [3] for line in lines]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    generated, start = 0, time.perf_counter()
    with torch.inference_mode():
        for b in range(0, len(order), 64):
            chunk = [ids[i] for i in order[b : b + 64]]
            width = max(len(x) for x in chunk)
            src = torch.tensor([x + [0] * (width - len(x)) for x in chunk])
            result = marian.generate(src, attention_mask=src != 0, num_beams=args.beam, max_new_tokens=width + 50)
            generated += int((result[:, 1:] != 0).sum())
    seconds = time.perf_counter() - start
    print(f"MarianMTModel.generate (random weights): {len(lines) / seconds:.1f} sent/s, {generated / seconds:.0f} output tok/s")


if __name__ == "__main__":
    main()
