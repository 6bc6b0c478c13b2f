"""A committed checkpoint keeps loading and translating the same (tests/fixtures/tiny/, made by its make.py):
what a user's old checkpoints count on, whatever the code around the model becomes (Sockeye keeps such a
test for every release)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from nmt import checkpoint
from nmt.decode.translate import TranslateConfig, Translator

TINY = Path(__file__).resolve().parents[1] / "fixtures" / "tiny"
SOURCE = Path(__file__).resolve().parents[1] / "fixtures" / "test.en"


def pinned() -> tuple[list[str], list[float]]:
    hyps = (TINY / "test.hyp").read_text(encoding="utf-8").splitlines()
    scores = [float(x) for x in (TINY / "test.scores").read_text(encoding="utf-8").split()]
    return hyps, scores


def test_the_committed_checkpoint_loads_as_it_was_written() -> None:
    ckpt = checkpoint.load(TINY / "checkpoint.pt")
    assert ckpt["format"] == "nmt-checkpoint-1" and "optimizer" not in ckpt
    model, meta = checkpoint.load_model(TINY / "checkpoint.pt")
    assert (model.cfg.d_model, model.cfg.d_ff, model.cfg.heads, model.cfg.vocab_size) == (64, 256, 4, 400)
    assert meta["manifest"]["src"] == "en" and meta["manifest"]["tgt"] == "de"


@pytest.mark.parametrize("max_tokens", [4096, 1])  # one batch, and one sentence at a time
def test_the_committed_checkpoint_translates_as_pinned(max_tokens: int) -> None:
    hyps, scores = pinned()
    translator = Translator([TINY / "checkpoint.pt"], TranslateConfig(device="cpu", scores=True), max_tokens=max_tokens)
    lines = list(enumerate(SOURCE.read_text(encoding="utf-8").splitlines(), 1))
    out = [line.rstrip("\n").split("\t", 1) for line in translator.translate_buffer(lines)]
    assert [text for _, text in out] == hyps
    assert [float(score) for score, _ in out] == pytest.approx(scores, abs=2e-4)


def test_the_command_line_translates_the_committed_checkpoint_as_pinned() -> None:
    hyps, _ = pinned()
    result = subprocess.run([sys.executable, "-m", "nmt", "translate", str(TINY / "checkpoint.pt"), "--input", str(SOURCE)],
                            capture_output=True, text=True, check=True)
    assert result.stdout.splitlines() == hyps
