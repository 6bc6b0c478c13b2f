"""Hugging Face export: a ``MarianMTModel`` folder (config, safetensors weights, generation config) and a
``MarianTokenizer`` over our SentencePiece model, loadable with ``from_pretrained``.

Marian in Transformers is, like ours, a post-norm Transformer with √d_model-scaled embeddings, sinusoidal
positions from 0, ReLU (when asked) and tied embeddings. Two things it fixes that we do not:

- Its positional table is rebuilt by ``from_pretrained`` (the weights are never saved), in the concatenated
  layout ``[sin(pos·ω_0..ω_{d/2-1}) | cos(...)]``, the same frequencies as our interleaved
  ``[sin ω_0, cos ω_0, sin ω_1, ...]``. So the exported model works in a *permuted* hidden basis: feature
  ``j`` of Marian's residual stream is our feature ``perm[j]`` (even features first, then odd ones). Every
  matrix reading the residual stream has its input columns permuted, every matrix or bias writing it its
  output rows, and each layer norm its γ and β (a layer norm commutes with a permutation of its features).
  The function computed is exactly ours, with Marian's own table, and it survives ``save_pretrained``.
- Its layer norms use ε = 1e-5 (``nn.LayerNorm``'s default, not configurable); ours use 1e-6. The
  difference moves logits by about 1e-5 (see docs/export.md); it is the one inexactness of this export.

Marian has no pre-norm variant: pre-norm checkpoints are refused (CTranslate2 takes them).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from nmt.decode.config import decode_config
from nmt.errors import NmtError
from nmt.model.config import ModelConfig
from nmt.model.transformer import Transformer
from nmt.tokens import BOS, EOS, PAD, SPECIAL_PIECES, UNK


def require():  # noqa: ANN201 - returns the optional module
    try:
        import transformers
    except ImportError:
        raise NmtError("Hugging Face Transformers is not installed: pip install 'nmt[huggingface]'") from None
    return transformers


def check(cfg: ModelConfig, path: Path) -> None:
    if cfg.pre_norm:
        raise NmtError(f"{path}: a pre-norm model cannot be a MarianMTModel (Marian is post-norm only); use --to ctranslate2")
    if cfg.d_model % 2:
        raise NmtError(f"{path}: d_model {cfg.d_model} is odd; Marian's positional table needs an even width")
    if cfg.positions != "sinusoidal":
        raise NmtError(f"{path}: Marian's positions are sinusoidal; a model with learned positions cannot be a MarianMTModel; use --to ctranslate2")
    if cfg.d_model % cfg.heads or cfg.key_dim != cfg.d_model // cfg.heads or cfg.value_dim != cfg.d_model // cfg.heads:
        raise NmtError(f"{path}: Marian's heads have d_model / heads dimensions; d_k {cfg.key_dim}, d_v {cfg.value_dim} cannot be exported")


def hidden_permutation(d_model: int) -> torch.Tensor:
    """``perm`` with Marian feature ``j`` = our feature ``perm[j]``: our sin features (even), then cos (odd)."""
    return torch.cat([torch.arange(0, d_model, 2), torch.arange(1, d_model, 2)])


def marian_config(cfg: ModelConfig):  # noqa: ANN201 - a transformers MarianConfig
    from transformers import MarianConfig

    return MarianConfig(
        vocab_size=cfg.vocab_size, decoder_vocab_size=cfg.vocab_size, d_model=cfg.d_model,
        encoder_layers=cfg.encoder_layers, decoder_layers=cfg.decoder_layers,
        encoder_attention_heads=cfg.heads, decoder_attention_heads=cfg.heads,
        encoder_ffn_dim=cfg.d_ff, decoder_ffn_dim=cfg.d_ff, activation_function="relu",
        max_position_embeddings=cfg.max_positions, scale_embedding=True,
        share_encoder_decoder_embeddings=cfg.share_embeddings, tie_word_embeddings=cfg.share_embeddings,
        dropout=cfg.dropout, attention_dropout=cfg.attention_dropout, activation_dropout=cfg.relu_dropout,
        pad_token_id=PAD, eos_token_id=EOS, bos_token_id=BOS, decoder_start_token_id=BOS,
        forced_eos_token_id=None,  # (Marian's default is 0) generation settings live in the GenerationConfig
    )


def marian_state(model: Transformer) -> dict[str, torch.Tensor]:
    """Our parameters under Marian's names, in Marian's permuted hidden basis (see the module docstring)."""
    cfg, ours = model.cfg, {k: v.detach().to(torch.float32) for k, v in model.state_dict().items()}
    perm = hidden_permutation(cfg.d_model)
    reads = lambda w: w[:, perm].contiguous()  # noqa: E731 - (out, d): input columns from the residual stream
    writes = lambda w: w[perm].contiguous()  # noqa: E731 - (d, ...) rows / (d,) biases into the residual stream
    state: dict[str, torch.Tensor] = {"final_logits_bias": torch.zeros(1, cfg.vocab_size)}
    src, tgt = reads(ours["src_embed.weight"]), reads(ours["tgt_embed.weight"])
    out = tgt if model.output_proj is None else reads(ours["output_proj.weight"])
    if cfg.share_embeddings:
        state["model.shared.weight"] = src
    state.update({"model.encoder.embed_tokens.weight": src, "model.decoder.embed_tokens.weight": tgt, "lm_head.weight": out})

    def attention(hf: str, us: str, norm: str) -> None:
        for part, w, b in zip("qkv", ours[f"{us}.in_proj_weight"].chunk(3), ours[f"{us}.in_proj_bias"].chunk(3)):
            state[f"{hf}.{part}_proj.weight"], state[f"{hf}.{part}_proj.bias"] = reads(w), b
        state[f"{hf}.out_proj.weight"], state[f"{hf}.out_proj.bias"] = writes(ours[f"{us}.out_proj.weight"]), writes(ours[f"{us}.out_proj.bias"])
        state[f"{hf}_layer_norm.weight"], state[f"{hf}_layer_norm.bias"] = writes(ours[f"{norm}.weight"]), writes(ours[f"{norm}.bias"])

    def ffn(hf: str, us: str) -> None:
        state[f"{hf}.fc1.weight"], state[f"{hf}.fc1.bias"] = reads(ours[f"{us}.ffn.fc1.weight"]), ours[f"{us}.ffn.fc1.bias"]
        state[f"{hf}.fc2.weight"], state[f"{hf}.fc2.bias"] = writes(ours[f"{us}.ffn.fc2.weight"]), writes(ours[f"{us}.ffn.fc2.bias"])
        state[f"{hf}.final_layer_norm.weight"] = writes(ours[f"{us}.ffn_block.norm.weight"])
        state[f"{hf}.final_layer_norm.bias"] = writes(ours[f"{us}.ffn_block.norm.bias"])

    for i in range(cfg.encoder_layers):
        hf, us = f"model.encoder.layers.{i}", f"encoder.{i}"
        attention(f"{hf}.self_attn", f"{us}.self_attn", f"{us}.attn_block.norm")
        ffn(hf, us)
    for i in range(cfg.decoder_layers):
        hf, us = f"model.decoder.layers.{i}", f"decoder.{i}"
        attention(f"{hf}.self_attn", f"{us}.self_attn", f"{us}.self_block.norm")
        attention(f"{hf}.encoder_attn", f"{us}.cross_attn", f"{us}.cross_block.norm")
        ffn(hf, us)
    return state


def build(model: Transformer, decode: dict[str, Any] | None = None):  # noqa: ANN201 - a MarianMTModel
    """A ``MarianMTModel`` (eval mode) computing ``model``'s function, with a generation config that searches
    as ``nmt translate --penalty fairseq`` does with the checkpoint's ``[decode]`` settings (beam, α on |Y|
    counting EOS, EOS forced at the limit, no padding or BOS generated, and the stopping rule: Transformers'
    ``early_stopping=True`` is ``--stop beam``; ``"never"`` is Transformers' nearest rule to ``--stop bound``,
    which it approximates: both stop on a bound, but Transformers lets only the top beam candidates finish)."""
    require()
    from transformers import GenerationConfig, MarianMTModel

    cfg = model.cfg
    marian = MarianMTModel(marian_config(cfg))
    state = marian_state(model)
    # Positional tables are Marian's own (the reason for the permutation); everything else must be ours.
    expected = {k for k in marian.state_dict() if not k.endswith("embed_positions.weight")}
    if set(state) - expected or expected - set(state):
        raise NmtError(f"transformers' MarianMTModel has other parameters than expected: {sorted(set(state) ^ expected)[:4]}")
    marian.load_state_dict(state, strict=False)
    decode = decode_config({"decode": decode or {}})
    marian.generation_config = GenerationConfig(
        decoder_start_token_id=BOS, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD, forced_eos_token_id=EOS,
        bad_words_ids=[[PAD], [BOS]], num_beams=decode.beam, length_penalty=decode.lenpen,
        early_stopping=True if decode.stop == "beam" else "never", max_length=cfg.max_positions + 1,  # + the decoder start token
    )
    return marian.eval()


def write(model: Transformer, vocab: list[str], meta: dict[str, Any], out: Path, quantization: str | None) -> dict[str, Any]:
    """The model folder and its tokenizer, in the empty folder ``out``."""
    transformers = require()
    from transformers import MarianTokenizer

    from transformers.utils import logging as hf_logging

    marian = build(model, (meta.get("config") or {}).get("decode"))
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a bar for writing one small file is noise on the command line
    try:
        marian.save_pretrained(out)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    spm_bytes = meta["vocab"].numpy().tobytes()
    for name in ("source.spm", "target.spm"):
        (out / name).write_bytes(spm_bytes)
    # Piece → our id, so the tokenizer's ids are the model's.
    (out / "vocab.json").write_text(json.dumps({piece: i for i, piece in enumerate(vocab)}, ensure_ascii=False), encoding="utf-8")
    manifest = meta.get("manifest", {})
    tokenizer = MarianTokenizer(
        source_spm=str(out / "source.spm"), target_spm=str(out / "target.spm"), vocab=str(out / "vocab.json"),
        source_lang=manifest.get("src"), target_lang=manifest.get("tgt"), unk_token=SPECIAL_PIECES[UNK],
        eos_token=SPECIAL_PIECES[EOS], pad_token=SPECIAL_PIECES[PAD], model_max_length=model.cfg.max_positions,
        clean_up_tokenization_spaces=False,  # decode as SentencePiece does (older Transformers default to True)
    )
    tokenizer.save_pretrained(out)
    return {"transformers_version": transformers.__version__, "hidden_permutation": "even features, then odd (see nmt.export.marian)"}
