"""``nmt prepare``: raw parallel text → cleaned text → joint SentencePiece → memory-mapped shards.

The stages live beside this file: ``plan`` (what to read, with which limits), ``clean``, the vocabulary
(here), ``encode``. Every stage streams, stamps its output with a fingerprint of its inputs so a re-run
skips finished work, and writes under a temporary name renamed at the end. This module runs the stages
and writes ``manifest.json``, the description of the prepared folder that training reads.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from rich.table import Table

from nmt import __version__, atomic
from nmt.console import console
from nmt.data.binarize import sha256
from nmt.data.clean import clean
from nmt.data.encode import encode
from nmt.data.plan import Plan, PrepareConfig, SplitStats, file_id, fingerprint, is_test, plan
from nmt.data.spm import load_spm, train_spm
from nmt.data.verify import checksum64
from nmt.errors import NmtError
from nmt.tokens import BOS, EOS, PAD, UNK

__all__ = ["PrepareConfig", "prepare", "summary_table"]


def _vocabulary(cfg: PrepareConfig, p: Plan, work: Path, sample: Path) -> Path:
    """The joint SentencePiece model: the one given with --spm-model, or one trained on the sample."""
    model, vocab = cfg.dest / "spm.model", cfg.dest / "spm.vocab"
    if cfg.spm_model:
        proc = load_spm(cfg.spm_model)
        if cfg.spm_model.resolve() != model.resolve():
            with atomic.atomic_path(model) as tmp:
                shutil.copyfile(cfg.spm_model, tmp)
            given_vocab = cfg.spm_model.with_suffix(".vocab")
            if given_vocab.exists():
                with atomic.atomic_path(vocab) as tmp:
                    shutil.copyfile(given_vocab, tmp)
            else:
                atomic.write_text(vocab, "".join(f"{proc.id_to_piece(i)}\t0\n" for i in range(proc.get_piece_size())))
        return model
    key = fingerprint({"sample": file_id(sample), "vocab": p.vocab_size, "type": cfg.model_type, "coverage": cfg.character_coverage, "given": None})
    stamp = work / "spm.json"
    if cfg.force or not stamp.exists() or stamp.read_text() != key or not model.exists():
        with console.status(f"training SentencePiece ({cfg.model_type}, {p.vocab_size} pieces)"):
            train_spm(sample, cfg.dest / "spm", p.vocab_size, cfg.model_type, threads=max(1, cfg.workers),
                      character_coverage=cfg.character_coverage)
        atomic.write_text(stamp, key)
    return model


def _outputs(dest: Path, stats: dict[str, SplitStats], src: str, tgt: str) -> list[Path]:
    files = [dest / "spm.model", dest / "spm.vocab"]
    for split in stats:
        for lang in (src, tgt):
            files += [dest / f"{split}.{lang}.bin", dest / f"{split}.{lang}.idx"]
            if is_test(split):
                files.append(dest / f"{split}.{lang}")
    return files


def _up_to_date(dest: Path, key: str) -> dict | None:
    path = dest / "manifest.json"
    if not path.exists():
        return None
    manifest = json.loads(path.read_text())
    if manifest.get("key") != key:
        return None
    for name, info in manifest["files"].items():
        f = dest / name
        if not f.exists() or f.stat().st_size != info["bytes"]:
            return None
        if "checksum64" in info and checksum64(f) != info["checksum64"]:  # damaged since: redo it
            return None
    return manifest


def prepare(cfg: PrepareConfig) -> dict:
    """Run every step of ``nmt prepare`` and return the manifest it wrote (or found up to date)."""
    started = time.time()
    atomic.make_dir(cfg.dest)
    work = atomic.make_dir(cfg.dest / "work")
    p = plan(cfg)
    if p.vocab_size < 8:
        raise NmtError(f"--vocab-size {p.vocab_size} is too small (at least 8: four special ids and some pieces)")
    stats, sample = clean(cfg, p, work, cfg.workers)
    spm_path = _vocabulary(cfg, p, work, sample)
    real_vocab = load_spm(spm_path).get_piece_size()

    key = fingerprint({"clean": json.loads((work / "clean.json").read_text())["key"], "spm": sha256(spm_path),
                       "max_len": p.max_len, "max_ratio": p.max_ratio, "ratio_min_words": p.ratio_min_words, "v": __version__})
    if not cfg.force and (manifest := _up_to_date(cfg.dest, key)):
        manifest["skipped"] = True
        return manifest
    dtype = encode(cfg, p, work, stats, spm_path, real_vocab)
    manifest = {
        "format": 1,
        "key": key,
        "corpus": cfg.corpus,
        "src": p.src,
        "tgt": p.tgt,
        "dtype": dtype,
        "vocab": {"model": "spm.model", "size": real_vocab, "type": cfg.model_type, "pad": PAD, "unk": UNK, "bos": BOS, "eos": EOS},
        "normalisation": "NFC + Moses punctuation normalisation + control characters removed",
        "limits": {"max_len": p.max_len, "max_ratio": p.max_ratio, "ratio_min_words": p.ratio_min_words, "dedup": p.dedup},
        "splits": {s: asdict(v) for s, v in stats.items()},
        "tests": [s for s in stats if is_test(s)],
        # SHA-256 for identity; checksum64 for the cheap check of every opening (nmt.data.verify).
        "files": {f.name: {"bytes": f.stat().st_size, "sha256": sha256(f), "checksum64": checksum64(f)}
                  for f in _outputs(cfg.dest, stats, p.src, p.tgt) if f.exists()},
        "command": cfg.command,
        "version": __version__,
        "seconds": round(time.time() - started, 1),
        **p.extra,
    }
    atomic.write_json(cfg.dest / "manifest.json", manifest)
    return manifest


def summary_table(manifest: dict) -> Table:
    """Pairs kept and dropped per reason, tokens per side, vocabulary and time, one row per split."""
    src, tgt = manifest["src"], manifest["tgt"]
    reasons = sorted({r for s in manifest["splits"].values() for r in s["dropped"]})
    table = Table(title=f"{manifest['corpus']} → {manifest.get('dest', '')}".rstrip(" →"))
    for col in ["split", "pairs", *[f"dropped: {r}" for r in reasons], f"{src} tokens", f"{tgt} tokens"]:
        table.add_column(col, justify="left" if col == "split" else "right")
    for name, s in manifest["splits"].items():
        table.add_row(name, f"{s['pairs']:,}", *[f"{s['dropped'].get(r, 0):,}" for r in reasons], f"{s['src_tokens']:,}", f"{s['tgt_tokens']:,}")
    v = manifest["vocab"]
    table.caption = f"vocabulary {v['size']:,} ({v['type']}, joint), ids {manifest['dtype']}; {manifest['seconds']} s" + (" (up to date, nothing redone)" if manifest.get("skipped") else "")
    return table
