"""nmt's two decoding paths in one process, alternating pass by pass: the C library (``nmt.kernels.native``:
the products and attention of a step) against torch's calls and oneDNN's products (``NMT_NATIVE=0``'s
path). On a machine whose speed drifts from one minute to the next, alternating in one process compares
the paths where separate runs cannot.

    python bench/paths.py runs/quickstart/averaged.pt --rounds 4
    python bench/paths.py runs/quickstart/averaged.base-random.pt --lines 100 --max-len 50 --rounds 3

Prints sentences/s of each pass and how many outputs the two paths share.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from nmt.decode.config import DecodeConfig
from nmt.decode.translate import TranslateConfig, Translator
from nmt.kernels import native

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "gettext-en-de" / "test.en"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--input", type=Path, default=SHARED)
    ap.add_argument("--lines", type=int, default=0, help="the first N lines (0: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=0, help="nmt translate's --workers (0: its default)")
    ap.add_argument("--rounds", type=int, default=4, help="timed passes of each path, after one untimed")
    ap.add_argument("--max-len", type=int, default=0, help="every output limited to this many tokens (0: the checkpoint's rule)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lines = args.input.read_text(encoding="utf-8").splitlines()
    lines = lines[: args.lines] if args.lines else lines
    limit = {"max_len_a": 0.0, "max_len_b": args.max_len} if args.max_len else {}
    decode = DecodeConfig(beam=4, penalty="fairseq", lenpen=0.6, stop="beam", **limit)
    config = TranslateConfig(decode=decode, device="cpu", dtype="fp32", workers=args.workers)
    lib = native.library()
    if lib is None:
        raise SystemExit("paths: the C library is not available here (no C compiler, or NMT_NATIVE=0)")
    paths = {"C": (Translator([args.checkpoint], config), lib)}
    native._loaded[:] = [None]  # what follows is arranged for torch's path
    paths["torch"] = (Translator([args.checkpoint], config), None)
    numbered = list(enumerate(lines, 1))
    rates: dict[str, list[float]] = {name: [] for name in paths}
    outputs: dict[str, list[str]] = {}
    for round_ in range(args.rounds + 1):
        for name, (translator, loaded) in paths.items():
            native._loaded[:] = [loaded]
            start = time.perf_counter()
            outputs[name] = translator.translate_buffer(numbered)
            if round_:
                rates[name].append(len(lines) / (time.perf_counter() - start))
    native._loaded[:] = [lib]
    same = sum(a == b for a, b in zip(outputs["C"], outputs["torch"]))
    print(f"{len(lines)} lines of {args.input}, {args.checkpoint}, {args.threads} threads, beam 4; sentences/s, pass by pass")
    for name, values in rates.items():
        print(f"{name:6} " + " / ".join(f"{v:.1f}" for v in values) + f"   median {sorted(values)[len(values) // 2]:.1f}")
    print(f"outputs the same on both paths: {same} of {len(lines)}")


if __name__ == "__main__":
    main()
