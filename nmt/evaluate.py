"""Scoring: sacreBLEU (with its signature), chrF and TER, the paper's tokenized BLEU, and paired bootstrap.

The paper's Table 2 BLEU was computed as tensor2tensor's ``get_ende_bleu.sh`` did: Moses unicode
punctuation replacement and tokenisation of hypothesis and reference, hyphenated compounds split as
``a ##AT##-##AT## b`` (EN-DE), then ``multi-bleu.perl`` (case-sensitive BLEU on those tokens). That
number is about 0.7–1.5 higher than sacreBLEU on the same output, so we always say which one is printed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from sacrebleu.metrics import BLEU, CHRF, TER
from sacremoses import MosesPunctNormalizer, MosesTokenizer

from nmt.errors import NmtError

METRICS = {"bleu": BLEU, "chrf": CHRF, "ter": TER}
_COMPOUND = re.compile(r"(\S)-(\S)")


@dataclass
class Score:
    metric: str
    score: float
    text: str  # sacreBLEU's own rendering, e.g. "BLEU = 27.31 58.1/33.0/..."
    signature: str
    kind: str  # "sacrebleu (detokenized)" or "tokenized (paper, ...)"


def check_lengths(hyps: list[str], refs: list[str], hyp_name: str, ref_name: str) -> None:
    if len(hyps) != len(refs):
        raise NmtError(f"{hyp_name} has {len(hyps)} lines but {ref_name} has {len(refs)}; they must be line-aligned")


def sacre(hyps: list[str], refs: list[str], metrics: list[str]) -> list[Score]:
    """sacreBLEU's scores of detokenized text, each with its signature."""
    out = []
    for name in metrics:
        if name not in METRICS:
            raise NmtError(f"unknown metric '{name}' in --metrics (known: {', '.join(METRICS)})")
        metric = METRICS[name]()
        result = metric.corpus_score(hyps, [refs])
        out.append(Score(name, result.score, str(result), str(metric.get_signature()), "sacrebleu (detokenized)"))
    return out


@lru_cache(maxsize=4)
def _moses(lang: str) -> tuple[MosesPunctNormalizer, MosesTokenizer]:
    return MosesPunctNormalizer(lang=lang, pre_replace_unicode_punct=True), MosesTokenizer(lang=lang)


def paper_tokenize(line: str, lang: str) -> str:
    """replace-unicode-punctuation.perl + tokenizer.perl -l LANG (+ ##AT## compound split for German)."""
    normaliser, tokenizer = _moses(lang)
    tokens = tokenizer.tokenize(normaliser.normalize(line), escape=False, return_str=True)
    if lang == "de":
        tokens = _COMPOUND.sub(r"\1 ##AT##-##AT## \2", tokens)
    return tokens


def tokenized_bleu(hyps: list[str], refs: list[str], lang: str) -> Score:
    """The paper-comparable BLEU: multi-bleu.perl on Moses-tokenized, compound-split text."""
    bleu = BLEU(tokenize="none", force=True)
    result = bleu.corpus_score([paper_tokenize(h, lang) for h in hyps], [[paper_tokenize(r, lang) for r in refs]])
    split = " + ##AT## compound splitting" if lang == "de" else ""
    kind = f"tokenized BLEU as in the paper (Moses tokenizer -l {lang}{split}, multi-bleu); not comparable with sacreBLEU"
    return Score("bleu", result.score, str(result), "multi-bleu.perl equivalent: " + str(bleu.get_signature()), kind)


def paired_bootstrap(hyps: list[str], baseline: list[str], refs: list[str], metrics: list[str], samples: int = 1000) -> list[dict]:
    """sacreBLEU's paired bootstrap resampling: our system against a baseline, per metric."""
    from sacrebleu.significance import PairedTest

    test = PairedTest([("baseline", baseline), ("system", hyps)], {m.upper(): METRICS[m]() for m in metrics},
                      [refs], test_type="bs", n_samples=samples)
    _, results = test()
    # Results are keyed by sacreBLEU's names for the scores ("BLEU", "chrF2", "TER"), in the order given,
    # after a "System" column; not by the keys passed in.
    scored = [v for k, v in results.items() if k != "System"]
    out = []
    for name, (base, ours) in zip(metrics, scored):
        out.append({"metric": name, "baseline": base.score, "system": ours.score, "p_value": float(ours.p_value),
                    "mean": float(ours.mean), "ci": float(ours.ci)})
    return out
