r"""Scoring: sacreBLEU (with its signature), chrF and TER, the paper's tokenized BLEU, and paired bootstrap.

The paper's Table 2 BLEU is tensor2tensor's ``get_ende_bleu.sh``, which we reproduce step for step:

- hypotheses: Moses ``replace-unicode-punctuation.perl`` (“ and ” become ", „ is left alone), then
  ``tokenizer.perl -l de`` (with its default XML escaping);
- reference: Google's tokenized newstest2014 (``newstest2014.tok.de``), which was made by converting its
  Unicode punctuation, „ included, to ASCII and running ``tokenizer.perl -l de``: we do the same to the
  raw reference (paper-recipe §5; t2t issue #317);
- both: hyphenated compounds split as ``a ##AT##-##AT## b`` (``perl -ple 's{(\S)-(\S)}{$1 ##AT##-##AT## $2}g'``),
  then ``multi-bleu.perl``: case-sensitive BLEU on whitespace tokens, 0 when any n-gram precision is 0.

The compound split is German-only (the script is EN-DE's); other languages get the same steps without it.
That number is about 0.7–1.5 higher than sacreBLEU on the same output, so we always say which one is printed.
"""

from __future__ import annotations

import difflib
import json
import re
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from sacrebleu.metrics import BLEU, CHRF, TER
from sacremoses import MosesTokenizer

from nmt.errors import NmtError

METRICS = {"bleu": BLEU, "chrf": CHRF, "ter": TER}
# Perl's \S without Unicode semantics: anything but ASCII whitespace (Python's \S also excludes U+00A0 etc.).
_COMPOUND = re.compile(r"([^ \t\n\r\f\x0b])-([^ \t\n\r\f\x0b])")
# replace-unicode-punctuation.perl, rule for rule and in its order (its "１" → '"' included: the script has it).
_UNICODE_PUNCTUATION = [
    ("，", ","), (re.compile("。 *"), ". "), ("、", ","), ("”", '"'), ("“", '"'), ("∶", ":"), ("：", ":"), ("？", "?"),
    ("《", '"'), ("》", '"'), ("）", ")"), ("！", "!"), ("（", "("), ("；", ";"), ("１", '"'), ("」", '"'), ("「", '"'),
    ("０", "0"), ("３", "3"), ("２", "2"), ("５", "5"), ("６", "6"), ("９", "9"), ("７", "7"), ("８", "8"), ("４", "4"),
    (re.compile("． *"), ". "), ("～", "~"), ("’", "'"), ("…", "..."), ("━", "-"), ("〈", "<"), ("〉", ">"), ("【", "["),
    ("】", "]"), ("％", "%"),
]


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


def sacre(hyps: list[str], refs: list[str], metrics: list[str], test_set: str | None = None, langpair: str | None = None) -> list[Score]:
    """sacreBLEU's scores of detokenized text, each with its signature (naming the test set when given)."""
    out = []
    for name in metrics:
        if name not in METRICS:
            raise NmtError(f"unknown metric '{name}' in --metrics (known: {', '.join(METRICS)})")
        metric = METRICS[name]()
        result = metric.corpus_score(hyps, [refs])
        signature = metric.get_signature()
        if test_set:
            signature.update("test", test_set)
            signature.update("lang", langpair)
        out.append(Score(name, result.score, str(result), str(signature), "sacrebleu (detokenized)"))
    return out


def test_set_references(test_set: str, langpair: str | None) -> list[str]:
    """The reference lines of a sacreBLEU test set (``wmt14/full``, ``en-de``), from sacreBLEU's cache
    (``$SACREBLEU``, default ``~/.sacrebleu``), which sacreBLEU fills on first use."""
    from sacrebleu.dataset import DATASETS

    if test_set not in DATASETS:
        near = difflib.get_close_matches(test_set, list(DATASETS), n=3)
        raise NmtError(f"--test-set {test_set}: not a sacreBLEU test set" + (f" (did you mean {', '.join(near)}?)" if near else ""))
    pairs = DATASETS[test_set].langpairs
    if langpair not in pairs:
        raise NmtError(f"--language-pair {langpair}: {test_set} has {', '.join(sorted(k for k in pairs if '-' in k))}")
    try:
        files = DATASETS[test_set].get_reference_files(langpair)
        with open(files[0], encoding="utf-8") as f:
            return [line.rstrip("\n") for line in f]
    except (Exception, SystemExit) as err:  # sacreBLEU exits or raises when it cannot download
        raise NmtError(f"cannot get the {test_set} {langpair} references into sacreBLEU's cache ({str(err).splitlines()[0] if str(err) else type(err).__name__}); "
                       "sacreBLEU downloads them on first use, or give the reference file with --ref") from None


def replace_unicode_punctuation(line: str) -> str:
    """Moses' ``replace-unicode-punctuation.perl`` on one line."""
    for pattern, replacement in _UNICODE_PUNCTUATION:
        line = pattern.sub(replacement, line) if isinstance(pattern, re.Pattern) else line.replace(pattern, replacement)
    return line


@lru_cache(maxsize=4)
def _tokenizer(lang: str) -> MosesTokenizer:
    return MosesTokenizer(lang=lang)


