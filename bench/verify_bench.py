"""What verifying data and checkpoints costs: opening a prepared split (sizes, checksum64 and every id
against the vocabulary, nmt.data.verify) against the bare memory map, the SHA-256 the manifest also records,
and a checkpoint's CRC-32 check (nmt.checkpoint.verify); extrapolated to WMT14 EN-FR's training shards.

    python bench/verify_bench.py --pairs 4500000 --dir /tmp/verify-bench

The shards hold random ids with WMT-like sentence lengths (what is checked does not depend on which ids);
figures are from the page cache (files just written, runs after the first): a cold first open also waits
for the disk, which reads the same bytes that training reads in its first epoch anyway.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from nmt import checkpoint
from nmt.data.binarize import TokenWriter, sha256
from nmt.data.dataset import IndexedTokens, ParallelDataset
from nmt.data.verify import checksum64

WMT14_EN_FR_TOKENS = 1.2e9  # per side, after BPE; 36M pairs
VOCAB = 32_000


def write(dest: Path, pairs: int, rng: np.random.Generator) -> dict:
    """A prepared folder's train split of ``pairs`` random pairs, with its manifest."""
    dest.mkdir(parents=True, exist_ok=True)
    for lang in ("en", "fr"):
        writer = TokenWriter(dest / f"train.{lang}", "uint16")
        for start in range(0, pairs, 200_000):
            n = min(200_000, pairs - start)
            lens = np.clip(np.rint(rng.lognormal(np.log(28.0), 0.6, n)), 1, 250).astype(np.int64)
            ids = rng.integers(4, VOCAB, int(lens.sum()), dtype=np.uint16)
            writer.add_many(np.split(ids, np.cumsum(lens)[:-1]))
        writer.commit()
    files = sorted(dest.glob("train.*"))
    manifest = {"src": "en", "tgt": "fr", "dtype": "uint16", "vocab": {"model": "spm.model", "size": VOCAB},
                "splits": {"train": {"pairs": pairs}}, "command": "synthetic",
                "files": {f.name: {"bytes": f.stat().st_size, "sha256": sha256(f), "checksum64": checksum64(f)} for f in files}}
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return manifest


def best_of(fn, runs: int = 3) -> float:
    """The fastest of ``runs`` timings of ``fn()``, in seconds."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=4_500_000, help="training pairs (default 4.5M, an eighth of WMT14 EN-FR)")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/verify-bench"))
    ap.add_argument("--checkpoint-mb", type=int, default=1024, help="size of the checkpoint whose CRCs are checked")
    args = ap.parse_args()
    rng = np.random.default_rng(1)
    manifest = write(args.dir, args.pairs, rng)
    files = [args.dir / name for name in manifest["files"]]
    total = sum(f.stat().st_size for f in files)
    tokens = (args.dir / "train.en.bin").stat().st_size // 2
    scale = WMT14_EN_FR_TOKENS / tokens

    bare = best_of(lambda: (IndexedTokens(args.dir / "train.en", "uint16"), IndexedTokens(args.dir / "train.fr", "uint16")))
    checked = best_of(lambda: ParallelDataset(args.dir, "train"))
    sha = best_of(lambda: [sha256(f) for f in files], runs=1)
    print(f"{args.pairs:,} pairs, {tokens:,} tokens a side, {total / 1e9:.2f} GB of shards; WMT14 EN-FR is {scale:.1f}x that")
    print(f"open, bare memory maps:            {bare:7.3f} s  -> {bare * scale:6.2f} s at WMT14 EN-FR")
    print(f"open, verified (checksum64 + ids): {checked:7.3f} s  -> {checked * scale:6.2f} s ({total / checked / 1e9:.1f} GB/s)")
    print(f"SHA-256 of the same files:         {sha:7.3f} s  -> {sha * scale:6.2f} s ({total / sha / 1e9:.1f} GB/s)")

    path = args.dir / "checkpoint.pt"
    elements = args.checkpoint_mb * 2**20 // 4
    checkpoint.save({"model": {f"w{i}": torch.randn(elements // 16) for i in range(16)}}, path)
    crc = best_of(lambda: checkpoint.verify(path))
    size = path.stat().st_size
    print(f"checkpoint CRC-32 check, {size / 1e9:.2f} GB: {crc:.3f} s ({size / crc / 1e9:.1f} GB/s)")
    shutil.rmtree(args.dir)


if __name__ == "__main__":
    main()
