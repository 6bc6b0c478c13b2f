"""A prepared dataset of random token ids in the shape of WMT 2014, for measuring training speed where the
real corpus cannot be downloaded (a GPU machine without internet, say).

Throughput and memory depend on the vocabulary (output layer and loss), the sentence lengths (padding,
attention) and the batch size, not on which ids appear, so random ids give the paper's cost per token:

- a joint vocabulary of ``--vocab`` pieces (paper: about 37,000 for EN-DE, 32,000 for EN-FR), as a real
  SentencePiece *word* model over made-up words, so that the folder is a complete ``nmt prepare`` output
  (``spm.model`` included) and anything decoded from it is readable;
- sentence lengths in pieces drawn from a log-normal with WMT14 EN-DE's shape after BPE (median about 25
  pieces, mean about 30, a long tail cut at 250 like ``nmt prepare``), the target about 1.1 times the source.

    python bench/synthetic_data.py /tmp/wmt-shape --pairs 500000 --vocab 37000
    nmt train /tmp/wmt-shape --arch big --precision bf16 --max-updates 300 --validate-every 100000
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from nmt import atomic
from nmt.data.binarize import TokenWriter, sha256, token_dtype
from nmt.data.spm import load_spm, train_spm
from nmt.data.verify import checksum64
from nmt.tokens import BOS, EOS, PAD, UNK


def lengths(rng: np.random.Generator, n: int, median: float, sigma: float = 0.6, cap: int = 250) -> np.ndarray:
    """Piece counts with a log-normal shape (median ``median``), at least 1, at most ``cap``."""
    return np.clip(np.rint(rng.lognormal(np.log(median), sigma, n)), 1, cap).astype(np.int64)


def vocabulary(dest: Path, size: int) -> int:
    """A SentencePiece word model of ``size`` pieces over made-up words; returns its real size."""
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "words.txt"
        # Words of distinct frequencies keep the vocabulary's order stable; each line a few words.
        words = [f"w{i:x}" for i in range(size)]
        with open(text, "w", encoding="utf-8") as f:
            for i, w in enumerate(words):
                f.write((" ".join([w] * (1 + (size - i) // 2000))) + "\n")
        train_spm(text, dest / "spm", size, model_type="word", threads=4)
    return load_spm(dest / "spm.model").get_piece_size()


def write_split(dest: Path, split: str, pairs: int, vocab: int, dtype: str, rng: np.random.Generator) -> dict:
    src_len = lengths(rng, pairs, median=25.0)
    tgt_len = np.clip(np.rint(src_len * rng.normal(1.1, 0.15, pairs)), 1, 250).astype(np.int64)
    first = EOS + 1  # ids up to EOS are the specials (pad, unk, bos, eos)
    for lang, lens in (("en", src_len), ("de", tgt_len)):
        writer = TokenWriter(dest / f"{split}.{lang}", dtype)
        for start in range(0, pairs, 50_000):
            chunk = lens[start : start + 50_000]
            ids = rng.integers(first, vocab, int(chunk.sum()))
            writer.add_many(np.split(ids, np.cumsum(chunk)[:-1]))
        writer.commit()
    # Like nmt prepare's counts: EOS is not stored, so tokens are the pieces only.
    return {"pairs": pairs, "dropped": {}, "src_tokens": int(src_len.sum()), "tgt_tokens": int(tgt_len.sum())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dest", type=Path)
    ap.add_argument("--pairs", type=int, default=500_000, help="training pairs (default 500,000)")
    ap.add_argument("--valid-pairs", type=int, default=3000)
    ap.add_argument("--vocab", type=int, default=37_000, help="joint vocabulary size (paper EN-DE: about 37,000)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    args.dest.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    size = vocabulary(args.dest, args.vocab)
    dtype = token_dtype(size)
    splits = {"train": write_split(args.dest, "train", args.pairs, size, dtype, rng),
              "valid": write_split(args.dest, "valid", args.valid_pairs, size, dtype, rng)}
    files = sorted(p for p in args.dest.iterdir() if p.suffix in (".bin", ".idx", ".model", ".vocab"))
    manifest = {
        "format": 1, "key": f"synthetic-{args.pairs}-{size}-{args.seed}", "corpus": "synthetic (random ids, WMT14 shape)",
        "src": "en", "tgt": "de", "dtype": dtype,
        "vocab": {"model": "spm.model", "size": size, "type": "word", "pad": PAD, "unk": UNK, "bos": BOS, "eos": EOS},
        "normalisation": "none (random ids)",
        "limits": {"max_len": 250, "max_ratio": None, "ratio_min_words": None, "dedup": False},
        "splits": splits, "tests": [],
        "files": {f.name: {"bytes": f.stat().st_size, "sha256": sha256(f), "checksum64": checksum64(f)} for f in files},
    }
    atomic.write_json(args.dest / "manifest.json", manifest)
    tokens = splits["train"]["tgt_tokens"]
    print(f"{args.dest}: {args.pairs:,} training pairs, {tokens:,} target pieces ({tokens / args.pairs:.1f} a sentence), vocabulary {size:,}")


if __name__ == "__main__":
    main()