def compound_split(tokens: str) -> str:
    """``s{(\\S)-(\\S)}{$1 ##AT##-##AT## $2}g``: non-overlapping, so "x-y-z" becomes "x ##AT##-##AT## y-z"."""
    return _COMPOUND.sub(r"\1 ##AT##-##AT## \2", tokens)


def paper_tokenize(line: str, lang: str, reference: bool = False) -> str:
    """One line as get_ende_bleu.sh sees it: the hypothesis side, or with ``reference`` the tweaked reference
    side (whose „ was also turned into ")."""
    line = replace_unicode_punctuation(line)
    if reference:
        line = line.replace("„", '"')
    tokens = _tokenizer(lang).tokenize(line, escape=True, return_str=True)
    return compound_split(tokens) if lang == "de" else tokens


def multi_bleu(hyps: list[str], refs: list[str]) -> tuple[float, str, BLEU]:
    """``multi-bleu.perl`` on tokenized lines: case-sensitive, no smoothing (0 when a precision is 0)."""
    bleu = BLEU(tokenize="none", smooth_method="none", force=True)
    result = bleu.corpus_score(hyps, [refs])
    return result.score, str(result), bleu


def tokenized_bleu(hyps: list[str], refs: list[str], lang: str) -> Score:
    """The paper-comparable BLEU: tensor2tensor's get_ende_bleu.sh (see the module docstring)."""
    score, text, bleu = multi_bleu([paper_tokenize(h, lang) for h in hyps], [paper_tokenize(r, lang, reference=True) for r in refs])
    split = ", ##AT## compound splitting" if lang == "de" else ""
    kind = (f"tokenized BLEU as in the paper (get_ende_bleu.sh: replace-unicode-punctuation, Moses tokenizer -l {lang}{split}, "
            "multi-bleu; reference quotes „“” as \"); not comparable with sacreBLEU")
    return Score("bleu", score, text, "multi-bleu.perl equivalent: " + str(bleu.get_signature()), kind)


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


@dataclass
class ScoreRequest:
    """What ``nmt score`` compares: hypotheses (a file, or None for stdin) against a reference file or a
    sacreBLEU test set, with which metrics."""

    ref: Path | None = None
    hyp: Path | None = None
    test_set: str | None = None
    language_pair: str | None = None
    metrics: str = "bleu"  # comma-separated
    tokenized: bool = False  # also the paper's tokenized BLEU
    lang: str | None = None  # target language for --tokenized
    paired_bs: Path | None = None  # baseline hypotheses for the paired bootstrap


@dataclass
class ScoreReport:
    scores: list[Score]
    paired_bootstrap: list[dict]

    def text(self) -> str:
        lines = [f"{r.text}\n  {r.kind}; signature: {r.signature}" for r in self.scores]
        lines += [f"paired bootstrap {s['metric']}: system {s['system']:.2f} (mean {s['mean']:.2f} ± {s['ci']:.2f}) vs baseline "
                  f"{s['baseline']:.2f}, p = {s['p_value']:.4f}" for s in self.paired_bootstrap]
        return "\n".join(lines) + "\n"

    def json(self) -> str:
        return json.dumps({"scores": [r.__dict__ for r in self.scores], "paired_bootstrap": self.paired_bootstrap}, indent=1) + "\n"


def _read_lines(path: Path | None, what: str) -> list[str]:
    if path is None:
        return sys.stdin.read().splitlines()
    if not path.exists():
        raise NmtError(f"{path}: {what} file not found")
    return path.read_text(encoding="utf-8", errors="replace").splitlines()


def score(req: ScoreRequest) -> ScoreReport:
    """``nmt score``: sacreBLEU's metrics (signatures included), the paper's tokenized BLEU when asked, and
    sacreBLEU's paired bootstrap against a baseline."""
    if (req.ref is None) == (req.test_set is None):
        raise NmtError("give the reference as --ref FILE or as --test-set NAME --language-pair SRC-TGT (one of the two)")
    if req.test_set is not None:
        refs, ref_name = test_set_references(req.test_set, req.language_pair), f"{req.test_set} {req.language_pair}"
        target = (req.language_pair or "").rsplit("-", 1)[-1]
    else:
        assert req.ref is not None
        refs, ref_name, target = _read_lines(req.ref, "reference"), str(req.ref), req.ref.suffix.lstrip(".")
    hyps = _read_lines(req.hyp, "hypothesis")
    check_lengths(hyps, refs, str(req.hyp or "stdin"), ref_name)
    names = [m.strip().lower() for m in req.metrics.split(",") if m.strip()]
    results = sacre(hyps, refs, names, req.test_set, req.language_pair)
    if req.tokenized:
        results.append(tokenized_bleu(hyps, refs, req.lang or target or "en"))
    significance = []
    if req.paired_bs is not None:
        baseline = _read_lines(req.paired_bs, "baseline")
        check_lengths(baseline, refs, str(req.paired_bs), ref_name)
        significance = paired_bootstrap(hyps, baseline, refs, names)
    return ScoreReport(results, significance)
