"""Decoding speed at beam 4 on the test split of the shared gettext-en-de corpus, on CPU threads.

Ours (``Translator``, batched by tokens) beside Hugging Face's ``MarianMTModel.generate`` (``pip install
transformers`` for that row) carrying *the same trained weights*: HF's Marian is also a post-norm
Transformer with scaled, tied embeddings, so our Q/K/V are split into its q/k/v projections and our
positional table copied into its own. Both then translate with the same model and beam, and the check that
their greedy outputs agree is printed. Length penalties differ (HF divides by |Y|^α): we run ours with the
fairseq convention, which is HF's.

    python bench/decode_bench.py runs/quickstart/averaged.pt --threads 2 [--lines 500]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from nmt.config import DecodeConfig
from nmt.decode.translate import TranslateConfig, Translator

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "gettext-en-de" / "test.en"


def to_marian(model, config_cls, model_cls):  # noqa: ANN001, ANN201 - transformers is optional
    """An HF MarianMTModel computing the same function as our post-norm ``model`` (up to LayerNorm ε)."""
    cfg = model.cfg
    marian = model_cls(config_cls(
        vocab_size=cfg.vocab_size, d_model=cfg.d_model, encoder_layers=cfg.encoder_layers, decoder_layers=cfg.decoder_layers,
        encoder_attention_heads=cfg.heads, decoder_attention_heads=cfg.heads, encoder_ffn_dim=cfg.d_ff, decoder_ffn_dim=cfg.d_ff,
        activation_function="relu", scale_embedding=True, share_encoder_decoder_embeddings=True, dropout=0.0,
        pad_token_id=0, eos_token_id=3, decoder_start_token_id=2, forced_eos_token_id=3, max_position_embeddings=cfg.max_positions)).eval()
    ours = model.state_dict()
    state = {"model.shared.weight": ours["src_embed.weight"], "lm_head.weight": ours["src_embed.weight"],
             "model.encoder.embed_tokens.weight": ours["src_embed.weight"], "model.decoder.embed_tokens.weight": ours["src_embed.weight"],
             "model.encoder.embed_positions.weight": model.positions, "model.decoder.embed_positions.weight": model.positions,
             "final_logits_bias": torch.zeros(1, cfg.vocab_size)}

    def attention(prefix: str, src: str) -> None:
        for part, (w, b) in zip("qkv", zip(ours[f"{src}.in_proj_weight"].chunk(3), ours[f"{src}.in_proj_bias"].chunk(3))):
            state[f"{prefix}.{part}_proj.weight"], state[f"{prefix}.{part}_proj.bias"] = w, b
        state[f"{prefix}.out_proj.weight"], state[f"{prefix}.out_proj.bias"] = ours[f"{src}.out_proj.weight"], ours[f"{src}.out_proj.bias"]

    blocks = {"encoder": [("self_attn", "self_attn", "attn_block")], "decoder": [("self_attn", "self_attn", "self_block"), ("encoder_attn", "cross_attn", "cross_block")]}
    for stack, attns in blocks.items():
        for i in range(cfg.encoder_layers if stack == "encoder" else cfg.decoder_layers):
            hf, us = f"model.{stack}.layers.{i}", f"{stack}.{i}"
            for hf_name, our_name, block in attns:
                attention(f"{hf}.{hf_name}", f"{us}.{our_name}")
                for p in ("weight", "bias"):
                    state[f"{hf}.{hf_name}_layer_norm.{p}"] = ours[f"{us}.{block}.norm.{p}"]
            for p in ("weight", "bias"):
                state[f"{hf}.fc1.{p}"], state[f"{hf}.fc2.{p}"] = ours[f"{us}.ffn.fc1.{p}"], ours[f"{us}.ffn.fc2.{p}"]
                state[f"{hf}.final_layer_norm.{p}"] = ours[f"{us}.ffn_block.norm.{p}"]
    marian.load_state_dict(state, strict=True)
    return marian


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
    translator = Translator([args.checkpoint], TranslateConfig(decode=DecodeConfig(beam=args.beam, penalty="fairseq", lenpen=0.6)))
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
    marian = to_marian(translator.models[0], MarianConfig, MarianMTModel)
    ids = [translator.spm.encode(line) + [3] for line in lines]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    generated, start = 0, time.perf_counter()
    with torch.inference_mode():
        for b in range(0, len(order), 64):
            chunk = [ids[i] for i in order[b : b + 64]]
            width = max(len(x) for x in chunk)
            src = torch.tensor([x + [0] * (width - len(x)) for x in chunk])
            result = marian.generate(src, attention_mask=src != 0, num_beams=args.beam, max_new_tokens=width + 50, length_penalty=0.6)
            generated += int((result[:, 1:] != 0).sum())
    seconds = time.perf_counter() - start
    from nmt.decode.beam import greedy_search

    probe = torch.tensor([ids[0] + [0] * 0])
    with torch.inference_mode():
        ours_greedy = greedy_search(translator.models[0], probe, [len(ids[0]) + 50])[0]
        theirs = marian.generate(probe, num_beams=1, do_sample=False, max_new_tokens=len(ids[0]) + 50)[0, 1:].tolist()
    theirs = [t for t in theirs if t not in (0, 3)]
    print(f"greedy outputs of the two models on line 1 agree: {ours_greedy == theirs}")
    print(f"MarianMTModel.generate (same weights): {len(lines) / seconds:.1f} sent/s, {generated / seconds:.0f} output tok/s")


if __name__ == "__main__":
    main()
