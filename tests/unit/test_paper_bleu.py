"""The paper's tokenized BLEU, step by step as tensor2tensor's get_ende_bleu.sh runs it.

Expected tokenisations were produced by the Moses scripts of June 2017 (the paper's): replace-unicode-
punctuation.perl, tokenizer.perl -l de, the ##AT## one-liner, multi-bleu.perl; and checked by hand.
"""

import math
import subprocess
import sys
from pathlib import Path

import pytest

from nmt.evaluate import compound_split, multi_bleu, paper_tokenize, replace_unicode_punctuation, tokenized_bleu

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
