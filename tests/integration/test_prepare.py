import html
import io
import json
import subprocess
import sys
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

from nmt import atomic
from nmt.data import corpora
from nmt.data.dataset import ParallelDataset
from nmt.data.download import download
from nmt.data.prepare import PrepareConfig, prepare
from nmt.data.text import normalise
from nmt.errors import NmtError
from tests.mirror import Mirror, serve


def tgz(members: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in members.items():
            data = text.encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def sgml(lines: list[str], lang: str) -> str:
    segs = "".join(f'<seg id="{i}">{html.escape(t)}</seg>\n' for i, t in enumerate(lines, 1))
    return f'<srcset setid="newstest" srclang="any">\n<doc sysid="ref" docid="d1" genre="news" origlang="en">\n{segs}</doc>\n</srcset>\n'


@pytest.fixture(scope="module")
def wmt_mirror(real_text: Path):
    """Tiny archives with the members and layout of the real WMT14 EN-DE downloads."""
    en = (real_text / "train.en").read_text(encoding="utf-8").splitlines()
    de = (real_text / "train.de").read_text(encoding="utf-8").splitlines()
    take = lambda a, b: ("\n".join(en[a:b]) + "\n", "\n".join(de[a:b]) + "\n")  # noqa: E731
    m = Mirror()
    parts = {
        "/wmt13/training-parallel-europarl-v7.tgz": ("training/europarl-v7.de-en", 0, 400),
        "/wmt13/training-parallel-commoncrawl.tgz": ("commoncrawl.de-en", 400, 800),
        "/wmt14/training-parallel-nc-v9.tgz": ("training/news-commentary-v9.de-en", 800, 1200),
    }
    for path, (stem, a, b) in parts.items():
        e, d = take(a, b)
        m.files[path] = tgz({f"{stem}.en": e, f"{stem}.de": d})
    m.files["/wmt13/test.tgz"] = tgz({"test/newstest2013-src.en.sgm": sgml(en[1200:1250], "en"), "test/newstest2013-src.de.sgm": sgml(de[1200:1250], "de")})
    m.files["/wmt14/test-full.tgz"] = tgz({"test-full/newstest2014-deen-src.en.sgm": sgml(en[1250:1300], "en"), "test-full/newstest2014-deen-ref.de.sgm": sgml(de[1250:1300], "de")})
    m.files["/wmt14/test-filtered.tgz"] = tgz({"test/newstest2014-deen-src.en.sgm": sgml(en[1250:1290], "en"), "test/newstest2014-deen-ref.de.sgm": sgml(de[1250:1290], "de")})
    m.expected = {"train": (en[:1200], de[:1200]), "test": (en[1250:1300], de[1250:1300]), "test-filtered": (en[1250:1290], de[1250:1290])}
    with serve(m):
        yield m


@pytest.fixture
def wmt_with_fake_md5(monkeypatch: pytest.MonkeyPatch, wmt_mirror: Mirror):
    """The real corpus entry, with the published md5 of each test archive replaced by our tiny archive's."""
    import hashlib

    entry = corpora.WMT["wmt14-en-de"]
    served = lambda a: wmt_mirror.files["/" + a.url.split("/", 3)[3]]  # noqa: E731
    archives = tuple(replace(a, md5=hashlib.md5(served(a)).hexdigest()) if a.md5 else a for a in entry.archives)
    monkeypatch.setitem(corpora.WMT, "wmt14-en-de", replace(entry, archives=archives, vocab_size=600))
    return wmt_mirror


def test_prepare_wmt_from_mirror_round_trips(wmt_with_fake_md5: Mirror, tmp_path: Path) -> None:
    m = wmt_with_fake_md5
    dest = tmp_path / "wmt"
    manifest = prepare(PrepareConfig(corpus="wmt14-en-de", dest=dest, mirror=m.url, workers=1, max_ratio=9.0, max_len=1000, character_coverage=1.0))
    assert set(manifest["splits"]) == {"train", "valid", "test", "test-filtered"}
    proc = spm.SentencePieceProcessor(model_file=str(dest / "spm.model"))
    for split, (en, de) in m.expected.items():
        data = ParallelDataset(dest, split)
        kept = [(normalise(a, "en"), normalise(b, "de")) for a, b in zip(en, de)]
        if split == "train":
            kept = [(a, b) for a, b in kept if a and b]
        assert len(data) == len(kept)
        for i, (a, b) in enumerate(kept):
            src, tgt = data[i]
            assert proc.decode(src.tolist()) == a
            assert proc.decode(tgt.tolist()) == b
    # Test sets are also kept as the untouched reference text, both versions.
    assert (dest / "test.de").read_text(encoding="utf-8").splitlines() == m.expected["test"][1]
    assert len((dest / "test-filtered.en").read_text(encoding="utf-8").splitlines()) == 40
    # Re-running finds everything up to date.
    before = len(m.requests)
    again = prepare(PrepareConfig(corpus="wmt14-en-de", dest=dest, mirror=m.url, workers=1, max_ratio=9.0, max_len=1000, character_coverage=1.0))
    assert again.get("skipped") and len(m.requests) == before
    # Archives a user already has (--raw-dir): no download at all, the same dataset.
    offline = prepare(PrepareConfig(corpus="wmt14-en-de", dest=tmp_path / "offline", raw_dir=dest / "raw", workers=1,
                                    max_ratio=9.0, max_len=1000, character_coverage=1.0))
    assert len(m.requests) == before
    assert offline["splits"] == manifest["splits"]


def test_published_md5_mismatch_is_refused(wmt_mirror: Mirror, tmp_path: Path) -> None:
    with pytest.raises(NmtError, match="md5 .* does not match the published"):
        prepare(PrepareConfig(corpus="wmt14-en-de", dest=tmp_path / "x", mirror=wmt_mirror.url, workers=1))
    assert not list((tmp_path / "x" / "raw").glob("test.tgz*"))


def test_download_resumes_with_range(tmp_path: Path) -> None:
    m = Mirror()
    payload = bytes(range(256)) * 4000
    m.files["/big.bin"] = payload
    m.cut_once.add("/big.bin")
    with serve(m):
        out = download(f"{m.url}/big.bin", tmp_path / "big.bin", md5=None, retries=2, backoff=0.01)
    assert out.read_bytes() == payload
    assert m.requests[0][1] is None and m.requests[1][1] == f"bytes={len(payload) // 2}-"
    assert not (tmp_path / "big.bin.part").exists()


def test_unreachable_mirror_fails_after_retries(tmp_path: Path) -> None:
    with pytest.raises(NmtError, match=r"cannot download .* after 3 tries"):
        download("http://127.0.0.1:9/nothing.tgz", tmp_path / "n.tgz", retries=2, backoff=0.01, timeout=2)
    assert not (tmp_path / "n.tgz").exists()


def test_corrupt_archive_and_path_escape_fail_cleanly(tmp_path: Path) -> None:
    from nmt.data.download import extract

    good = tgz({"a/b.txt": "x\n" * 1000})
    (tmp_path / "trunc.tgz").write_bytes(good[: len(good) // 2])
    with pytest.raises(NmtError, match="corrupt or truncated"):
        extract(tmp_path / "trunc.tgz", tmp_path / "out1")
    assert not (tmp_path / "out1").exists() and not atomic.temporary(tmp_path / "out1").exists()
    (tmp_path / "evil.tgz").write_bytes(tgz({"../escape.txt": "boo\n"}))
    with pytest.raises(NmtError, match="outside the extraction folder"):
        extract(tmp_path / "evil.tgz", tmp_path / "out2")
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "out2").exists()


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nmt", *args], capture_output=True, text=True)


def test_local_errors_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "t.en").write_text("a\nb\nc\n")
    (tmp_path / "t.de").write_text("x\ny\n")
    r = run_cli("prepare", "local", "--train", str(tmp_path / "t"), "--src", "en", "--tgt", "de", "--dest", str(tmp_path / "o"), "--workers", "1")
    assert r.returncode == 2 and f"{tmp_path / 't.en'} has 3 lines but {tmp_path / 't.de'} has 2" in r.stderr
    assert r.stderr.count("\n") == 1
    assert not list((tmp_path / "o").glob("*.bin"))
    r = run_cli("prepare", "local", "--train", str(tmp_path / "missing"), "--src", "en", "--tgt", "de", "--dest", str(tmp_path / "o"))
    assert r.returncode == 2 and "missing.en: file not found" in r.stderr
    r = run_cli("prepare", "wmt99-xx")
    assert r.returncode == 2 and "unknown corpus 'wmt99-xx'; known corpora: gettext-en-de" in r.stderr


def test_unreachable_vocabulary_size(small_corpus: Path, tmp_path: Path) -> None:
    r = run_cli("prepare", "local", "--train", str(small_corpus / "dev"), "--src", "en", "--tgt", "de",
                "--vocab-size", "60000", "--dest", str(tmp_path / "v"), "--workers", "1")
    assert r.returncode == 2 and "--vocab-size 60000 cannot be reached" in r.stderr


def test_binarised_ids_equal_sentencepiece(small_data: Path) -> None:
    proc = spm.SentencePieceProcessor(model_file=str(small_data / "spm.model"))
    data = ParallelDataset(small_data, "test")
    raw_en = (small_data / "test.en").read_text(encoding="utf-8").splitlines()
    manifest = json.loads((small_data / "manifest.json").read_text())
    assert manifest["dtype"] == "uint16" and manifest["splits"]["test"]["pairs"] == len(raw_en) == len(data)
    for i in range(len(data)):
        assert data[i][0].tolist() == proc.encode(normalise(raw_en[i], "en"))
    assert isinstance(data.src.tokens, np.memmap)


def test_gettext_corpus_splits_share_no_catalog(tmp_path: Path) -> None:
    manifest = prepare(PrepareConfig(corpus="gettext-en-de", dest=tmp_path / "g", workers=1))
    cats = manifest["catalogs"]
    assert cats["train"] and cats["valid"] and cats["test"]
    assert not set(cats["train"]) & set(cats["valid"]) and not set(cats["train"]) & set(cats["test"]) and not set(cats["valid"]) & set(cats["test"])
    assert manifest["splits"]["train"]["pairs"] > 1000
    def pairs(path: Path, split: str) -> set[tuple[str, str]]:
        return set(zip(*((path / f"{split}.{lang}").read_text(encoding="utf-8").splitlines() for lang in ("en", "de"))))

    train = pairs(tmp_path / "g" / "work" / "gettext", "train")
    test = pairs(tmp_path / "g", "test")
    assert not train & test


def test_reusing_a_sentencepiece_model(small_data: Path, small_corpus: Path, tmp_path: Path) -> None:
    dest = tmp_path / "reuse"
    manifest = prepare(PrepareConfig(corpus="local", dest=dest, src="en", tgt="de", train=str(small_corpus / "dev"),
                                     spm_model=small_data / "spm.model", workers=1))
    assert (dest / "spm.model").read_bytes() == (small_data / "spm.model").read_bytes()
    assert manifest["vocab"]["size"] == 1000
    proc = spm.SentencePieceProcessor(model_file=str(small_data / "spm.model"))
    first = (small_corpus / "dev.en").read_text(encoding="utf-8").splitlines()[0]
    assert ParallelDataset(dest, "train")[0][0].tolist() == proc.encode(normalise(first, "en"))


def test_length_ratio_is_on_words_and_spares_short_segments(tmp_path: Path) -> None:
    """Moses' clean-corpus-n ratio, on words: "File" → "Datei" (one word, and more subwords on one side) and
    other short messages survive; a long sentence against a one-word "translation" does not."""
    pairs = [("File", "Datei"), ("Print preview", "Druckvorschau"), ("Open recent", "Zuletzt geöffnete Dateien öffnen"),
             ("The document could not be saved because the disk is full.", "Voll."),
             ("Could not set log callback.", "Die Protokollierung der Rückrufe kann nicht festgelegt werden.")]
    pairs += [(f"Open file number {i}.", f"Datei Nummer {i} öffnen.") for i in range(60)]
    for lang, side in (("en", 0), ("de", 1)):
        (tmp_path / f"t.{lang}").write_text("".join(p[side] + "\n" for p in pairs), encoding="utf-8")
    manifest = prepare(PrepareConfig(corpus="local", dest=tmp_path / "d", src="en", tgt="de", train=str(tmp_path / "t"),
                                     vocab_size=330, workers=1))
    assert manifest["splits"]["train"]["dropped"] == {"length ratio": 2}  # the 11:1 pair and the 5:8 one (ratio 1.6)
    data = ParallelDataset(tmp_path / "d", "train")
    proc = spm.SentencePieceProcessor(model_file=str(tmp_path / "d" / "spm.model"))
    kept = [proc.decode(data[i][0].tolist()) for i in range(len(data))]
    assert kept[:3] == ["File", "Print preview", "Open recent"]
    pieces = sorted((len(proc.encode("File")), len(proc.encode("Datei"))))
    assert pieces[1] / pieces[0] > 1.5  # a ratio of subwords would have dropped "File" → "Datei"
    again = prepare(PrepareConfig(corpus="local", dest=tmp_path / "d2", src="en", tgt="de", train=str(tmp_path / "t"),
                                  vocab_size=330, workers=1, ratio_min_words=10))
    assert again["splits"]["train"]["dropped"] == {"length ratio": 1}
