"""Decoding speed at beam 4 on the test split of the shared gettext-en-de corpus: ours beside CTranslate2 and
Hugging Face's ``MarianMTModel.generate``, all carrying *the same trained weights*.

The checkpoint is exported once (``nmt.export``) to a temporary folder; then each system runs in its own
process, so that its peak memory (``VmHWM``, the process's peak resident set) is its own:

- nmt: ``Translator``, batched by tokens, for each ``--dtype`` the device supports (fp32 on a CPU), each
  stopping rule (``--stop beam``, nmt's default and CTranslate2's rule; ``--stop bound``, exact, the paper recipes')
  and each ``--workers`` (1: one batch at a time on all the threads; 0: ``nmt translate``'s default, one
  batch per thread for a small model, else one);
- CTranslate2 as its users run it (its documentation's ``translate_batch``): one call over all the lines,
  its own sorting and batching, for each ``--ct2`` compute type (default float32 and int8, quantized at
  load time from the same float32 export), each ``--ct2-setup`` (its default kernels, oneDNN instead of
  MKL, one thread, batches in parallel) and each ``--ct2-batch`` (``max_batch_size`` in examples, or ``tokens:N``); the
  reference of the × column is its fastest float32 row;
- CTranslate2 with nmt's exact semantics (``nmt.export.ct2.CT2Translator``: one call per source length,
  to reproduce the per-sentence output limit), an agreement check only: the share of identical lines;
- MarianMTModel.generate from the exported folder (``pip install transformers`` for that row).

The CTranslate2 processes do not import torch (``CT2Translator`` does not need it), so their memory is
CTranslate2's own plus Python, SentencePiece and numpy.

Every system searches with beam ``--beam``, α = 0.6 on |Y| counting EOS (``--penalty fairseq``, the
convention of CTranslate2 and Transformers) and the same threads (``--threads``; CTranslate2 with
``intra_threads`` = threads and ``inter_threads`` = 1, or the other way round in its ``inter`` set-up). Printed: sentences/s, output tokens/s (SentencePiece
tokens of the detokenised output, + 1 for EOS, counted the same way for everyone), peak RSS of the process
and its RSS once the model was loaded (for GPU rows also torch's peak allocated memory), and the share of
lines identical to the first nmt row. Translation time excludes loading.

    python bench/decode_bench.py runs/quickstart/averaged.pt --threads 2 [--lines 500]
    python bench/decode_bench.py CHECKPOINT --random-base --max-len 50 --threads 2   # a base-sized model, random weights
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "gettext-en-de" / "test.en"


def status_mib(field: str) -> float:
    """A memory figure of this process from /proc/self/status (Linux), MiB: VmRSS now, VmHWM its peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def rss_mib() -> float:
    return status_mib("VmRSS")


def run_nmt(args: argparse.Namespace, dtype: str, stop: str, workers: int, lines: list[str]) -> tuple[list[str], float, float]:
    from nmt.decode.config import DecodeConfig
    from nmt.decode.translate import TranslateConfig, Translator

    decode = DecodeConfig(beam=args.beam, penalty="fairseq", lenpen=args.lenpen, stop=stop, **fixed_limit(args))
    translator = Translator([args.checkpoint], TranslateConfig(decode=decode, device=args.device, dtype=dtype, workers=workers))
    loaded = rss_mib()
    start = time.perf_counter()
    out = [o.rstrip("\n") for o in translator.translate_buffer(list(enumerate(lines, 1)))]
    return out, time.perf_counter() - start, loaded


def run_ct2(args: argparse.Namespace, compute_type: str, setup: str, batch: str, lines: list[str]) -> tuple[list[str], float, float]:
    """CTranslate2 as its documentation shows it: SentencePiece pieces in, one ``translate_batch`` over every
    line, its own sorting by length and batching (``max_batch_size`` examples, or ``tokens:N``)."""
    import ctranslate2
    import sentencepiece as spm

    from nmt.data.text import normalise

    folder = args.export / "ctranslate2"
    info = json.loads((folder / "nmt_export.json").read_text())
    device = "cuda" if args.device.startswith("cuda") else "cpu"
    # "inter": its documented way of running batches in parallel, one intra-op thread each.
    intra, inter = {"1thread": (1, 1), "inter": (1, args.threads)}.get(setup, (args.threads, 1))
    translator = ctranslate2.Translator(str(folder), device=device, compute_type=compute_type,
                                        intra_threads=intra, inter_threads=inter)
    proc = spm.SentencePieceProcessor(model_file=str(folder / info["sentencepiece"]))
    batch_type, size = ("tokens", int(batch.split(":")[1])) if batch.startswith("tokens:") else ("examples", int(batch))
    loaded = rss_mib()
    start = time.perf_counter()
    pieces = [proc.encode(normalise(line, info["source_language"]), out_type=str)[: info["max_source_tokens"]] for line in lines]
    results = translator.translate_batch(pieces, beam_size=args.beam, length_penalty=args.lenpen, max_batch_size=size,
                                         batch_type=batch_type, max_decoding_length=args.max_len or info["max_positions"] - 1)
    out = [proc.decode(r.hypotheses[0]) if p else "" for p, r in zip(pieces, results)]
    return out, time.perf_counter() - start, loaded


