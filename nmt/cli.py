"""The ``nmt`` command line: each subcommand parses its options, builds a config and calls one library function."""

from __future__ import annotations

import errno
import os
import shlex
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from nmt import __version__
from nmt.console import console
from nmt.errors import NmtError
from nmt.serve.config import Limits, ServeConfig  # their defaults are nmt serve's (a light module: no torch, no FastAPI)

app = typer.Typer(
    help="Neural machine translation: the Transformer of Vaswani et al. (2017), from raw text to BLEU.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts contain [default: ...] literally
)


def _version(value: bool) -> None:
    if value:
        print(f"nmt {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = None,
) -> None:
    """Neural machine translation toolkit."""


def _command_line() -> str:
    return shlex.join(["nmt", *sys.argv[1:]])


# Search options shared by the commands that decode (translate, attend), defined once. Unset (None) means the
# checkpoint's [decode] settings, else the defaults of nmt.decode.config.DecodeConfig.
Beam = Annotated[Optional[int], typer.Option(help="Beam size (paper: 4) [default: the checkpoint's [decode] settings, else the paper's].")]
Lenpen = Annotated[Optional[float], typer.Option(help="Length penalty α. With --penalty gnmt the score is divided by ((5+|Y|)/6)^α, the paper's α=0.6; with --penalty fairseq by |Y|^α, which is what fairseq's --lenpen means (fairseq's 0.6 is not the paper's 0.6).")]
Penalty = Annotated[Optional[str], typer.Option(help="gnmt (paper, tensor2tensor) or fairseq.")]
MaxLenA = Annotated[Optional[float], typer.Option(help="Output length limit a·source length + b (paper: source + 50).")]
MaxLenB = Annotated[Optional[int], typer.Option(help="See --max-len-a.")]
Stop = Annotated[Optional[str], typer.Option(help="beam: stop once --beam hypotheses have finished, as fairseq, Marian and CTranslate2 do. bound: tensor2tensor's search, as the paper's Table 2 was decoded: hypotheses finish from all 2·beam candidates, and the search ends when no live hypothesis can beat the finished ones (1.7-3.4x slower, a few lines change) [default: the checkpoint's [decode] settings, else beam].")]
Device = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]
# Options of the commands that translate text (translate, serve).
MaxTokens = Annotated[Optional[int], typer.Option(help="Source tokens per batch.")]
Dtype = Annotated[str, typer.Option(help="fp32, bf16 or fp16. Half precision is for GPUs: on a CPU it is slower than fp32 (a warning says so).")]
Threads = Annotated[Optional[int], typer.Option(help="CPU threads for torch.")]


