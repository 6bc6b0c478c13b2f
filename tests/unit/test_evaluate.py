"""nmt.evaluate: sacreBLEU scores with signatures, line checks, paired bootstrap resampling, and the paper's
tokenized BLEU step by step as tensor2tensor's get_ende_bleu.sh runs it.

Expected tokenisations of the paper's BLEU were produced by the Moses scripts of June 2017 (the paper's):
replace-unicode-punctuation.perl, tokenizer.perl -l de, the ##AT## one-liner, multi-bleu.perl; and checked
by hand.
"""

import math
import subprocess
import sys
from pathlib import Path

import pytest
import sacrebleu
from sacrebleu.metrics import BLEU, CHRF, TER
from sacrebleu.significance import PairedTest

from nmt.evaluate import (check_lengths, compound_split, multi_bleu, paired_bootstrap, paper_tokenize,
                          replace_unicode_punctuation, sacre, tokenized_bleu)
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


LINES = [
    "„Das ist ein Test“, sagte er – und ging… E-Mail-Adresse: x-y-z (3,5 %) Nr. 5 im Jan. 2014.",
    "Kann nicht geladen werden: %s.",
    "Er sagte: \"Geht's?\" [sic] & <b>",
    "„Drag-and-Drop“ funktioniert – nicht…",
]
HYPOTHESIS_SIDE = [
    "„ Das ist ein Test &quot; , sagte er – und ging ... E ##AT##-##AT## Mail ##AT##-##AT## Adresse : x ##AT##-##AT## y-z ( 3,5 % ) Nr. 5 im Jan . 2014 .",
    "Kann nicht geladen werden : % s.",
    "Er sagte : &quot; Geht &apos; s ? &quot; &#91; sic &#93; &amp; &lt; b &gt;",
    "„ Drag ##AT##-##AT## and ##AT##-##AT## Drop &quot; funktioniert – nicht ...",
]
# The tweaked reference also turns „ into ": the one difference between the two sides.
REFERENCE_SIDE = [h.replace("„", "&quot;") for h in HYPOTHESIS_SIDE]


def test_replace_unicode_punctuation_is_the_moses_script() -> None:
    assert replace_unicode_punctuation("“Hallo”, sagte sie…") == '"Hallo", sagte sie...'
    assert replace_unicode_punctuation("„Hallo“") == '„Hallo"'  # „ is not in the script
    assert replace_unicode_punctuation("Ende。  Neu（１）") == 'Ende. Neu(")'  # the 2017 script maps １ to "
    assert replace_unicode_punctuation("100％ － it’s") == "100% － it's"  # fullwidth minus is not in it either


def test_compound_split_is_the_perl_one_liner() -> None:
    assert compound_split("x-y-z") == "x ##AT##-##AT## y-z"  # non-overlapping, like Perl's s///g
    assert compound_split("E-Mail - Adresse") == "E ##AT##-##AT## Mail - Adresse"
    assert compound_split("ü-ö") == "ü ##AT##-##AT## ö"
    assert compound_split("a\u00a0-b") == "a\u00a0 ##AT##-##AT## b"  # Perl's \S includes a no-break space


@pytest.mark.parametrize("i", range(len(LINES)))
def test_both_sides_tokenise_as_the_scripts(i: int) -> None:
    assert paper_tokenize(LINES[i], "de") == HYPOTHESIS_SIDE[i]
    assert paper_tokenize(LINES[i], "de", reference=True) == REFERENCE_SIDE[i]


def test_bleu_computed_by_hand() -> None:
    """Hypothesis and reference are the same sentence; only the hypothesis keeps its „, so 1 of 9 tokens
    differs, at the start: 8/9 unigrams, 7/8 bigrams, 6/7 trigrams, 5/6 4-grams match, BP = 1."""
    line = "„Das ist gut“, sagte er."
    assert paper_tokenize(line, "de") == "„ Das ist gut &quot; , sagte er ."
    assert paper_tokenize(line, "de", reference=True) == "&quot; Das ist gut &quot; , sagte er ."
    expected = 100 * (8 / 9 * 7 / 8 * 6 / 7 * 5 / 6) ** 0.25
    assert tokenized_bleu([line], [line], "de").score == pytest.approx(expected, abs=1e-9)
    assert round(expected, 2) == 86.33  # what multi-bleu.perl prints for these two files
    # multi-bleu.perl gives 0, not a smoothed value, when an n-gram order has no match; and a brevity penalty.
    assert multi_bleu(["a b"], ["c d e f"])[0] == 0.0
    assert multi_bleu(["a b c d"], ["a b c d e f"])[0] == pytest.approx(100 * math.exp(1 - 6 / 4))


def test_score_cli_prints_the_paper_number(tmp_path: Path) -> None:
    (tmp_path / "ref.de").write_text("„Das ist gut“, sagte er.\n", encoding="utf-8")
    (tmp_path / "hyp.de").write_text("„Das ist gut“, sagte er.\n", encoding="utf-8")
    r = subprocess.run([sys.executable, "-m", "nmt", "score", "--ref", str(tmp_path / "ref.de"), "--hyp", str(tmp_path / "hyp.de"),
                        "--tokenized"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "BLEU = 86.33 88.9/87.5/85.7/83.3" in r.stdout and "get_ende_bleu.sh" in r.stdout


def test_score_against_a_sacrebleu_test_set(tmp_path: Path) -> None:
    """-t/-l take the references from sacreBLEU's cache and put the test set into the signature."""
    cache = tmp_path / "sacrebleu" / "wmt14" / "full"
    cache.mkdir(parents=True)
    refs = ["Das ist ein Test.", "Noch einer."]
    for field, lines in (("src", ["This is a test.", "Another one."]), ("ref", refs), ("docid", ["d", "d"]),
                         ("genre", ["news", "news"]), ("origlang", ["en", "en"])):
        (cache / f"wmt14_full.en-de.{field}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    env = {"SACREBLEU": str(tmp_path / "sacrebleu"), "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-m", "nmt", "score", "-t", "wmt14/full", "-l", "en-de"], input="Das ist ein Test.\nNoch einer.\n",
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("BLEU = 100.00") and "test:wmt14/full|lang:en-de" in r.stdout
    r = subprocess.run([sys.executable, "-m", "nmt", "score", "-t", "wmt14/full", "-l", "en-de"], input="Nur eine.\n",
                       capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "stdin has 1 lines but wmt14/full en-de has 2" in r.stderr
    r = subprocess.run([sys.executable, "-m", "nmt", "score", "-t", "wmt14/full", "-l", "xx-yy"], input="x\n", capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "--language-pair xx-yy" in r.stderr and r.stderr.count("\n") == 1
