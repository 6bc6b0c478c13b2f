"""``nmt attend``: the attention of one sentence and its translation, from the model's own forward pass.

The sentence is translated by the real beam search (``Translator``: the checkpoint's [decode] settings,
with any override), or its translation is given (``--reference``: forced decoding, no search). Then ONE
teacher-forced pass over (source + EOS, BOS + target) runs with the weights recorded
(``nmt.inspect.record.attention_maps``), so the maps are those of the computation that scores the target; the
target's log-probability comes from the same pass.

Positions: the encoder has one per source piece plus EOS. The decoder's position t reads ``target_in[t]``
(BOS, then the target pieces) and predicts ``target_out[t]`` (the target pieces, then EOS); its rows are
labelled by what they predict, so the cross-attention row of a word is where the decoder looked to write it,
and its self-attention row reaches only the tokens written before that word.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import torch
from rich.console import Console
from rich.text import Text

from nmt import atomic
from nmt.console import console
from nmt.data.text import normalise
from nmt.decode.translate import TranslateConfig, Translator
from nmt.errors import NmtError
from nmt.inspect.maps import SentenceAttention
from nmt.inspect.record import attention_maps
from nmt.inspect.render.page import KINDS, NOTES, html_page
from nmt.inspect.render.svg import svg
from nmt.inspect.render.terminal import terminal
from nmt.tokens import BOS, EOS, SPECIAL_PIECES


@dataclass(frozen=True)
class AttendConfig:
    """What ``nmt attend`` draws: which sentence, which map, and where."""

    checkpoint: Path
    sentence: str | None = None  # the source text, or ``input`` and ``line``
    input: Path | None = None
    line: int = 1  # from 1
    reference: str | None = None  # force-decode this translation instead of searching
    kind: str = "cross"  # the map drawn on the terminal and in the SVG
    layer: int | None = None  # from 1; None: the last
    head: int | None = None  # from 1; None: the average of the heads
    html: Path | None = None
    svg: Path | None = None
    device: str = "auto"
    decode: dict = field(default_factory=dict)  # overrides of the checkpoint's [decode] settings (None: unset)


def read_sentence(cfg: AttendConfig) -> str:
    """The source sentence: given, or line ``cfg.line`` of ``cfg.input``."""
    if (cfg.sentence is None) == (cfg.input is None):
        raise NmtError("give the source sentence, or --input FILE --line N (one of the two)")
    if cfg.input is None:
        text = cfg.sentence or ""
    else:
        if not cfg.input.is_file():
            raise NmtError(f"{cfg.input}: file not found")
        lines = cfg.input.read_text(encoding="utf-8", errors="replace").splitlines()
        if not lines:
            raise NmtError(f"{cfg.input}: the file is empty")
        if not 1 <= cfg.line <= len(lines):
            raise NmtError(f"--line {cfg.line}: {cfg.input} has lines 1 to {len(lines)}")
        text = lines[cfg.line - 1]
    if not text.strip():
        raise NmtError("the source sentence is empty" + (f" ({cfg.input} line {cfg.line})" if cfg.input else ""))
    return text


def compute(checkpoint: Path, sentence: str, reference: str | None = None, device: str = "auto", **decode: object) -> SentenceAttention:
    """Translate ``sentence`` (or take ``reference`` as its translation) and record every attention map of
    the teacher-forced pass over the pair."""
    translator = Translator([checkpoint], TranslateConfig(device=device), **decode)
    model = translator.models[0]
    src_ids = translator.encode(1, sentence)
    if not src_ids:
        raise NmtError("the source sentence is empty after normalisation")
    if reference is None:
        best = translator.translate_ids([src_ids])[0][0]
        tgt_ids, score = best.tokens, best.score
    else:
        if not reference.strip():
            raise NmtError("--reference is empty")
        tgt_ids, score = translator.spm.encode(normalise(reference, translator.tgt_lang)), None
        if len(tgt_ids) + 1 > model.cfg.max_positions:
            raise NmtError(f"--reference has {len(tgt_ids)} pieces; the model takes at most {model.cfg.max_positions - 1}")
    return record(translator, src_ids, tgt_ids, score)


def record(translator: Translator, src_ids: list[int], tgt_ids: list[int], score: float | None) -> SentenceAttention:
    """Every attention map of the translator's first model in the teacher-forced pass over ``src_ids`` (without
    EOS) and ``tgt_ids`` (its translation, without BOS and EOS; ``score``: the search's, None when forced)."""
    model = translator.models[0]
    src = torch.tensor([src_ids + [EOS]], device=translator.device)
    tgt_in = torch.tensor([[BOS] + tgt_ids], device=translator.device)
    with torch.inference_mode():
        logits, maps = attention_maps(model, src, tgt_in)
    gold = torch.tensor(tgt_ids + [EOS], device=logits.device)
    logprob = logits[0].float().log_softmax(-1).gather(1, gold[:, None]).sum().item()
    stack = lambda layers: torch.stack([m[0] for m in layers]).float().cpu().numpy()  # noqa: E731  (layers, h, Tq, Tk)
    piece = lambda i: SPECIAL_PIECES.get(i) or translator.spm.id_to_piece(i)  # noqa: E731
    return SentenceAttention(
        source=[piece(i) for i in src_ids] + [SPECIAL_PIECES[EOS]], target_in=[SPECIAL_PIECES[BOS]] + [piece(i) for i in tgt_ids],
        target_out=[piece(i) for i in tgt_ids] + [SPECIAL_PIECES[EOS]], translation=translator.spm.decode(tgt_ids),
        logprob=logprob, score=score, encoder=stack(maps.encoder), decoder=stack(maps.decoder), cross=stack(maps.cross),
    )


def run(cfg: AttendConfig, out: TextIO | None = None) -> SentenceAttention:
    """``nmt attend``: compute the maps, print the chosen one on ``out`` (stdout), write the HTML and SVG files."""
    if cfg.kind not in KINDS:
        raise NmtError(f"--kind must be one of {', '.join(KINDS)}, not '{cfg.kind}'")
    sentence = read_sentence(cfg)
    att = compute(cfg.checkpoint, sentence, cfg.reference, cfg.device, **cfg.decode)
    chosen = att.heatmap(cfg.kind, cfg.layer, cfg.head)  # checks --layer and --head
    screen = Console(file=out or sys.stdout, highlight=False)
    scored = f"log-probability {att.logprob:.4f}" + ("" if att.score is None else f", search score {att.score:.4f} (length-penalised)")
    for name, value in [("source", " ".join(att.source)),
                        ("target", " ".join(att.target_out) + ("  (forced: --reference)" if att.forced else "")),
                        ("translation", att.translation), ("score", scored)]:
        screen.print(_fact(name, value), soft_wrap=True)
    screen.print(terminal(chosen, screen.width), crop=False, soft_wrap=True)
    if cfg.html is not None:
        facts = [("checkpoint", str(cfg.checkpoint)), ("source", sentence), ("source pieces", " ".join(att.source)),
                 ("translation" + (" (given)" if att.forced else ""), att.translation), ("target pieces", " ".join(att.target_out)),
                 ("score", scored)]
        page = html_page(att.heatmaps(), f"nmt attend: {sentence}", facts, KINDS, NOTES, show=chosen)
        atomic.write_text(cfg.html, page)
        console.print(f"wrote {cfg.html}")
    if cfg.svg is not None:
        atomic.write_text(cfg.svg, svg(chosen))
        console.print(f"wrote {cfg.svg}")
    return att


def _fact(name: str, value: str) -> Text:
    line = Text(f"{name}: ", style="bold")
    line.append(value)
    return line
