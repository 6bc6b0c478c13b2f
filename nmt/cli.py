"""The ``nmt`` command line: each subcommand parses its options, builds a config and calls one library function."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from nmt import __version__
from nmt.console import console
from nmt.errors import NmtError

app = typer.Typer(
    help="Neural machine translation: the Transformer of Vaswani et al. (2017), from raw text to BLEU.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
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
    max_ratio: Annotated[Optional[float], typer.Option(help="Drop training pairs whose length ratio exceeds this [default: 1.5; gettext 3.0].")] = None,
    dedup: Annotated[Optional[bool], typer.Option("--dedup/--no-dedup", help="Drop repeated training pairs.")] = None,
    spm_model: Annotated[Optional[Path], typer.Option(help="Reuse this SentencePiece model instead of training one.")] = None,
    spm_sample: Annotated[int, typer.Option(help="Sentences sampled to train SentencePiece.")] = 2_000_000,
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
        vocab_size=vocab_size, max_len=max_len, max_ratio=max_ratio, dedup=dedup, spm_model=spm_model,
        spm_sample=spm_sample, workers=workers, mirror=mirror, raw_dir=raw_dir, retries=retries, force=force,
        command=_command_line(),
    )
    manifest = run(cfg)
    manifest["dest"] = str(cfg.dest)
    console.print(summary_table(manifest))


def run() -> None:
    """Entry point that turns NmtError into one line on stderr and exit status 2."""
    try:
        app(standalone_mode=False)
    except NmtError as err:
        print(f"nmt: error: {err}", file=sys.stderr)
        sys.exit(2)


@app.command()
def train(
    data: Annotated[Optional[Path], typer.Argument(help="A folder written by 'nmt prepare' [default: the recipe's].")] = None,
    recipe: Annotated[Optional[Path], typer.Option(help="TOML recipe; the options below override its values.")] = None,
    arch: Annotated[Optional[str], typer.Option(help="base, big or tiny.")] = None,
    save_dir: Annotated[Optional[Path], typer.Option(help="Run folder for checkpoints and logs [default: runs/ARCH].")] = None,
    max_tokens: Annotated[Optional[int], typer.Option(help="Padded token slots per batch and device (fairseq's convention) [default: 4096].")] = None,
    update_freq: Annotated[Optional[int], typer.Option(help="Batches accumulated per device and update.")] = None,
    tokens_per_update: Annotated[Optional[int], typer.Option(help="Target token slots per update (paper: 25000); sets --update-freq from the device count.")] = None,
    max_updates: Annotated[Optional[int], typer.Option(help="Stop after this many updates (paper: 100k base, 300k big).")] = None,
    max_epochs: Annotated[Optional[int], typer.Option(help="Stop after this many epochs (0: no limit).")] = None,
    max_time: Annotated[Optional[float], typer.Option(help="Stop after this many seconds (0: no limit).")] = None,
    lr_schedule: Annotated[Optional[str], typer.Option(help="noam (paper §5.3) or inverse_sqrt (fairseq, with --peak-lr).")] = None,
    lr_scale: Annotated[Optional[float], typer.Option(help="Factor on the paper's learning-rate formula.")] = None,
    peak_lr: Annotated[Optional[float], typer.Option(help="Peak learning rate of inverse_sqrt.")] = None,
    warmup: Annotated[Optional[int], typer.Option(help="Warm-up updates (paper: 4000).")] = None,
    label_smoothing: Annotated[Optional[float], typer.Option(help="ε of label smoothing (paper: 0.1).")] = None,
    clip_norm: Annotated[Optional[float], typer.Option(help="Clip the gradient norm (0: off, as in the paper).")] = None,
    dropout: Annotated[Optional[float], typer.Option(help="P_drop, overriding the architecture's.")] = None,
    pre_norm: Annotated[Optional[bool], typer.Option("--pre-norm/--post-norm", help="Layer norm before each sub-layer instead of after (paper: post).")] = None,
    validate_every: Annotated[Optional[int], typer.Option(help="Validate (and checkpoint) every N updates.")] = None,
    save_every: Annotated[Optional[int], typer.Option(help="Checkpoint every N updates.")] = None,
    save_minutes: Annotated[Optional[float], typer.Option(help="Also checkpoint every M minutes (paper: 10).")] = None,
    keep_last: Annotated[Optional[int], typer.Option(help="Keep the newest K numbered checkpoints (0: all).")] = None,
    log_every: Annotated[Optional[int], typer.Option(help="Log every N updates.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for initialisation, batch order and dropout.")] = None,
    precision: Annotated[Optional[str], typer.Option(help="auto (bf16 on capable GPUs, else fp32), fp32, bf16 or fp16 (dynamic loss scaling).")] = None,
    compile: Annotated[Optional[bool], typer.Option("--compile/--no-compile", help="torch.compile the model.")] = None,
    ema_decay: Annotated[Optional[float], typer.Option(help="Keep an exponential moving average of the weights (e.g. 0.9999; 0: off).")] = None,
    gpus: Annotated[Optional[int], typer.Option(help="GPUs on this machine, one process each (NCCL). Under torchrun the environment decides.")] = None,
    cpu: Annotated[bool, typer.Option("--cpu", help="Train on the CPU even if a GPU is present.")] = False,
    nproc: Annotated[int, typer.Option(help="With --cpu: processes (gloo backend).")] = 1,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Build everything, time a few updates, print the plan and exit.")] = False,
) -> None:
    """Train a Transformer on a prepared dataset; re-running the same command resumes exactly."""
    from nmt.config import RunConfig, TrainConfig, load_recipe, override
    from nmt.train.loop import run

    base = load_recipe(recipe) if recipe else {}
    data = data or base.get("data")
    if data is None:
        raise NmtError("no data folder: give DATA or a --recipe that sets 'data'")
    chosen_arch = arch or base.get("arch", "base")
    model = dict(base.get("model", {}))
    if dropout is not None:
        model["dropout"] = dropout
    if pre_norm is not None:
        model["pre_norm"] = pre_norm
    train_cfg = override(
        base.get("train", TrainConfig()), max_tokens=max_tokens, update_freq=update_freq, tokens_per_update=tokens_per_update,
        max_updates=max_updates, max_epochs=max_epochs, max_time=max_time, lr_schedule=lr_schedule, lr_scale=lr_scale,
        peak_lr=peak_lr, warmup=warmup, label_smoothing=label_smoothing, clip_norm=clip_norm, validate_every=validate_every,
        save_every=save_every, save_minutes=save_minutes, keep_last=keep_last, log_every=log_every, seed=seed,
        precision=precision, compile=compile, ema_decay=ema_decay,
    )
    cfg = RunConfig(
        data=Path(data), save_dir=save_dir or base.get("save_dir") or Path("runs") / chosen_arch, arch=chosen_arch, model=model,
        train=train_cfg, average_last=base.get("average_last", 5), gpus=gpus if gpus is not None else base.get("gpus", 0) if not cpu else 0,
        cpu=cpu, nproc=nproc,
        **({"decode": base["decode"]} if "decode" in base else {}),
    )
    result = run(cfg, dry_run=dry_run)
    if dry_run:
        from rich.table import Table

        table = Table(title=f"dry run: {cfg.arch} on {cfg.data}")
        table.add_column("setting")
        table.add_column("value", justify="right")
        for key, value in result.items():
            table.add_row(key, f"{value:,}" if isinstance(value, int) else f"{value:.4g}" if isinstance(value, float) else str(value))
        console.print(table)
    else:
        console.print(f"done: {result.get('updates', 0)} updates in {result.get('seconds', 0):.0f} s; best valid nll {result.get('best_valid_nll', float('nan')):.4f}")
