"""The joint SentencePiece vocabulary, with fixed special ids."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import sentencepiece as spm

from nmt import atomic
from nmt.errors import NmtError
from nmt.tokens import BOS, EOS, PAD, SPECIAL_PIECES, UNK


def train_spm(sample: Path, prefix: Path, vocab_size: int, model_type: str = "bpe", threads: int = 2,
              character_coverage: float | None = None) -> Path:
    """Train a joint model on the sample file; writes ``prefix.model`` and ``prefix.vocab`` atomically.

    Character coverage defaults to SentencePiece's advice: 1.0 for large vocabularies, 0.9995 for small ones.
    With byte fallback, any text round-trips. Normalisation is 'identity': the text is already NFC-normalised, and NFKC would make decode(encode(x)) ≠ x.
    """
    if character_coverage is None:
        character_coverage = 1.0 if vocab_size >= 16000 else 0.9995
    tmp = atomic.temporary(prefix)
    written = [Path(f"{tmp}.{ext}") for ext in ("model", "vocab")]
    try:
        spm.SentencePieceTrainer.train(
            input=str(sample),
            model_prefix=str(tmp),
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            normalization_rule_name="identity",
            # Characters outside the vocabulary become UTF-8 byte pieces instead of <unk>: lossless round trips.
            byte_fallback=True,
            pad_id=PAD, unk_id=UNK, bos_id=BOS, eos_id=EOS,
            pad_piece=SPECIAL_PIECES[PAD], unk_piece=SPECIAL_PIECES[UNK], bos_piece=SPECIAL_PIECES[BOS], eos_piece=SPECIAL_PIECES[EOS],
            num_threads=threads,
            minloglevel=2,
            # The sample is already bounded by the caller; this cap only guards against a huge file.
            input_sentence_size=10_000_000,
            shuffle_input_sentence=True,
            max_sentence_length=20000,
        )
        _check_written(written[0], Path(f"{prefix}.model"))
    except RuntimeError as err:
        for f in written:
            atomic.discard(f)
        message = str(err).splitlines()[-1] if str(err) else repr(err)
        if m := re.search(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)", str(err)):
            message = f"--vocab-size {m.group(1)} cannot be reached on this training text; at most {m.group(2)} is possible"
        raise NmtError(f"SentencePiece training failed: {message}") from None
    except BaseException:
        for f in written:
            atomic.discard(f)
        raise
    for ext in ("model", "vocab"):
        with atomic.os_faults(Path(f"{prefix}.{ext}")):
            atomic.commit(Path(f"{tmp}.{ext}"), Path(f"{prefix}.{ext}"))
    return Path(f"{prefix}.model")


def _check_written(model: Path, final: Path) -> None:
    """SentencePiece ignores a failed write (a full disk leaves an empty model file): load what it wrote."""
    try:
        spm.SentencePieceProcessor(model_file=str(model))
    except (OSError, RuntimeError):
        left = atomic.space_left(model.parent)
        if left is not None and left < atomic.NEARLY_FULL:
            raise atomic.fault(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), final) from None
        raise NmtError(f"{final}: SentencePiece wrote a model it cannot load back (write error?); run again") from None


def load_spm(path: Path) -> spm.SentencePieceProcessor:
    """Load a SentencePiece model, checking that its special ids are nmt's fixed ones."""
    if not path.exists():
        raise NmtError(f"{path}: SentencePiece model not found")
    proc = spm.SentencePieceProcessor()
    try:
        proc.load(str(path))
    except (OSError, RuntimeError) as err:
        raise NmtError(f"{path}: not a SentencePiece model ({err})") from None
    if (proc.pad_id(), proc.unk_id(), proc.bos_id(), proc.eos_id()) != (PAD, UNK, BOS, EOS):
        raise NmtError(f"{path}: special ids must be pad={PAD} unk={UNK} bos={BOS} eos={EOS}")
    return proc