def run_ct2_exact(args: argparse.Namespace, compute_type: str, lines: list[str]) -> tuple[list[str], float, float]:
    """CTranslate2 with nmt's semantics (one call per source length for the per-sentence output limit): the
    agreement check, not a speed reference (nobody runs CTranslate2 that way)."""
    from nmt.decode.config import DecodeConfig
    from nmt.export.ct2 import CT2Translator

    device = "cuda" if args.device.startswith("cuda") else "cpu"
    translator = CT2Translator(args.export / "ctranslate2", device=device, compute_type=compute_type, threads=args.threads)
    loaded = rss_mib()
    start = time.perf_counter()
    out = translator.translate(lines, DecodeConfig(beam=args.beam, penalty="fairseq", lenpen=args.lenpen, **fixed_limit(args)))
    return out, time.perf_counter() - start, loaded


def fixed_limit(args: argparse.Namespace) -> dict:
    """nmt's output limit a·|x| + b as ``--max-len`` (every sentence the same), or nothing to change."""
    return {"max_len_a": 0.0, "max_len_b": args.max_len} if args.max_len else {}


def run_hf(args: argparse.Namespace, lines: list[str]) -> tuple[list[str], float, float]:
    """Batches of 64 sentences sorted by length; the output limit is the longest source's a·|x| + b (HF's
    limit is per batch, ours per sentence); the stopping rule and EOS forced at the limit come from the
    exported generation config."""
    import sentencepiece as spm
    import torch
    from transformers import MarianMTModel

    from nmt.decode.config import DecodeConfig
    from nmt.data.text import normalise
    from nmt.tokens import BOS, EOS, PAD

    folder = args.export / "huggingface"
    info = json.loads((folder / "nmt_export.json").read_text())
    proc = spm.SentencePieceProcessor(model_file=str(folder / info["sentencepiece"]))
    device = torch.device(args.device)
    model = MarianMTModel.from_pretrained(folder).to(device).eval()
    decode = DecodeConfig(beam=args.beam, penalty="fairseq", lenpen=args.lenpen, **fixed_limit(args))
    ids = [proc.encode(normalise(line, info["source_language"]))[: info["max_source_tokens"]] for line in lines]
    order = sorted((i for i in range(len(ids)) if ids[i]), key=lambda i: len(ids[i]))
    out = [""] * len(lines)
    loaded = rss_mib()
    start = time.perf_counter()
    with torch.inference_mode():
        for b in range(0, len(order), 64):
            chunk = order[b : b + 64]
            width = max(len(ids[i]) for i in chunk) + 1
            src = torch.tensor([ids[i] + [EOS] + [PAD] * (width - len(ids[i]) - 1) for i in chunk], device=device)
            limit = decode.max_output_len(width - 1, info["max_positions"])
            found = model.generate(src, attention_mask=(src != PAD).long(), num_beams=args.beam,
                                   length_penalty=args.lenpen, max_length=limit + 1)  # + the decoder start
            for i, row in zip(chunk, found.tolist()):
                out[i] = proc.decode([t for t in row[1:] if t not in (PAD, BOS, EOS)])
    return out, time.perf_counter() - start, loaded


def random_base(path: Path) -> Path:
    """A base-sized model (the paper's base: 6+6 layers, d_model 512, FFN 2048, 8 heads) with random weights,
    the vocabulary and [decode] settings of the checkpoint at ``path``; written beside it."""
    import torch

    from nmt import checkpoint
    from nmt.model.config import model_config
    from nmt.model.transformer import Transformer

    ckpt = checkpoint.load(path)
    torch.manual_seed(0)
    model = Transformer(model_config("base", vocab_size=ckpt["model_config"]["vocab_size"]))
    out = path.with_name(path.stem + ".base-random.pt")
    meta = {k: ckpt[k] for k in ("config", "vocab", "manifest") if k in ckpt}
    checkpoint.save({**meta, "model": model.state_dict(), "model_config": asdict(model.cfg)}, out)
    return out


