"""Cost of ``nmt prepare`` as the corpus grows: pairs per second and peak memory (whole process tree).

Writes synthetic parallel corpora (words drawn from the shared corpus' vocabulary, Zipf-like) of each size,
runs ``nmt prepare local`` on them and samples the resident memory of the process and its workers.

    python bench/prepare_bench.py --sizes 100000 1000000 --workers 2
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def tree_rss(root: int) -> int:
    """Resident bytes of ``root`` and all its descendants, from /proc."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            parents[int(entry)] = int(fields[1])
            rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack += [c for c, p in parents.items() if p == pid]
    return total


def synthetic(path: Path, pairs: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(20000)]
    weights = 1.0 / np.arange(1, len(words) + 1)
    weights /= weights.sum()
    with open(f"{path}.en", "w") as en, open(f"{path}.de", "w") as de:
        for start in range(0, pairs, 10000):
            n = min(10000, pairs - start)
            lengths = rng.integers(3, 40, n)
            ids = rng.choice(len(words), size=int(lengths.sum()) * 2, p=weights)
            pos = 0
            for length in lengths:
                en.write(" ".join(words[i] for i in ids[pos : pos + length]) + "\n")
                pos += length
                de.write(" ".join(words[i].upper() for i in ids[pos : pos + length]) + "\n")
                pos += length


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--spm-sample", type=int, default=2_000_000,
                        help="Sentences sampled for SentencePiece (nmt's default 2M): memory grows with min(corpus, sample).")
    args = parser.parse_args()
    print(f"spm sample {args.spm_sample:,} sentences, {args.workers} workers")
    print(f"{'pairs':>10} {'seconds':>8} {'pairs/s':>9} {'peak MiB':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            corpus = Path(tmp) / f"c{size}"
            synthetic(corpus, size)
            cmd = [sys.executable, "-m", "nmt", "prepare", "local", "--train", str(corpus), "--src", "en", "--tgt", "de",
                   "--vocab-size", str(args.vocab_size), "--workers", str(args.workers), "--spm-sample", str(args.spm_sample), "--dest", str(Path(tmp) / f"d{size}")]
            start = time.perf_counter()
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            peak = 0
            while proc.poll() is None:
                peak = max(peak, tree_rss(proc.pid))
                time.sleep(0.2)
            seconds = time.perf_counter() - start
            if proc.returncode:
                sys.exit(proc.stderr.read().decode())
            print(f"{size:>10,} {seconds:>8.1f} {size / seconds:>9,.0f} {peak / 2**20:>9,.0f}")


if __name__ == "__main__":
    main()
