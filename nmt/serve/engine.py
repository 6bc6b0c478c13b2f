"""The model behind ``nmt serve``: PyTorch checkpoints through ``Translator`` (what ``nmt translate`` runs), or a
CTranslate2 folder through ``CT2Translator``. Both answer the same three questions: how a segment tokenizes,
what a batch of segments translates to under given search settings, and (PyTorch only) what the attention of
one translation looks like.

``nmt serve`` runs ``TorchEngine`` in a decoding process of its own (``nmt.serve.worker``), ``CT2Engine`` in
the server's process (CTranslate2 decodes without Python's lock). The batching thread calls ``translate``;
the page's attention pass runs in another thread. Both use the one model, so ``lock`` keeps them apart:
``nmt.inspect.record`` hooks the attention modules for its pass, and a batch encoded while the hooks are on
would both feed them and be slowed by them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol, Sequence

from nmt.decode.config import DecodeConfig, decode_config
from nmt.errors import NmtError

if TYPE_CHECKING:  # torch comes with the engines that decode: a checkpoint's server process imports none
    from nmt.inspect.maps import SentenceAttention


@dataclass(frozen=True)
class Output:
    """One hypothesis of a segment, as the API gives it."""

    text: str  # detokenised, as ``nmt translate`` prints it
    score: float | None  # length-penalised log-probability (None: the engine does not give it)
    tokens: tuple[int, ...] | None = None  # the target ids, for the attention pass (PyTorch only)


class Engine(Protocol):
    """What the server needs of a model."""

    decode: DecodeConfig  # the server's search settings: the model's [decode] with the command line's overrides
    max_source_tokens: int  # the longest segment the model takes, in tokens
    src_lang: str
    tgt_lang: str
    description: str  # what the page and /health say is being served
    has_scores: bool  # whether ``Output.score`` is known (else a request for scores or n-best lists is refused)
    has_attention: bool

    def tokenize(self, text: str) -> Sequence: ...

    def translate(self, sources: list[Sequence], decode: DecodeConfig,
                  on_done: Callable[[int, list[Output]], None] | None = None) -> list[list[Output]]:
        """Each source's ``decode.nbest`` best hypotheses, in order; ``on_done(i, hypotheses)`` as soon as
        source i's are known, where the engine can tell before the batch ends. ``sources`` must fit one batch
        of ``decode.max_tokens`` (the batcher cuts them so)."""

    def attention(self, source: Sequence, best: Output) -> SentenceAttention: ...

    def close(self) -> None:
        """Release what the engine holds (the server calls it once the queue is drained)."""


class TorchEngine:
    """Checkpoints (one, or an ensemble), searched exactly as ``nmt translate`` searches them."""

    has_scores = True
    has_attention = True

    def __init__(self, checkpoints: Sequence[Path], device: str = "auto", dtype: str = "fp32", **decode_overrides: object) -> None:
        from nmt.decode.translate import TranslateConfig, Translator

        self.translator = Translator(list(checkpoints), TranslateConfig(device=device, dtype=dtype), **decode_overrides)
        self.decode = self.translator.decode
        self.max_source_tokens = self.translator.max_src
        self.src_lang, self.tgt_lang = self.translator.src_lang, self.translator.tgt_lang
        names = " + ".join(str(p) for p in checkpoints)
        self.description = f"{names} ({self.src_lang}→{self.tgt_lang}, {self.translator.device.type})"
        self.lock = threading.Lock()

    def tokenize(self, text: str) -> list[int]:
        return self.translator.tokenize(text)

    def translate(self, sources: list[Sequence], decode: DecodeConfig,
                  on_done: Callable[[int, list[Output]], None] | None = None) -> list[list[Output]]:
        """``nmt translate``'s search; each sentence is handed to ``on_done`` as its search ends."""
        text = self.translator.spm.decode
        outputs = lambda hyps: [Output(text(h.tokens), h.score, tuple(h.tokens)) for h in hyps]  # noqa: E731
        done = None if on_done is None else (lambda i, hyps: on_done(i, outputs(hyps)))
        with self.lock:
            found = self.translator.translate_ids([list(s) for s in sources], decode, done)
        return [outputs(hyps) for hyps in found]

    def attention(self, source: Sequence, best: Output) -> SentenceAttention:
        """The maps ``nmt attend`` draws, of the first model's teacher-forced pass over ``source`` and ``best``."""
        from nmt.inspect.attend import record

        assert best.tokens is not None
        with self.lock:
            return record(self.translator, list(source), list(best.tokens), best.score)

    def close(self) -> None:
        """Nothing to release: the model lives as long as this object."""


class CT2Engine:
    """A folder written by ``nmt export --to ctranslate2``, searched as ``CT2Translator`` searches it."""

    has_scores = False
    has_attention = False

    def __init__(self, model_dir: Path, threads: int = 2, device: str = "cpu", **decode_overrides: object) -> None:
        from nmt.export.ct2 import CT2Translator, check_decode

        self.ct2 = CT2Translator(model_dir, device=device, threads=threads)
        self.decode = decode_config({"decode": self.ct2.info.get("decode", {})}, **decode_overrides)
        check_decode(self.decode)
        self.max_source_tokens = int(self.ct2.info["max_source_tokens"])
        self.src_lang = self.ct2.src_lang
        self.tgt_lang = self.ct2.info.get("target_language", "")
        self.description = f"{model_dir} (CTranslate2, {self.src_lang}→{self.tgt_lang})"

    def tokenize(self, text: str) -> list[str]:
        return self.ct2.tokenize(text)

    def translate(self, sources: list[Sequence], decode: DecodeConfig,
                  on_done: Callable[[int, list[Output]], None] | None = None) -> list[list[Output]]:
        """``CT2Translator``'s search; CTranslate2 answers a batch at once, so ``on_done`` is never called."""
        texts = self.ct2.translate_pieces([list(s) for s in sources], decode, decode.max_tokens)
        return [[Output(text, None)] for text in texts]

    def attention(self, source: Sequence, best: Output) -> SentenceAttention:
        raise NmtError("attention maps need the PyTorch checkpoint; this server runs a CTranslate2 model")

    def close(self) -> None:
        """Nothing to release: CTranslate2's translator lives as long as this object."""


def request_decode(engine: Engine, beam: int | None, nbest: int | None) -> DecodeConfig:
    """The server's search settings with a request's ``beam`` and ``nbest``; the server's own object when the
    request changes nothing, so that requests with the same settings share batches."""
    base = engine.decode
    beam = base.beam if beam is None else beam
    nbest = base.nbest if nbest is None else nbest
    return base if (beam, nbest) == (base.beam, base.nbest) else replace(base, beam=beam, nbest=nbest)