def worker(args: argparse.Namespace) -> None:
    lines = args.input.read_text(encoding="utf-8").splitlines()[: args.lines or None]
    system, variant, *rest = args.worker.split(":", 3)  # rest: the stopping rule and workers (nmt), or set-up and batching (ct2)
    gpu = None
    if system == "ct2":  # without torch in the process, so that its memory is CTranslate2's own
        out, seconds, loaded = run_ct2(args, variant, rest[0], rest[1], lines)
    elif system == "ct2exact":
        out, seconds, loaded = run_ct2_exact(args, variant, lines)
    else:
        import torch

        torch.set_num_threads(args.threads)
        out, seconds, loaded = run_nmt(args, variant, rest[0], int(rest[1]), lines) if system in ("nmt", "nmttorch") else run_hf(args, lines)
        if torch.cuda.is_initialized():
            gpu = torch.cuda.max_memory_allocated() / 2**20
    # VmHWM, not the parent's ru_maxrss of the child: Linux carries a process's peak RSS across exec, so a
    # child forked from a parent holding torch and a model would report the parent's memory.
    result = {"out": out, "seconds": seconds, "loaded_mib": loaded, "peak_mib": status_mib("VmHWM"), "gpu_mib": gpu}
    args.result.write_text(json.dumps(result))


