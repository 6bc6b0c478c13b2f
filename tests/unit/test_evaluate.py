"""nmt.evaluate: sacreBLEU scores with signatures, line checks, and paired bootstrap resampling.

(tokenized_bleu / paper_tokenize are not tested here: they are being rewritten.)
"""

from pathlib import Path

import pytest
import sacrebleu
from sacrebleu.metrics import BLEU, CHRF, TER
from sacrebleu.significance import PairedTest

from nmt.evaluate import check_lengths, paired_bootstrap, sacre
from nmt.errors import NmtError


@pytest.fixture(scope="module")
def refs(fixture_dir: Path) -> list[str]:
    """The fixture's German test references, untouched (an empty line among them)."""
    return (fixture_dir / "test.de").read_text(encoding="utf-8").splitlines()


def drop_last_word(lines: list[str], every: int = 2) -> list[str]:
    """A worse system: the last word of every ``every``-th line left out."""
    return [" ".join(line.split()[:-1]) if i % every == 0 else line for i, line in enumerate(lines)]


def test_sacre_equals_sacrebleu(refs: list[str], fixture_dir: Path) -> None:
    hyps = drop_last_word(refs)
    scores = sacre(hyps, refs, ["bleu", "chrf", "ter"])
    expected = [sacrebleu.corpus_bleu(hyps, [refs]), sacrebleu.corpus_chrf(hyps, [refs]), sacrebleu.corpus_ter(hyps, [refs])]
    assert [s.metric for s in scores] == ["bleu", "chrf", "ter"]
    for score, ref in zip(scores, expected):
        assert score.score == ref.score and score.text == str(ref)
        assert score.kind == "sacrebleu (detokenized)"
    assert 0 < scores[0].score < 100 and 0 < scores[2].score
    bleu = BLEU()
    bleu.corpus_score(hyps, [refs])
    assert scores[0].signature == str(bleu.get_signature()) and "nrefs:1" in scores[0].signature
    assert scores[1].signature.startswith("nrefs:1|case:mixed|eff:yes|nc:6|nw:0")
    assert sacre(refs, refs, ["bleu"])[0].score == pytest.approx(100.0)
    # Scores of the English source against German references: low, but still sacreBLEU's number.
    en = (fixture_dir / "test.en").read_text(encoding="utf-8").splitlines()
    assert sacre(en, refs, ["chrf"])[0].score == sacrebleu.corpus_chrf(en, [refs]).score


def test_metric_order_follows_the_request(refs: list[str]) -> None:
    assert [s.metric for s in sacre(refs, refs, ["ter", "bleu"])] == ["ter", "bleu"]
    assert sacre(refs, refs, []) == []


def test_unknown_metric(refs: list[str]) -> None:
    with pytest.raises(NmtError) as err:
        sacre(refs, refs, ["bleu", "meteor"])
    assert str(err.value) == "unknown metric 'meteor' in --metrics (known: bleu, chrf, ter)"


def test_check_lengths() -> None:
    check_lengths(["a", "b"], ["x", "y"], "hyp.txt", "ref.de")
    check_lengths([], [], "hyp.txt", "ref.de")
    with pytest.raises(NmtError) as err:
        check_lengths(["a", "b"], ["x", "y", "z"], "hyp.txt", "ref.de")
    assert str(err.value) == "hyp.txt has 2 lines but ref.de has 3; they must be line-aligned"
    with pytest.raises(NmtError, match="^stdin has 4 lines but ref.de has 3; they must be line-aligned$"):
        check_lengths(["a"] * 4, ["x"] * 3, "stdin", "ref.de")


def test_paired_bootstrap_equals_sacrebleus_test(refs: list[str]) -> None:
    baseline = drop_last_word(refs)
    system = drop_last_word(refs, every=3)
    out = paired_bootstrap(system, baseline, refs, ["bleu", "chrf", "ter"], samples=200)
    assert [r["metric"] for r in out] == ["bleu", "chrf", "ter"]
    _, expected = PairedTest([("baseline", baseline), ("system", system)], {"BLEU": BLEU(), "chrF": CHRF(), "TER": TER()},
                             [refs], test_type="bs", n_samples=200)()
    for r, name in zip(out, ("BLEU", "chrF2", "TER")):
        base, ours = expected[name]
        assert (r["baseline"], r["system"], r["p_value"], r["mean"], r["ci"]) == (base.score, ours.score, ours.p_value, ours.mean, ours.ci)
    assert out[0]["baseline"] == sacre(baseline, refs, ["bleu"])[0].score
    assert out[0]["system"] == sacre(system, refs, ["bleu"])[0].score


def test_paired_bootstrap_significance(refs: list[str]) -> None:
    baseline = drop_last_word(refs)
    # A clearly better system (the references themselves): significant.
    better = paired_bootstrap(refs, baseline, refs, ["bleu", "chrf"])
    assert all(r["system"] > r["baseline"] and r["p_value"] < 0.01 for r in better)
    # A system that trades one sentence's error for another's (fixes line 2, truncates line 3): of about
    # the same quality, and far from significant.
    # (sacreBLEU gives identical systems the smallest p-value, 1/(samples+1), on purpose: a zero difference
    # is not attributed to chance; so "not significant" is tested on two different outputs of equal quality.)
    traded = list(baseline)
    traded[2], traded[3] = refs[2], " ".join(refs[3].split()[:-1])
    for r in paired_bootstrap(traded, baseline, refs, ["bleu", "chrf"]):
        assert abs(r["system"] - r["baseline"]) < 1.0
        assert r["p_value"] > 0.2