@app.command()
def prepare(
    corpus: Annotated[str, typer.Argument(help="wmt14-en-de, wmt14-en-fr, gettext-en-de, gettext-en-fr or local.")],
    dest: Annotated[Optional[Path], typer.Option(help="Output folder [default: data-bin/CORPUS].")] = None,
    train: Annotated[Optional[str], typer.Option(help="local: training files prefix (PREFIX.SRC, PREFIX.TGT).")] = None,
    valid: Annotated[Optional[str], typer.Option(help="local: validation files prefix.")] = None,
    test: Annotated[Optional[str], typer.Option(help="local: test files prefix (also kept as raw text for scoring).")] = None,
    src: Annotated[Optional[str], typer.Option(help="local: source language suffix, e.g. en.")] = None,
    tgt: Annotated[Optional[str], typer.Option(help="local: target language suffix, e.g. de.")] = None,
    vocab_size: Annotated[Optional[int], typer.Option(help="Joint SentencePiece vocabulary size [default: the corpus entry's].")] = None,
    max_len: Annotated[Optional[int], typer.Option(help="Drop training pairs with more subword tokens on either side [default: 250].")] = None,
    max_ratio: Annotated[Optional[float], typer.Option(help="Drop training pairs whose word-count ratio exceeds this, as Moses' clean-corpus-n [default: 1.5; gettext 3.0].")] = None,
    ratio_min_words: Annotated[int, typer.Option(help="Never drop a pair for its ratio when its longer side has at most this many words.")] = 5,
    dedup: Annotated[Optional[bool], typer.Option("--dedup/--no-dedup", help="Drop repeated training pairs.")] = None,
    spm_model: Annotated[Optional[Path], typer.Option(help="Reuse this SentencePiece model instead of training one.")] = None,
    character_coverage: Annotated[Optional[float], typer.Option(help="SentencePiece character coverage [default: 1.0 for ≥16k pieces, else 0.9995].")] = None,
    spm_sample: Annotated[int, typer.Option(help="Sentences sampled to train SentencePiece; peak memory grows with this cap, not with the corpus (~0.9 GiB at 2M).")] = 2_000_000,
    workers: Annotated[int, typer.Option(help="Worker processes for cleaning and encoding.")] = 2,
    mirror: Annotated[Optional[str], typer.Option(help="Base URL replacing the download hosts (a local mirror).")] = None,
    raw_dir: Annotated[Optional[Path], typer.Option(help="Folder of already downloaded archives (and where downloads go).")] = None,
    retries: Annotated[int, typer.Option(help="Download retries, with exponential backoff.")] = 5,
    force: Annotated[bool, typer.Option("--force", help="Redo every step even if its outputs are up to date.")] = False,
) -> None:
    """Download, clean, train a joint SentencePiece vocabulary and binarise a corpus for training."""
    from nmt.data.prepare import PrepareConfig, prepare as run, summary_table

    cfg = PrepareConfig(
        corpus=corpus, dest=dest or Path("data-bin") / corpus, src=src, tgt=tgt, train=train, valid=valid, test=test,
        vocab_size=vocab_size, max_len=max_len, max_ratio=max_ratio, ratio_min_words=ratio_min_words, dedup=dedup, spm_model=spm_model,
        spm_sample=spm_sample, character_coverage=character_coverage, workers=workers, mirror=mirror, raw_dir=raw_dir, retries=retries, force=force,
        command=_command_line(),
    )
    manifest = run(cfg)
    manifest["dest"] = str(cfg.dest)
    console.print(summary_table(manifest))