def measure(args: argparse.Namespace, system: str) -> dict:
    """Run one system in a child process of its own; what it reports."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        result = Path(f.name)
    cmd = [sys.executable, __file__, str(args.checkpoint), "--worker", system, "--result", str(result), "--export", str(args.export),
           "--input", str(args.input), "--threads", str(args.threads), "--beam", str(args.beam), "--lenpen", str(args.lenpen),
           "--lines", str(args.lines), "--device", args.device, "--max-len", str(args.max_len)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    if ":nomkl" in system:
        env["CT2_USE_MKL"] = "0"  # CTranslate2's oneDNN/own kernels instead of Intel MKL
    if system.startswith("nmttorch:"):
        env["NMT_NATIVE"] = "0"  # the self-attention step through torch's calls (nmt.kernels.native)
    status = subprocess.run(cmd, env=env).returncode
    if status != 0:
        result.unlink(missing_ok=True)
        return {"failed": status}
    data = json.loads(result.read_text())
    result.unlink()
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--input", type=Path, default=SHARED)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--beam", type=int, default=4)
    parser.add_argument("--lenpen", type=float, default=0.6, help="α of |Y|^α, |Y| counting EOS.")
    parser.add_argument("--lines", type=int, default=0, help="Only the first N lines (0: all).")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for the GPU rows (nmt, CTranslate2 and HF on the GPU).")
    parser.add_argument("--dtype", nargs="+", default=None, help="nmt dtypes [default: fp32 on a CPU; fp32 bf16 fp16 on a GPU].")
    parser.add_argument("--ct2", nargs="+", default=["float32", "int8"], help="CTranslate2 compute types.")
    parser.add_argument("--ct2-setup", nargs="+", default=["default", "nomkl", "1thread", "inter"],
                        help="CTranslate2 set-ups, each a row: default (its own choice of kernels, --threads), nomkl "
                             "(CT2_USE_MKL=0: oneDNN instead of Intel MKL), 1thread (one intra-op thread), inter "
                             "(inter_threads = --threads batches in parallel, one intra-op thread each). The fastest "
                             "float32 row is the reference of the × column.")
    parser.add_argument("--ct2-batch", nargs="+", default=["32", "64", "tokens:2048"],
                        help="CTranslate2's batching, each a row: max_batch_size in examples (its documentation's examples use 32 "
                             "and 64), or tokens:N for batch_type='tokens'.")
    parser.add_argument("--random-base", action="store_true",
                        help="Write a base-sized model (6+6 layers, d_model 512) with random weights and CHECKPOINT's vocabulary to "
                             "CHECKPOINT.base-random.pt and measure that (speed depends on the shapes, not on the weights).")
    parser.add_argument("--max-len", type=int, default=0,
                        help="Every system's output limit, in tokens with EOS [default: nmt's a·|x| + b, CTranslate2's the "
                             "model's positions]. A model with random weights (--random-base) seldom ends a sentence, so "
                             "each runs to its limit: give them the same one (e.g. 50) for a comparison of speed.")
    parser.add_argument("--stop", nargs="+", default=["beam", "bound"],
                        help="nmt's stopping rules: beam (the default of nmt translate, CTranslate2's rule) and bound (exact, the paper recipes').")
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 0],
                        help="nmt's workers, each a row: batches searched at once on a CPU, each on threads ÷ workers "
                             "threads (0: nmt translate's default, one per thread for a small model, else one).")
    parser.add_argument("--torch-step", action="store_true",
                        help="Also each nmt row with NMT_NATIVE=0: decoding's self-attention through torch's calls instead of "
                             "the C step (nmt.kernels.native), as on a machine without a C compiler.")
    parser.add_argument("--repeat", type=int, default=2, help="Rounds over all systems; each keeps its fastest.")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--export", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    import importlib.util

    from nmt.export import export

    if args.random_base:
        args.checkpoint = random_base(args.checkpoint)
    dtypes = args.dtype or (["fp32"] if args.device == "cpu" else ["fp32", "bf16", "fp16"])
    have_ct2 = importlib.util.find_spec("ctranslate2") is not None
    have_hf = importlib.util.find_spec("transformers") is not None
    with tempfile.TemporaryDirectory() as tmp:
        args.export = Path(tmp)
        systems = [f"{kind}:{d}:{stop}:{w}" for kind in ("nmt", "nmttorch")[: 1 + args.torch_step] for d in dtypes for stop in args.stop for w in args.workers]
        if have_ct2:
            export(args.checkpoint, "ctranslate2", args.export / "ctranslate2")
            systems += [f"ct2:{c}:{setup}:{batch}" for c in args.ct2 for setup in args.ct2_setup for batch in args.ct2_batch]
            systems.append("ct2exact:float32:agreement")
        else:
            print("ctranslate2 is not installed: no CTranslate2 rows (pip install 'nmt[ctranslate2]')")
        if have_hf:
            export(args.checkpoint, "huggingface", args.export / "huggingface")
            systems.append("hf:fp32")
        else:
            print("transformers is not installed: no MarianMTModel row (pip install 'nmt[huggingface]')")
        # Rounds over all systems, each keeping its fastest round: the machines are shared, and a slow
        # moment should not land on one system only.
        results: dict[str, dict] = {}
        for _ in range(args.repeat):
            for system in systems:
                r = measure(args, system)
                if system not in results or ("failed" not in r and r["seconds"] < results[system].get("seconds", float("inf"))):
                    results[system] = r

    import sentencepiece as spm
    import torch

    from nmt import checkpoint

    proc = spm.SentencePieceProcessor(model_proto=checkpoint.load(args.checkpoint)["vocab"].numpy().tobytes())
    n = len(args.input.read_text(encoding="utf-8").splitlines()[: args.lines or None])
    reference = results[systems[0]].get("out")
    print(f"\n{n} sentences from {args.input}, beam {args.beam}, α {args.lenpen} (|Y|^α), {args.threads} threads, "
          f"device {args.device}, torch {torch.__version__}, best of {args.repeat} rounds")
    # CTranslate2's best float32 set-up on this machine: its default can be far from it (on a 2-core
    # Sapphire Rapids VM, Intel MKL with 2 threads ran 5-9× slower than with 1, or than oneDNN with 2).
    ct2_rows = [r["seconds"] for name, r in results.items() if name.startswith(("ct2:float32:", "ct2:float16:")) and "failed" not in r]
    ct2 = min(ct2_rows) if ct2_rows else None
    print(f"{'system':<52}{'sent/s':>9}{'× CT2 best':>11}{'out tok/s':>11}{'peak RSS MiB':>14}{'loaded MiB':>12}{'GPU MiB':>9}{'identical':>11}")
    for system in systems:
        r = results[system]
        if "failed" in r:
            print(f"{system:<52} failed (exit status {r['failed']})")
            continue
        tokens = sum(len(proc.encode(o)) + 1 for o in r["out"])
        same = sum(a == b for a, b in zip(r["out"], reference)) / max(n, 1) if reference else float("nan")
        gpu = f"{r['gpu_mib']:.0f}" if r.get("gpu_mib") else "-"
        kind, variant, *rest = system.split(":", 3)
        if kind in ("nmt", "nmttorch"):
            label = f"--stop {rest[0]} --workers {rest[1]}" + (", torch step" if kind == "nmttorch" else "")
        elif kind == "ct2":
            label = " ".join(x for x in (rest[0] if rest[0] != "default" else "", f"batch {rest[1]}") if x)
        else:
            label = "(exact semantics: agreement only)" if kind == "ct2exact" else ""
        name = f"{dict(nmt='nmt', nmttorch='nmt', ct2='CTranslate2', ct2exact='CTranslate2', hf='MarianMTModel')[kind]} {variant} {label}".rstrip()
        ratio = f"{ct2 / r['seconds']:.2f}" if ct2 else "-"
        print(f"{name:<52}{n / r['seconds']:>9.1f}{ratio:>11}{tokens / r['seconds']:>11.0f}{r['peak_mib']:>14.0f}{r['loaded_mib']:>12.0f}{gpu:>9}{100 * same:>10.1f}%")


if __name__ == "__main__":
    main()
