"""Do sinusoidal positions let a model translate sentences longer than any it was trained on (§3.5)?

Trains two models that differ only in their positions, sinusoidal (§3.5) and learned (Table 3, row E), on
the training pairs of a prepared corpus whose sides are at most ``--max-len`` subword tokens, then translates
held-out sentences in buckets of source length (shorter than L, L..1.5L, 1.5L..2L, longer than 2L) and
prints sacreBLEU per bucket for both. A learned position embedding has never seen a position past L
during training, a sinusoid is a formula: the question is whether the model can use it.

    python bench/extrapolation.py data-bin/gettext-en-de --max-len 16 --updates 1500

The training subset and both runs go to a temporary folder (``--work`` to keep them).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import sacrebleu
import torch

from nmt.decode.config import DecodeConfig
from nmt.train.config import RunConfig, TrainConfig
from nmt.data.binarize import TokenWriter
from nmt.data.dataset import ParallelDataset, read_manifest
from nmt.decode.translate import TranslateConfig, Translator
from nmt.train.launch import run


def short_subset(data: Path, dest: Path, max_len: int) -> int:
    """A prepared folder like ``data`` whose training split keeps the pairs with both sides ≤ ``max_len``."""
    manifest = read_manifest(data)
    dest.mkdir(parents=True, exist_ok=True)
    train = ParallelDataset(data, "train")
    keep = np.nonzero((train.src_lengths <= max_len) & (train.tgt_lengths <= max_len))[0]
    writers = [TokenWriter(dest / f"train.{lang}", manifest["dtype"]) for lang in (manifest["src"], manifest["tgt"])]
    for start in range(0, len(keep), 10_000):
        pairs = [train[int(i)] for i in keep[start : start + 10_000]]
        writers[0].add_many([np.asarray(s) for s, _ in pairs])
        writers[1].add_many([np.asarray(t) for _, t in pairs])
    for w in writers:
        w.commit()
    for name in [p.name for p in data.iterdir() if p.name.startswith("valid.")] + ["spm.model"]:
        shutil.copyfile(data / name, dest / name)
    splits = {"train": {"pairs": len(keep), "dropped": {}, "src_tokens": writers[0].tokens, "tgt_tokens": writers[1].tokens},
              "valid": manifest["splits"]["valid"]}
    (dest / "manifest.json").write_text(json.dumps({**manifest, "splits": splits}))
    return len(keep)


def buckets(src_lengths: list[int], max_len: int) -> dict[str, list[int]]:
    """Line indices by source length: in the training range, and three ranges beyond it."""
    edges = {f"< {max_len} (seen)": (0, max_len), f"{max_len}..{int(1.5 * max_len)}": (max_len, int(1.5 * max_len)),
             f"{int(1.5 * max_len)}..{2 * max_len}": (int(1.5 * max_len), 2 * max_len), f"> {2 * max_len}": (2 * max_len, 10**9)}
    return {name: [i for i, n in enumerate(src_lengths) if lo <= n < hi] for name, (lo, hi) in edges.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="A prepared corpus with train, valid and test splits (raw test text kept).")
    parser.add_argument("--max-len", type=int, default=16, help="L: longest side, in subword tokens, of the training pairs kept.")
    parser.add_argument("--updates", type=int, default=1500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, help="Keep the subset and the runs here.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    manifest = read_manifest(args.data)
    src, tgt = manifest["src"], manifest["tgt"]
    work = args.work or Path(tempfile.mkdtemp(prefix="nmt-extrapolation-"))
    kept = short_subset(args.data, work / "data", args.max_len)
    print(f"training pairs with both sides ≤ {args.max_len} tokens: {kept:,}")
    train = TrainConfig(max_tokens=2048, warmup=600, max_updates=args.updates, save_every=args.updates, validate_every=args.updates,
                        keep_last=1, log_every=100, save_minutes=1e9, precision="fp32")
    lines = (args.data / f"test.{src}").read_text(encoding="utf-8").splitlines()
    refs = (args.data / f"test.{tgt}").read_text(encoding="utf-8").splitlines()
    results: dict[str, dict[str, float]] = {}
    groups: dict[str, list[int]] = {}
    for positions in ("sinusoidal", "learned"):
        cfg = RunConfig(data=work / "data", save_dir=work / positions, arch="tiny", model={"positions": positions}, train=train, cpu=True)
        started = time.perf_counter()
        summary = run(cfg)
        print(f"{positions}: {summary['updates']} updates in {time.perf_counter() - started:.0f} s, dev ppl {summary.get('valid_ppl', float('nan')):.2f}")
        translator = Translator([work / positions / "checkpoint_last.pt"], TranslateConfig(decode=replace(DecodeConfig(), beam=4)))
        if not groups:
            groups = buckets([len(translator.encode(i, line)) for i, line in enumerate(lines, 1)], args.max_len)
        hyps = [h.rstrip("\n") for h in translator.translate_buffer(list(enumerate(lines, 1)))]
        results[positions] = {name: sacrebleu.corpus_bleu([hyps[i] for i in idx], [[refs[i] for i in idx]]).score
                              for name, idx in groups.items() if idx}
    print(f"\nsacreBLEU by source length (subword tokens); trained on pairs of at most L = {args.max_len}, {args.updates} updates; "
          f"{args.data} test split")
    print(f"{'source length':<16}{'sentences':>10}{'sinusoidal':>12}{'learned':>10}")
    for name, idx in groups.items():
        if idx:
            print(f"{name:<16}{len(idx):>10}{results['sinusoidal'][name]:>12.2f}{results['learned'][name]:>10.2f}")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
