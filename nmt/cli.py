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
