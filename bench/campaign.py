"""The figures only a GPU can give, in one prepared run (``bash bench/gpu.sh campaign OUT``): about 10
minutes on one H100/H200, data preparation included, everything written under OUT.

1. Training speed (``OUT/speed.md``): first ``bench/packing.py``'s check that one batch's packed and
   padded losses and gradients agree on the GPU (the variable-length kernel itself), then big and base on
   random ids of WMT14's shape (``bench/synthetic_data.py``), padded against packed, eager against
   ``--compile``, at 32k/64k/128k tokens: target tokens/s, MFU, peak memory, padding efficiency.
2. A model trained on real text (``OUT/trained.md``, ``OUT/learning-curve.svg``, ``OUT/base/train.jsonl``):
   base with P_drop 0.3 on the whole gettext-en-de train split for about 5 minutes, its last 5 numbered
   checkpoints averaged, the test split translated and scored (sacreBLEU, chrF).
3. Decoding on the GPU (``OUT/decode.md``): that model, beam 4, ``--stop beam``, fairseq's penalty, the
   2,000-line test split: ``nmt translate --device cuda`` in bf16 and fp16 against CTranslate2 on the GPU
   (float16, int8_float16) as its users call it (one ``translate_batch`` over all lines), sentences/s and
   identical lines.

``--smoke`` runs the same steps on a CPU with a tiny model, small data and seconds instead of minutes
(tests/system/test_campaign.py keeps it working). The corpus: ``--corpus DIR`` ({train,dev,test}.{en,de}),
by default ``.campaign/gettext-en-de`` in the checkout (what a GPU machine gets carried to it), else the
shared corpus beside the checkout.

    python bench/campaign.py OUT [--smoke] [--corpus DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout's nmt, also where it is not installed (the GPU machine)

from nmt.data.text import head_of  # noqa: E402

CORPORA = [ROOT / ".campaign" / "gettext-en-de", ROOT.parent / "shared" / "data" / "gettext-en-de"]


def run(cmd: list[str], log: Path, timeout: float, env: dict[str, str] | None = None) -> int:
    """Run ``cmd`` with its output in ``log``; its exit status (124 when it ran past ``timeout``)."""
    with open(log, "w") as out:
        try:
            return subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, cwd=ROOT,
                                  env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}).returncode
        except subprocess.TimeoutExpired:
            return 124


def nmt(*args: str) -> list[str]:
    return [sys.executable, "-m", "nmt", *args]


def records(run_dir: Path) -> list[dict]:
    path = run_dir / "train.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def say(text: str) -> None:
    print(f"== {text}", flush=True)


# ------------------------------------------------------------------------------------------ 1. training speed


def speed(out: Path, smoke: bool) -> None:
    syn = out / "wmt-shape"
    pairs, vocab = (3000, 1000) if smoke else (400_000, 37_000)
    if not (syn / "manifest.json").exists():
        run([sys.executable, "bench/synthetic_data.py", str(syn), "--pairs", str(pairs), "--vocab", str(vocab)], out / "synthetic.log", 300)
    device, precision = ("cpu", "fp32") if smoke else ("cuda", "bf16")
    checks = [("tiny", 2048)] if smoke else [("base", 32768), ("big", 32768)]
    lines = []
    for arch, tokens in checks:
        log = out / f"packing-check-{arch}.log"
        status = run([sys.executable, "bench/packing.py", str(syn), "--arch", arch, "--device", device, "--precision", precision,
                      "--max-tokens", str(tokens), "--batches", "3" if smoke else "10"], log, 300)
        found = [line for line in log.read_text().splitlines() if line.startswith("==")]
        lines += [f"- {arch} (exit {status}): " + "; ".join(f.removeprefix("== ") for f in found)]
        say(f"packing check {arch} (exit {status})")
    # (arch, max_tokens, packing, compile), most telling first: the budget may cut the tail.
    plan = [("tiny", 2048, False, False), ("tiny", 2048, True, False)] if smoke else [
        ("big", 65536, False, False), ("big", 65536, True, False), ("big", 65536, True, True),
        ("big", 32768, False, False), ("big", 32768, True, False), ("big", 131072, False, False), ("big", 131072, True, False),
        ("big", 131072, True, True), ("base", 65536, False, False), ("base", 65536, True, False), ("base", 65536, True, True),
    ]
    rows = []
    budget = float("inf") if smoke else time.time() + 300  # a GPU's minutes are counted; the smoke run must run every step
    for arch, tokens, packing, compiled in plan:
        if time.time() > budget:
            rows.append(f"| {arch} | {tokens:,} | {'packed' if packing else 'padded'} | {'yes' if compiled else 'no'} | not run: the time budget was spent | | | |")
            continue
        name = f"{arch}-{tokens}-{'packed' if packing else 'padded'}{'-compile' if compiled else ''}"
        updates = 6 if smoke else (80 if compiled else 40)
        args = nmt("train", str(syn), "--arch", arch, "--max-tokens", str(tokens), "--update-freq", "1", "--max-updates", str(updates),
                   "--log-every", str(updates // 2), "--validate-every", "1000000", "--save-every", "1000000", "--save-minutes", "1e9",
                   "--save-dir", str(out / name), "--packing" if packing else "--no-packing")
        args += (["--cpu", "--precision", "fp32"] if smoke else ["--precision", "bf16"]) + (["--compile"] if compiled else [])
        status = run(args, out / f"{name}.log", 120 if smoke else (240 if compiled else 120), env={"TORCH_LOGS": "recompiles"})
        last = [r for r in records(out / name) if "tgt_tok_s" in r]
        recompiles = (out / f"{name}.log").read_text().count("Recompiling function")
        if last:
            r = last[-1]
            mfu = f"{100 * r['mfu']:.1f} %" if "mfu" in r else "-"
            mem = f"{r['gpu_mem_gib']:.1f}" if "gpu_mem_gib" in r else "-"
            rows.append(f"| {arch} | {tokens:,} | {'packed' if packing else 'padded'} | {'yes' if compiled else 'no'} | {r['tgt_tok_s']:,.0f} "
                        f"| {mfu} | {mem} | {r['pad_efficiency']:.3f} | {recompiles} |")
        else:
            rows.append(f"| {arch} | {tokens:,} | {'packed' if packing else 'padded'} | {'yes' if compiled else 'no'} | failed (exit {status}, see {name}.log) | | | | |")
        say(f"train {name} (exit {status})")
    table = ["| model | --max-tokens | batches | --compile | target tok/s (last window) | MFU | peak GiB | padding efficiency | recompiles |",
             "|---|---|---|---|---|---|---|---|---|", *rows]
    (out / "speed.md").write_text("## Packed against padded: the check on the device\n\n" + "\n".join(lines)
                                  + "\n\n## Training throughput\n\n" + "\n".join(table) + "\n")


# ------------------------------------------------------------------------------------------ 2. a trained model


def learning_curve_svg(points: list[dict], path: Path) -> None:
    """Dev loss and BLEU against minutes of training, one SVG written by hand (no plotting library)."""
    w, h, left, right, top, bottom = 640, 320, 60, 60, 30, 40
    xs = [p["elapsed_s"] / 60 for p in points]
    series = [("valid_loss", "#1f77b4", "dev loss (label-smoothed)"), ("valid_bleu", "#d62728", "dev BLEU (sacreBLEU)")]
    span = max(xs) or 1.0
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="#fff"/>',
           f'<line x1="{left}" y1="{h - bottom}" x2="{w - right}" y2="{h - bottom}" stroke="#444"/>',
           f'<text x="{w / 2}" y="{h - 8}" text-anchor="middle">minutes of training</text>']
    for k in range(5):
        x = left + (w - left - right) * k / 4
        out.append(f'<text x="{x:.0f}" y="{h - bottom + 16}" text-anchor="middle">{span * k / 4:.1f}</text>')
    for i, (key, colour, label) in enumerate(series):
        ys = [p.get(key) for p in points]
        known = [(x, y) for x, y in zip(xs, ys) if y is not None]
        if not known:
            continue
        low, high = min(y for _, y in known), max(y for _, y in known)
        high = high if high > low else low + 1
        px = lambda x: left + (w - left - right) * x / span  # noqa: E731
        py = lambda y: top + (h - top - bottom) * (1 - (y - low) / (high - low))  # noqa: E731
        axis = left if i == 0 else w - right
        out.append(f'<line x1="{axis}" y1="{top}" x2="{axis}" y2="{h - bottom}" stroke="{colour}"/>')
        for y in (low, high):
            anchor, dx = ("end", -4) if i == 0 else ("start", 4)
            out.append(f'<text x="{axis + dx}" y="{py(y) + 4:.0f}" text-anchor="{anchor}" fill="{colour}">{y:.2f}</text>')
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="' + " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in known) + '"/>')
        out.append(f'<text x="{left + 10 + 220 * i}" y="{top - 10}" fill="{colour}">{label}</text>')
    out.append("</svg>")
    path.write_text("\n".join(out) + "\n")


def trained(out: Path, corpus: Path, smoke: bool) -> Path | None:
    data = out / "data"
    if smoke:
        corpus = head_of(corpus, out / "corpus", {"train": 3000, "dev": 100, "test": 100})
    status = run(nmt("prepare", "local", "--dest", str(data), "--src", "en", "--tgt", "de", "--train", str(corpus / "train"),
                     "--valid", str(corpus / "dev"), "--test", str(corpus / "test"), "--vocab-size", "1000" if smoke else "8000",
                     "--max-ratio", "3.0", "--workers", "2" if smoke else "8"), out / "prepare.log", 600)
    say(f"prepare (exit {status})")
    if status:
        return None
    run_dir = out / "base"
    # Base with P_drop 0.3: the corpus is 238k short messages, about 2M target pieces (a fiftieth of WMT14
    # EN-DE), which base at the paper's 0.1 overfits within minutes on one GPU; 0.3 is the paper's own
    # value for a model of more capacity than its data (big on EN-DE).
    args = nmt("train", str(data), "--save-dir", str(run_dir), "--max-updates", "1000000", "--keep-last", "10", "--save-minutes", "1e9")
    if smoke:
        args += ["--arch", "tiny", "--cpu", "--max-time", "40", "--max-tokens", "1024", "--warmup", "100", "--validate-every", "5",
                 "--save-every", "5", "--valid-bleu", "20", "--log-every", "5"]
    else:
        args += ["--arch", "base", "--dropout", "0.3", "--precision", "bf16", "--max-time", "300", "--max-tokens", "16384",
                 "--warmup", "1000", "--validate-every", "250", "--save-every", "250", "--valid-bleu", "500", "--log-every", "50"]
    status = run(args, out / "train-base.log", 120 if smoke else 420)
    say(f"train (exit {status})")
    valid = [r for r in records(run_dir) if "valid_loss" in r]
    if valid:
        learning_curve_svg(valid, out / "learning-curve.svg")
    averaged = run_dir / "averaged.pt"
    numbered = len(list(run_dir.glob("checkpoint_[0-9]*.pt")))
    status = run(nmt("average", str(run_dir), "--last", str(min(5, numbered)), "-o", str(averaged)), out / "average.log", 300)
    say(f"average (exit {status})")
    if status:
        return None
    device = ["--device", "cpu"] if smoke else ["--device", "cuda"]
    hyp = out / "test.hyp"
    status = run(nmt("translate", str(averaged), "--input", str(data / "test.en"), "--output", str(hyp), *device), out / "translate-test.log", 600)
    run(nmt("score", "--ref", str(data / "test.de"), "--hyp", str(hyp), "--metrics", "bleu,chrf"), out / "score.txt", 120)
    last = [r for r in records(run_dir) if "tgt_tok_s" in r]
    info = (f"{last[-1]['update']:,} updates in {last[-1]['elapsed_s'] / 60:.1f} min, {last[-1]['tgt_tok_s']:,.0f} target tok/s at the end"
            if last else "no training figures")
    rows = ["| update | minutes | dev loss | dev ppl | dev BLEU (the first 500 dev sentences, beam 4) |", "|---|---|---|---|---|"]
    rows += [f"| {r['update']} | {r['elapsed_s'] / 60:.1f} | {r['valid_loss']:.3f} | {r['valid_ppl']:.2f} | {r.get('valid_bleu', float('nan')):.1f} |" for r in valid]
    (out / "trained.md").write_text(f"## A model trained on real text\n\n{info}; test split translated with the average of the last 5 "
                                    f"numbered checkpoints (translate exit {status}):\n\n```\n{(out / 'score.txt').read_text()}```\n\n"
                                    + "\n".join(rows) + "\n")
    return averaged


# ------------------------------------------------------------------------------------------ 3. decoding


def decoding(out: Path, model: Path, smoke: bool) -> None:
    test = out / "data" / "test.en"
    args = [sys.executable, "bench/decode_bench.py", str(model), "--input", str(test), "--stop", "beam", "--repeat", "1"]
    if smoke:
        # --max-len: the smoke model is barely trained, and CTranslate2 run as its users run it stops only at the
        # model's longest output (1,023 positions): 100 lines took 77 s a row, past the step's time limit.
        args += ["--device", "cpu", "--dtype", "fp32", "--ct2", "float32", "--ct2-setup", "default", "--lines", "100", "--max-len", "64"]
    else:
        args += ["--device", "cuda", "--dtype", "bf16", "fp16", "--ct2", "float16", "int8_float16", "--ct2-setup", "default", "--lines", "2000"]
    status = run(args, out / "decode.log", 300 if smoke else 240)
    table = [line for line in (out / "decode.log").read_text().splitlines() if "|" in line or line.startswith(("system", "nmt", "CTranslate2"))]
    (out / "decode.md").write_text(f"## Decoding (exit {status})\n\n```\n" + "\n".join(table) + "\n```\n")
    say(f"decode bench (exit {status})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--smoke", action="store_true", help="The same steps on a CPU, tiny and short.")
    parser.add_argument("--corpus", type=Path, help="{train,dev,test}.{en,de} of real text [default: see above].")
    parser.add_argument("--only", choices=["speed", "trained"], help="Only question 1 (training speed), or only 2 and 3.")
    args = parser.parse_args()
    corpus = args.corpus or next((c for c in CORPORA if (c / "train.en").exists()), None)
    if corpus is None and args.only != "speed":
        raise SystemExit(f"no corpus: give --corpus, or copy the shared gettext-en-de into {CORPORA[0]}")
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    if not args.smoke:
        subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"], check=False)
    if args.only in (None, "speed"):
        speed(args.out, args.smoke)
    if args.only in (None, "trained"):
        model = trained(args.out, corpus, args.smoke)
        if model is not None:
            decoding(args.out, model, args.smoke)
    summary = "\n".join((args.out / name).read_text() for name in ("speed.md", "trained.md", "decode.md") if (args.out / name).exists())
    (args.out / "summary.md").write_text(summary)
    if (args.out / "base" / "train.jsonl").exists():
        shutil.copy(args.out / "base" / "train.jsonl", args.out / "train.jsonl")
    say(f"campaign done in {(time.time() - started) / 60:.1f} min; tables in {args.out}/summary.md")


if __name__ == "__main__":
    main()
