"""``nmt export``: a checkpoint as a model folder for another inference engine.

- ``ctranslate2``: a CTranslate2 model (``model.bin``, ``config.json``, ``shared_vocabulary.json``), its spec
  built directly from our weights (``nmt.export.ct2``); weights optionally quantized.
- ``huggingface``: a ``MarianMTModel`` folder with a ``MarianTokenizer`` (``nmt.export.marian``), loadable
  with ``from_pretrained``.

Both folders also hold ``sentencepiece.model`` (the checkpoint's vocabulary) and ``nmt_export.json`` (what
was exported, from which checkpoint, and how to feed the model as ``nmt translate`` does). The folder is
built beside OUT_DIR and renamed into place at the end, so it is either complete or absent.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sentencepiece as spm

from nmt import __version__, atomic
from nmt.errors import NmtError
from nmt.tokens import SPECIAL_PIECES

if TYPE_CHECKING:
    from nmt.model.transformer import Transformer

TARGETS = ("ctranslate2", "huggingface")
QUANTIZATIONS = ("float32", "int8", "int8_float32", "int8_float16", "int8_bfloat16", "bfloat16", "float16")
SPM_FILE = "sentencepiece.model"
INFO_FILE = "nmt_export.json"


def pieces(model: "Transformer", meta: dict[str, Any], path: Path) -> list[str]:
    """The SentencePiece pieces of the checkpoint's vocabulary, piece i having our id i.

    Refuses a vocabulary whose size or special pieces do not match the model's.
    """
    proc = spm.SentencePieceProcessor(model_proto=meta["vocab"].numpy().tobytes())
    found = [proc.id_to_piece(i) for i in range(proc.get_piece_size())]
    if len(found) != model.cfg.vocab_size:
        raise NmtError(f"{path}: its SentencePiece model has {len(found)} pieces but the model {model.cfg.vocab_size} rows; cannot export")
    for i, piece in SPECIAL_PIECES.items():
        if found[i] != piece:
            raise NmtError(f"{path}: piece {i} is '{found[i]}', not '{piece}'; cannot export")
    return found


def check_out_dir(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise NmtError(f"{out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise NmtError(f"{out_dir} is not empty; choose another folder or give --force to replace it")


def export(path: Path, to: str, out_dir: Path, quantization: str | None = None, force: bool = False) -> dict[str, Any]:
    """Export checkpoint ``path`` to ``out_dir`` in format ``to``; returns what ``nmt_export.json`` says."""
    if to not in TARGETS:
        raise NmtError(f"--to must be one of {', '.join(TARGETS)}, not '{to}'")
    if quantization is not None and to != "ctranslate2":
        raise NmtError("--quantization applies to --to ctranslate2 only")
    if quantization is not None and quantization not in QUANTIZATIONS:
        raise NmtError(f"--quantization must be one of {', '.join(QUANTIZATIONS)}, not '{quantization}'")
    check_out_dir(out_dir, force)
    if to == "ctranslate2":
        from nmt.export import ct2 as writer
    else:
        from nmt.export import marian as writer  # type: ignore[no-redef]
    writer.require()  # a missing package fails before the checkpoint is read
    from nmt import checkpoint  # torch: not needed to run an exported model (nmt.export.ct2.CT2Translator)

    model, meta = checkpoint.load_model(path)
    writer.check(model.cfg, path)
    vocab = pieces(model, meta, path)
    manifest = meta.get("manifest", {})
    decode = (meta.get("config") or {}).get("decode", {})
    info = {
        "format": to,
        "quantization": (quantization or "float32") if to == "ctranslate2" else None,
        "checkpoint": str(path),
        "nmt_version": __version__,
        "source_language": manifest.get("src", "en"),
        "target_language": manifest.get("tgt"),
        "sentencepiece": SPM_FILE,
        "max_source_tokens": model.cfg.max_positions - 1,  # then EOS
        "max_positions": model.cfg.max_positions,
        "model_config": meta.get("model_config"),
        "decode": decode,
        "input": "normalise each line as nmt.data.text.normalise(line, source_language) does, then SentencePiece-encode it",
    }
    with atomic.atomic_dir(out_dir) as tmp:
        info.update(writer.write(model, vocab, meta, tmp, quantization))
        (tmp / SPM_FILE).write_bytes(meta["vocab"].numpy().tobytes())
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    return info