def run() -> None:
    """Entry point that turns NmtError, and an OS fault no command named (standard output on a full disk),
    into one line on stderr and exit status 2."""
    try:
        app(prog_name="nmt")
    except NmtError as err:
        print(f"nmt: error: {err}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:
        from nmt import atomic

        if err.errno not in atomic.LOCAL_FAULTS | {errno.EIO}:
            raise
        if err.filename is None:  # nmt names every file it writes: this was standard output
            try:  # what is left in its buffer must not fail again, as a traceback, when Python exits
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            except (OSError, ValueError):
                pass
        print(f"nmt: error: {atomic.fault(err, Path(err.filename or 'standard output'))}", file=sys.stderr)
        sys.exit(2)


@app.command()
def train(
    data: Annotated[Optional[Path], typer.Argument(help="A folder written by 'nmt prepare' [default: the recipe's, else the one corpus in data-bin/].")] = None,
    recipe: Annotated[Optional[Path], typer.Option(help="TOML recipe; the options below override its values.")] = None,
    arch: Annotated[Optional[str], typer.Option(help="base, big or tiny.")] = None,
    save_dir: Annotated[Optional[Path], typer.Option(help="Run folder for checkpoints and logs [default: runs/ARCH].")] = None,
    max_tokens: Annotated[Optional[int], typer.Option(help="Padded token slots per batch and device (fairseq's convention) [default: 4096].")] = None,
    pad_multiple: Annotated[Optional[int], typer.Option(help="Pad batches to a multiple of this [default: 8 on GPUs, for tensor cores; 1 on CPUs].")] = None,
    update_freq: Annotated[Optional[int], typer.Option(help="Batches accumulated per device and update.")] = None,
    tokens_per_update: Annotated[Optional[int], typer.Option(help="Target token slots per update (paper: 25000); sets --update-freq from the device count.")] = None,
    max_updates: Annotated[Optional[int], typer.Option(help="Stop after this many updates [default: the architecture's, the paper's 100k base, 300k big].")] = None,
    max_epochs: Annotated[Optional[int], typer.Option(help="Stop after this many epochs (0: no limit).")] = None,
    max_time: Annotated[Optional[float], typer.Option(help="Stop after this many seconds (0: no limit).")] = None,
    lr_schedule: Annotated[Optional[str], typer.Option(help="noam (paper §5.3) or inverse_sqrt (fairseq, with --peak-lr).")] = None,
    lr_scale: Annotated[Optional[float], typer.Option(help="Factor on the paper's learning-rate formula.")] = None,
    peak_lr: Annotated[Optional[float], typer.Option(help="Peak learning rate of inverse_sqrt.")] = None,
    warmup: Annotated[Optional[int], typer.Option(help="Warm-up updates (paper: 4000).")] = None,
    label_smoothing: Annotated[Optional[float], typer.Option(help="ε of label smoothing (paper: 0.1).")] = None,
    clip_norm: Annotated[Optional[float], typer.Option(help="Clip the gradient norm (0: off, as in the paper).")] = None,
    dropout: Annotated[Optional[float], typer.Option(help="P_drop, overriding the architecture's [big: 0.3 for EN-DE data, 0.1 for EN-FR, from the data's language pair].")] = None,
    pre_norm: Annotated[Optional[bool], typer.Option("--pre-norm/--post-norm", help="Layer norm before each sub-layer instead of after (paper: post).")] = None,
    validate_every: Annotated[Optional[int], typer.Option(help="Validate every N updates, refreshing checkpoint_last.pt and checkpoint_best.pt [default: as --save-every].")] = None,
    save_every: Annotated[Optional[int], typer.Option(help="Write a numbered checkpoint, the averaging window, every N updates [default: 1500 base, 600 big: the paper's 10 minutes at its step time, on any hardware].")] = None,
    save_minutes: Annotated[Optional[float], typer.Option(help="Also refresh checkpoint_last.pt every M minutes for crash safety; never numbered, never averaged [default: 10].")] = None,
    keep_last: Annotated[Optional[int], typer.Option(help="Keep the newest K numbered checkpoints, 0 all [default: 10 base, 25 big: what averaging needs plus a margin].")] = None,
    log_every: Annotated[Optional[int], typer.Option(help="Log every N updates.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for initialisation, batch order and dropout.")] = None,
    precision: Annotated[Optional[str], typer.Option(help="auto (bf16 on capable GPUs, else fp32), fp32, bf16 (also on CPUs with AVX512-BF16 or AMX: 1.2-1.8x the speed of fp32 measured; emulated and far slower without) or fp16 (dynamic loss scaling).")] = None,
    compile: Annotated[Optional[bool], typer.Option("--compile/--no-compile", help="torch.compile the model.")] = None,
    ema_decay: Annotated[Optional[float], typer.Option(help="Keep an exponential moving average of the weights (e.g. 0.9999; 0: off).")] = None,
    valid_bleu: Annotated[Optional[int], typer.Option(help="At each validation, beam-search this many dev sentences and report sacreBLEU (0: off).")] = None,
    packing: Annotated[Optional[bool], typer.Option("--packing/--no-packing", help="Pack each batch's sentences into one row per side (no padding computed; the same batches and updates) [default: off; on CPUs its masks cost more than the padding saves].")] = None,
    gpus: Annotated[Optional[int], typer.Option(help="GPUs on this machine, one process each (NCCL). Under torchrun the environment decides.")] = None,
    cpu: Annotated[bool, typer.Option("--cpu", help="Train on the CPU even if a GPU is present.")] = False,
    nproc: Annotated[int, typer.Option(help="With --cpu: processes (gloo backend).")] = 1,
    reset: Annotated[bool, typer.Option("--reset", help="Start anew in a run folder that holds another run: its checkpoints and logs are moved into previous-N/ inside it.")] = False,
    resume_from: Annotated[Optional[Path], typer.Option(help="Continue from this checkpoint, or from the newest intact checkpoint of this run folder, instead of --save-dir's checkpoint_last.pt. Every checkpoint is verified as it is loaded; a damaged checkpoint_last.pt stops the run and names the newest intact one, never passed over without this option.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Build everything, time a few updates, print the plan and exit.")] = False,
) -> None:
    """Train a Transformer on a prepared dataset; re-running the same command resumes exactly."""
    from nmt.data.dataset import find_data
    from nmt.recipe import load_recipe, run_config
    from nmt.train.launch import run

    loaded = load_recipe(recipe) if recipe else {}
    if data is None and "data" not in loaded:
        data = find_data()
        console.print(f"using {data}, the only prepared corpus in data-bin/")
    cfg = run_config(
        loaded, data=data, arch=arch, save_dir=save_dir,
        model={"dropout": dropout, "pre_norm": pre_norm},
        train=dict(max_tokens=max_tokens, pad_multiple=pad_multiple, update_freq=update_freq, tokens_per_update=tokens_per_update,
                   max_updates=max_updates, max_epochs=max_epochs, max_time=max_time, lr_schedule=lr_schedule, lr_scale=lr_scale,
                   peak_lr=peak_lr, warmup=warmup, label_smoothing=label_smoothing, clip_norm=clip_norm, validate_every=validate_every,
                   save_every=save_every, save_minutes=save_minutes, keep_last=keep_last, log_every=log_every, seed=seed,
                   precision=precision, compile=compile, ema_decay=ema_decay, valid_bleu=valid_bleu, packing=packing),
        gpus=gpus, cpu=cpu, nproc=nproc, resume_from=resume_from,
    )
    result = run(cfg, dry_run=dry_run, reset=reset)
    if dry_run:
        from nmt.train.report import plan_table

        console.print(plan_table(result, f"dry run: {cfg.arch} on {cfg.data}"))
    else:
        console.print(f"done: {result.get('updates', 0)} updates in {result.get('seconds', 0):.0f} s; best valid nll {result.get('best_valid_nll', float('nan')):.4f}")


@app.command()
def average(
    inputs: Annotated[list[Path], typer.Argument(help="Checkpoint files, or one run folder (its newest numbered checkpoints).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the averaged checkpoint.")],
    last: Annotated[Optional[int], typer.Option(help="With a run folder: average its newest N numbered checkpoints (paper: 5 base, 20 big) [default: the run's recipe, [average] last].")] = None,
) -> None:
    """Average checkpoints' parameters, as the paper did (§6.1)."""
    from nmt import checkpoint

    paths = checkpoint.to_average(inputs, last)
    checkpoint.average(paths, output)
    console.print(f"averaged {len(paths)} checkpoints ({', '.join(p.name for p in paths)}) → {output}")


@app.command()
def translate(
    checkpoints: Annotated[list[Path], typer.Argument(help="One checkpoint, or several to ensemble (log of averaged probabilities).")],
    input: Annotated[Optional[Path], typer.Option("--input", "-i", help="Read this file instead of stdin.")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write here (atomically) instead of stdout.")] = None,
    beam: Beam = None,
    lenpen: Lenpen = None,
    penalty: Penalty = None,
    max_len_a: MaxLenA = None,
    max_len_b: MaxLenB = None,
    stop: Stop = None,
    max_tokens: MaxTokens = None,
    buffer_size: Annotated[Optional[int], typer.Option(help="Lines read before translating [default: 2000; 1 when stdin is a terminal]. 1 answers each line as it arrives.")] = None,
    nbest: Annotated[Optional[int], typer.Option(help="Print the N best translations per line as LINE<TAB>SCORE<TAB>TEXT (LINE from 1).")] = None,
    scores: Annotated[bool, typer.Option("--scores", help="Prefix each translation with its length-penalised log-probability and a tab.")] = False,
    device: Device = "auto",
    dtype: Dtype = "fp32",
    threads: Threads = None,
    workers: Annotated[int, typer.Option(help="Batches searched at once on a CPU, each on threads ÷ workers threads (Marian's --cpu-threads, CTranslate2's inter_threads); 0: one per thread for a small model (step weights under 16 MiB), else one.")] = 0,
) -> None:
    """Translate raw text: stdin to stdout (or --input/--output), one line out for every line in.

    Search settings default to the [decode] table of the checkpoint's recipe (beam 4, α 0.6, GNMT penalty,
    output up to source + 50 when the recipe has none); the options here override them.
    """
    from nmt import atomic

    if input is not None and not input.exists():
        raise NmtError(f"{input}: file not found")
    for path in checkpoints:
        if not path.is_file():
            raise NmtError(f"{path}: checkpoint not found")
    interactive = input is None and sys.stdin.isatty()
    size = buffer_size or (1 if interactive else 2000)
    source = open(input, "rb") if input else sys.stdin.buffer
    try:
        if not interactive and not source.peek(1):
            # Nothing to translate: answer at once, without the second or more that torch and the model take.
            if output is not None:
                atomic.write_text(output, "")
                console.print(f"translated 0 lines → {output}")
            return
        from nmt.decode.translate import TranslateConfig, Translator

        if threads:
            import torch

            torch.set_num_threads(threads)
        overrides = dict(beam=beam, lenpen=lenpen, penalty=penalty, max_len_a=max_len_a, max_len_b=max_len_b, stop=stop,
                         max_tokens=max_tokens, nbest=nbest)
        cfg = TranslateConfig(buffer_size=size, scores=scores, device=device, dtype=dtype, workers=workers)
        translator = Translator(checkpoints, cfg, **overrides)
        if output is None:
            translator.translate_stream(source, sys.stdout, size)
            return
        with atomic.atomic_open(output) as out:
            n = translator.translate_stream(source, out, size)
        console.print(f"translated {n} lines → {output}")
    finally:
        if input:
            source.close()


@app.command()
def score(
    ref: Annotated[Optional[Path], typer.Option("--ref", "-r", help="Reference translations, one per line [or --test-set].")] = None,
    hyp: Annotated[Optional[Path], typer.Option("--hyp", help="Hypotheses [default: stdin].")] = None,
    test_set: Annotated[Optional[str], typer.Option("--test-set", "-t", help="A sacreBLEU test set (e.g. wmt14/full) as the reference; the signature names it.")] = None,
    language_pair: Annotated[Optional[str], typer.Option("--language-pair", "-l", help="With --test-set: the pair, e.g. en-de.")] = None,
    metrics: Annotated[str, typer.Option(help="Comma-separated: bleu, chrf, ter.")] = "bleu",
    tokenized: Annotated[bool, typer.Option("--tokenized", help="Also print the paper's tokenized BLEU, exactly as tensor2tensor's get_ende_bleu.sh: replace-unicode-punctuation and the Moses tokenizer on the hypotheses, the reference's quotes („ included) made ASCII and tokenized likewise, ##AT## compound splitting for German, multi-bleu.")] = False,
    lang: Annotated[Optional[str], typer.Option(help="Target language for --tokenized [default: --language-pair's target, else the reference file's suffix].")] = None,
    paired_bs: Annotated[Optional[Path], typer.Option("--paired-bs", help="Baseline hypotheses: run sacreBLEU's paired bootstrap test against them.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
) -> None:
    """Score translations with sacreBLEU (signature included) and, on request, the paper's tokenized BLEU."""
    from nmt import evaluate

    report = evaluate.score(evaluate.ScoreRequest(ref=ref, hyp=hyp, test_set=test_set, language_pair=language_pair, metrics=metrics,
                                                  tokenized=tokenized, lang=lang, paired_bs=paired_bs))
    sys.stdout.write(report.json() if json_out else report.text())


@app.command()
def export(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint, e.g. an averaged one.")],
    out_dir: Annotated[Path, typer.Argument(help="Folder to write; it must be absent or empty unless --force.")],
    to: Annotated[str, typer.Option("--to", help="ctranslate2 (pip install 'nmt[ctranslate2]') or huggingface, a MarianMTModel folder (pip install 'nmt[huggingface]').")],
    quantization: Annotated[Optional[str], typer.Option(help="ctranslate2 only: weights as int8, int8_float32, int8_float16, int8_bfloat16, bfloat16 or float16 [default: float32].")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace OUT_DIR if it is not empty.")] = False,
) -> None:
    """Export a checkpoint for CTranslate2 or Hugging Face Transformers, with its SentencePiece model (docs/export.md)."""
    from nmt.export import export as run

    info = run(checkpoint, to, out_dir, quantization, force)
    weights = f", {info['quantization']} weights" if info.get("quantization") else ""
    console.print(f"exported {checkpoint} → {out_dir} ({to}{weights})")


@app.command()
def attend(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint, e.g. an averaged one.")],
    sentence: Annotated[Optional[str], typer.Argument(help="The source sentence [or --input FILE --line N].")] = None,
    input: Annotated[Optional[Path], typer.Option("--input", "-i", help="Take the source sentence from this file.")] = None,
    line: Annotated[int, typer.Option(help="With --input: the line to take, from 1.")] = 1,
    reference: Annotated[Optional[str], typer.Option(help="Force-decode this translation instead of searching for one.")] = None,
    kind: Annotated[str, typer.Option(help="The map drawn on the terminal and in --svg: cross (decoder attending to the encoder), encoder or decoder (self-attention).")] = "cross",
    layer: Annotated[Optional[int], typer.Option(help="Layer, from 1 [default: the last].")] = None,
    head: Annotated[Optional[int], typer.Option(help="Head, from 1 [default: the average of the heads].")] = None,
    html: Annotated[Optional[Path], typer.Option(help="Also write one self-contained HTML page with every layer and head of the three attentions, a picker, and the tokens and weight of a cell on hover.")] = None,
    svg: Annotated[Optional[Path], typer.Option(help="Also write the terminal's map as a standalone SVG. (No PNG: it would need an image library.)")] = None,
    beam: Beam = None,
    lenpen: Lenpen = None,
    penalty: Penalty = None,
    max_len_a: MaxLenA = None,
    max_len_b: MaxLenB = None,
    stop: Stop = None,
    device: Device = "auto",
) -> None:
    """Translate one sentence with beam search (or force-decode --reference) and show its attention: the
    decoder's attention to the source as a heatmap on the terminal (plain numbers when not a terminal), for
    one --layer and the average of the heads or one --head; every map in --html, one in --svg.

    The weights come from one teacher-forced forward pass of the model over the source and the translation.
    """
    from nmt.inspect.attend import AttendConfig, run

    decode = dict(beam=beam, lenpen=lenpen, penalty=penalty, max_len_a=max_len_a, max_len_b=max_len_b, stop=stop)
    run(AttendConfig(checkpoint=checkpoint, sentence=sentence, input=input, line=line, reference=reference, kind=kind, layer=layer,
                     head=head, html=html, svg=svg, device=device, decode=decode))


@app.command()
def serve(
    checkpoints: Annotated[Optional[list[Path]], typer.Argument(help="One checkpoint, or several to ensemble [or --ctranslate2].")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on. 127.0.0.1 is this machine only; 0.0.0.0 (or ::) opens the server to every network this machine is on, without authentication (a warning says who can reach it).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port; 0 picks a free one (printed).")] = 8080,
    ctranslate2: Annotated[Optional[Path], typer.Option("--ctranslate2", help="Serve this folder written by 'nmt export --to ctranslate2' instead of checkpoints (needs --penalty fairseq; no scores, n-best lists or attention maps).")] = None,
    beam: Beam = None,
    lenpen: Lenpen = None,
    penalty: Penalty = None,
    max_len_a: MaxLenA = None,
    max_len_b: MaxLenB = None,
    stop: Stop = None,
    max_tokens: MaxTokens = None,
    max_wait_ms: Annotated[float, typer.Option(help="How long the first segment of a batch waits for segments of other requests to join it.")] = ServeConfig.max_wait_ms,
    max_queue: Annotated[int, typer.Option(help="Segments accepted and not yet answered, over all requests; past it, 503 with Retry-After.")] = Limits.max_queue,
    max_segments: Annotated[int, typer.Option(help="Segments in one request.")] = Limits.max_segments,
    max_segment_chars: Annotated[int, typer.Option(help="Characters in one segment (and the model's own limit in tokens).")] = Limits.max_segment_chars,
    max_body_bytes: Annotated[int, typer.Option(help="Bytes in one request's body.")] = Limits.max_body_bytes,
    max_beam: Annotated[int, typer.Option(help="The widest beam a request may ask for.")] = Limits.max_beam,
    device: Device = "auto",
    dtype: Dtype = "fp32",
    threads: Annotated[Optional[int], typer.Option(help="CPU threads for torch [default: the cores less one, left to the HTTP side].")] = None,
) -> None:
    """Serve translations over HTTP: POST /v1/translate {"text": [...]} (JSON), GET /health, GET /metrics
    (Prometheus), and at / a page that shows a sentence's translation and attention. Segments of concurrent
    requests are decoded together, each exactly as 'nmt translate' translates it (docs/serve.md).
    """
    try:
        from nmt.serve.server import serve as run
    except ImportError as err:
        raise NmtError(f"nmt serve needs {err.name}: pip install 'nmt[serve]'") from None

    decode = dict(beam=beam, lenpen=lenpen, penalty=penalty, max_len_a=max_len_a, max_len_b=max_len_b, stop=stop, max_tokens=max_tokens)
    limits = Limits(max_body_bytes=max_body_bytes, max_segments=max_segments, max_segment_chars=max_segment_chars, max_queue=max_queue,
                    max_beam=max_beam)
    run(ServeConfig(checkpoints=tuple(checkpoints or ()), ctranslate2=ctranslate2, host=host, port=port, decode=decode, device=device,
                    dtype=dtype, threads=threads, max_wait_ms=max_wait_ms, limits=limits))
