"""CTranslate2 export: a ``TransformerSpec`` filled directly from our weights, and translation with it.

How our model maps onto CTranslate2's Transformer:

- Attention: our fused ``in_proj_weight`` (Q;K;V rows, as ``nn.MultiheadAttention``) is CTranslate2's fused
  self-attention ``linear[0]``; cross-attention takes rows [0:d] as ``linear[0]`` (queries) and rows [d:3d]
  as the fused keys/values ``linear[1]``; ``out_proj`` is the last linear. Queries are scaled by 1/√d_k in
  both.
- Layer norms: post-norm ``LN(x + sublayer(x))`` (``pre_norm=False``, no final norm per stack) or pre-norm
  with the stack's final norm; ε is written to ``config.json`` (``layer_norm_epsilon``), so 1e-6 is kept.
- Embeddings × √d_model (``scale_embeddings``), plus *our* positional table (the paper's interleaved sin/cos,
  positions from 0) written as ``position_encodings`` for both stacks: CTranslate2's built-in table is the
  concatenated [sin, cos] layout starting at position 1, which is another function. (fairseq's converter
  drops its first ``padding_idx + 1`` rows because fairseq counts positions from there; ours start at 0.)
- Output projection: the (tied) target embedding, no bias. Tied matrices are stored once (CTranslate2
  aliases equal variables).
- Tokens: the SentencePiece pieces in id order, so CTranslate2's ids are ours; the source gets EOS appended
  (``add_source_eos``), the decoder starts from BOS ``<s>`` (``decoder_start_token``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import sentencepiece as spm

from nmt.decode.config import DecodeConfig
from nmt.data.text import normalise
from nmt.errors import NmtError
from nmt.model.config import ModelConfig
from nmt.tokens import BOS, EOS, PAD, SPECIAL_PIECES, UNK

if TYPE_CHECKING:  # torch is only needed to export, not to translate with CT2Translator
    import torch

    from nmt.model.transformer import Transformer


def require():  # noqa: ANN201 - returns the optional module
    try:
        import ctranslate2
    except ImportError:
        raise NmtError("CTranslate2 is not installed: pip install 'nmt[ctranslate2]'") from None
    return ctranslate2


def check(cfg: ModelConfig, path: Path) -> None:
    """Refuse what CTranslate2's TransformerSpec cannot express faithfully: heads whose d_k or d_v is not
    d_model / h (Table 3's rows A and B), since it derives the head size from d_model. Learned positions
    are a table like ours, and are exported."""
    if cfg.d_model % cfg.heads or cfg.key_dim != cfg.d_model // cfg.heads or cfg.value_dim != cfg.d_model // cfg.heads:
        raise NmtError(f"{path}: d_k {cfg.key_dim} and d_v {cfg.value_dim} must both be d_model / heads = {cfg.d_model / cfg.heads:g} for CTranslate2")


def _np(t: "torch.Tensor") -> np.ndarray:
    return t.detach().float().contiguous().numpy().copy()


def _linear(spec: Any, weight: "torch.Tensor", bias: "torch.Tensor | None") -> None:
    spec.weight = _np(weight)
    if bias is not None:
        spec.bias = _np(bias)


def _norm(spec: Any, norm: "torch.nn.LayerNorm") -> None:
    spec.gamma, spec.beta = _np(norm.weight), _np(norm.bias)


def build_spec(model: "Transformer", vocab: list[str]):  # noqa: ANN201 - a ctranslate2 TransformerSpec
    """The CTranslate2 ``TransformerSpec`` computing the same function as ``model`` (validated, not optimised)."""
    ct2 = require()
    from ctranslate2.specs import common_spec, transformer_spec

    cfg, d = model.cfg, model.cfg.d_model
    spec = transformer_spec.TransformerSpec.from_config(
        (cfg.encoder_layers, cfg.decoder_layers), cfg.heads, pre_norm=cfg.pre_norm, activation=common_spec.Activation.RELU,
    )
    spec.config.layer_norm_epsilon = cfg.layer_norm_eps
    spec.config.unk_token, spec.config.bos_token, spec.config.eos_token = SPECIAL_PIECES[UNK], SPECIAL_PIECES[BOS], SPECIAL_PIECES[EOS]
    spec.config.decoder_start_token = SPECIAL_PIECES[BOS]
    spec.config.add_source_bos, spec.config.add_source_eos = False, True

    positions = _np(model.positions if model.position_embed is None else model.position_embed.weight)
    for stack, table in ((spec.encoder, model.src_embed), (spec.decoder, model.tgt_embed)):
        stack.scale_embeddings = True
        stack.position_encodings.encodings = positions
        embeddings = stack.embeddings[0] if isinstance(stack.embeddings, list) else stack.embeddings
        embeddings.weight = _np(table.weight)
    output = model.tgt_embed.weight if model.output_proj is None else model.output_proj.weight
    _linear(spec.decoder.projection, output, None)
    if cfg.pre_norm:
        _norm(spec.encoder.layer_norm, model.encoder_norm)
        _norm(spec.decoder.layer_norm, model.decoder_norm)

    def ffn(target: Any, layer: Any) -> None:
        _linear(target.linear_0, layer.ffn.fc1.weight, layer.ffn.fc1.bias)
        _linear(target.linear_1, layer.ffn.fc2.weight, layer.ffn.fc2.bias)
        _norm(target.layer_norm, layer.ffn_block.norm)

    for target, layer in zip(spec.encoder.layer, model.encoder):
        attn = layer.self_attn
        _linear(target.self_attention.linear[0], attn.in_proj_weight, attn.in_proj_bias)
        _linear(target.self_attention.linear[1], attn.out_proj.weight, attn.out_proj.bias)
        _norm(target.self_attention.layer_norm, layer.attn_block.norm)
        ffn(target.ffn, layer)
    for target, layer in zip(spec.decoder.layer, model.decoder):
        attn, cross = layer.self_attn, layer.cross_attn
        _linear(target.self_attention.linear[0], attn.in_proj_weight, attn.in_proj_bias)
        _linear(target.self_attention.linear[1], attn.out_proj.weight, attn.out_proj.bias)
        _norm(target.self_attention.layer_norm, layer.self_block.norm)
        _linear(target.attention.linear[0], cross.in_proj_weight[:d], cross.in_proj_bias[:d])
        _linear(target.attention.linear[1], cross.in_proj_weight[d:], cross.in_proj_bias[d:])
        _linear(target.attention.linear[2], cross.out_proj.weight, cross.out_proj.bias)
        _norm(target.attention.layer_norm, layer.cross_block.norm)
        ffn(target.ffn, layer)

    spec.register_source_vocabulary(vocab)
    spec.register_target_vocabulary(vocab)
    try:
        spec.validate()
    except ValueError as err:
        raise NmtError(f"CTranslate2 {ct2.__version__} does not accept the spec: {str(err).splitlines()[0]}") from None
    return spec


def write(model: "Transformer", vocab: list[str], meta: dict[str, Any], out: Path, quantization: str | None) -> dict[str, Any]:
    """Save the spec (weights quantized as asked) into the empty folder ``out``."""
    ct2 = require()
    spec = build_spec(model, vocab)
    spec.optimize(quantization=quantization or "float32")
    spec.save(str(out))
    return {"ctranslate2_version": ct2.__version__}


def check_decode(decode: DecodeConfig) -> None:
    """Refuse the search settings CTranslate2 has no equivalent of."""
    if decode.penalty != "fairseq":
        raise NmtError("CTranslate2 divides scores by |Y|^α: use --penalty fairseq (the gnmt penalty is not available)")
    if decode.stop != "beam":
        raise NmtError("CTranslate2 stops once --beam hypotheses have finished: use --stop beam (the exact bound is not available)")


class CT2Translator:
    """Translate raw lines with an exported CTranslate2 folder as ``nmt translate --penalty fairseq`` does:
    same normalisation and SentencePiece encoding, same per-sentence output limit (one ``translate_batch``
    call per source length), no padding or BOS generated, EOS allowed from the first step. CTranslate2's
    ``length_penalty`` is already |Y|^α with |Y| counting EOS (``test_ct2_beam_score_is_the_fairseq_penalty``).

    At the output limit ours puts EOS in the last place where CTranslate2 puts another token: that token is
    dropped here, which makes greedy search identical. CTranslate2 stops a sentence once ``beam``
    hypotheses have finished, as ``--stop beam`` does; it has no exact bound (``--stop bound``).
    """

    def __init__(self, model_dir: Path, device: str = "cpu", compute_type: str = "default", threads: int = 2) -> None:
        ct2 = require()
        info_path = model_dir / "nmt_export.json"
        if not info_path.exists():
            raise NmtError(f"{model_dir}: no nmt_export.json; not a folder written by nmt export")
        self.info = json.loads(info_path.read_text(encoding="utf-8"))
        # CTranslate2 and torch share one OpenMP runtime: creating the translator sets torch's thread count
        # to intra_threads too. Put it back (CTranslate2's own workers keep intra_threads).
        loaded_torch = sys.modules.get("torch")
        torch_threads = loaded_torch.get_num_threads() if loaded_torch else None
        self.translator = ct2.Translator(str(model_dir), device=device, compute_type=compute_type,
                                         intra_threads=threads, inter_threads=1)
        if loaded_torch and torch_threads:
            loaded_torch.set_num_threads(torch_threads)
        self.spm = spm.SentencePieceProcessor(model_file=str(model_dir / self.info["sentencepiece"]))
        self.src_lang = self.info["source_language"]

    def tokenize(self, text: str) -> list[str]:
        """SentencePiece pieces of ``text``, normalised as the training data was; not truncated."""
        return self.spm.encode(normalise(text, self.src_lang), out_type=str)

    def encode(self, text: str) -> list[str]:
        return self.tokenize(text)[: self.info["max_source_tokens"]]

    def translate(self, lines: list[str], decode: DecodeConfig, max_batch_tokens: int = 4096) -> list[str]:
        """Detokenised translations of ``lines`` (empty lines stay empty), in order."""
        return self.translate_pieces([self.encode(line) if line.strip() else [] for line in lines], decode, max_batch_tokens)

    def translate_pieces(self, sources: list[list[str]], decode: DecodeConfig, max_batch_tokens: int = 4096) -> list[str]:
        """Detokenised translations of SentencePiece ``sources`` (an empty source stays empty), in order."""
        check_decode(decode)
        # One call per source length: the output limit a·|x| + b is per sentence, CTranslate2's per call.
        by_length: dict[int, list[int]] = {}
        for i, src in enumerate(sources):
            if src:
                by_length.setdefault(len(src), []).append(i)
        out = [""] * len(sources)
        suppress = [[SPECIAL_PIECES[PAD]], [SPECIAL_PIECES[BOS]]]  # ours never emits padding or BOS either
        for n, rows in sorted(by_length.items()):
            limit = decode.max_output_len(n, self.info["max_positions"])  # output tokens, EOS included
            results = self.translator.translate_batch(
                [sources[i] for i in rows], beam_size=decode.beam, length_penalty=decode.lenpen, patience=1.0,
                max_decoding_length=limit, min_decoding_length=0,
                return_end_token=True,  # to tell a hypothesis that ended from one the limit stopped
                max_input_length=0, suppress_sequences=suppress, max_batch_size=max_batch_tokens, batch_type="tokens",
            )
            for i, result in zip(rows, results):
                tokens = result.hypotheses[0]
                if tokens and tokens[-1] == SPECIAL_PIECES[EOS]:
                    tokens = tokens[:-1]
                else:  # stopped by the limit: ours puts EOS in the last place, CTranslate2 another token
                    tokens = tokens[: limit - 1]
                out[i] = self.spm.decode([self.spm.piece_to_id(t) for t in tokens])
        return out
