"""Fixtures shared by the whole suite: the committed fixture corpus and its vocabulary, real parallel text
(wherever it can be had), prepared datasets of both, and the thread count kept the same for every test."""

import os
import random
from pathlib import Path

import pytest

from nmt.data.text import head_of
from nmt.kernels import native

# The C library of decoding is used only on x86-64 CPUs (SSE4.2 or newer) unless NMT_NATIVE=1 (nmt.kernels.native): the
# suite tests it on every CPU, and its subprocesses (nmt translate, nmt serve) inherit the setting.
os.environ.setdefault("NMT_NATIVE", "1")
from tests.helpers import OLDER_TARGETS, prepare_local, use_native_target

# Real EN-DE text for the tests that need more than tests/fixtures: the shared corpus beside the checkout
# (or where NMT_SHARED_DATA points), else the gettext catalogs installed on this machine, as the quick start
# builds its corpus. A test skipped for want of it says so with this prefix; .ci/run fails on any such skip.
NO_CORPUS = "no corpus:"
SHARED = Path(os.environ["NMT_SHARED_DATA"]) if "NMT_SHARED_DATA" in os.environ else Path(__file__).resolve().parents[2] / "shared" / "data"
GETTEXT_MIN_PAIRS = 10_000  # the most a test takes is the learning test's; it needs thousands of pairs


@pytest.fixture(autouse=True)
def _same_thread_count_for_every_test() -> object:
    """Tests compare runs in this process with runs in subprocesses; a library that changes torch's thread
    count (a shared OpenMP runtime) must not change the arithmetic of the tests after it."""
    import torch

    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def real_text(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of real EN-DE text, {train,dev,test}.{en,de} line-aligned: the shared corpus's gettext-en-de
    when present, else built from the gettext catalogs installed here (train shuffled with a fixed seed, so
    that its first lines come from many programs). Skips, saying what to install, when neither has enough."""
    shared = SHARED / "gettext-en-de"
    if (shared / "train.en").exists():
        return shared
    from nmt.data.gettext_corpus import build
    from nmt.errors import NmtError

    try:
        splits = build("en", "de").pairs
    except NmtError:
        splits = {"train": []}
    if len(splits["train"]) < GETTEXT_MIN_PAIRS:
        pytest.skip(f"{NO_CORPUS} neither the shared corpus ({shared}; set NMT_SHARED_DATA) nor {GETTEXT_MIN_PAIRS:,} pairs of installed "
                    f"German gettext catalogs (found {len(splits['train']):,}; install language packs, e.g. Debian's *-l10n-de packages)")
    random.Random(0).shuffle(splits["train"])
    out = tmp_path_factory.mktemp("gettext-en-de")
    for split, name in (("train", "train"), ("valid", "dev"), ("test", "test")):
        for side, lang in enumerate(("en", "de")):
            (out / f"{name}.{lang}").write_text("".join(pair[side] + "\n" for pair in splits[split]), encoding="utf-8")
    return out


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory: pytest.TempPathFactory, real_text: Path) -> Path:
    """The first 3000 training pairs and 200 dev/test pairs of ``real_text``, as local files."""
    return head_of(real_text, tmp_path_factory.mktemp("corpus"), {"train": 3000, "dev": 200, "test": 200})


@pytest.fixture(scope="session")
def small_data(tmp_path_factory: pytest.TempPathFactory, small_corpus: Path) -> Path:
    """A prepared dataset (vocabulary 1000) made from ``small_corpus``. Shared by the whole session: tests must
    only read it."""
    return prepare_local(small_corpus, tmp_path_factory.mktemp("data-bin") / "small", 1000)


# ------------------------------------------------------------------ the committed fixture corpus (unit tests)

FIXTURES = Path(__file__).resolve().parent / "fixtures"
FIXTURE_VOCAB = 400  # byte fallback takes 256 pieces and the specials 4; the text supports up to ~4400


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    """The hand-written EN-DE corpus of tests/fixtures: train (241 pairs), dev (30) and test (31), .en/.de."""
    return FIXTURES


@pytest.fixture(scope="session")
def fixture_spm(tmp_path_factory: pytest.TempPathFactory, fixture_dir: Path) -> Path:
    """A joint 400-piece SentencePiece model trained with ``nmt.data.spm.train_spm`` on the fixture's
    normalised training text (both sides), as ``nmt prepare`` would; returns the ``.model`` path."""
    from nmt.data.spm import train_spm
    from nmt.data.text import normalise

    folder = tmp_path_factory.mktemp("spm")
    sample = folder / "sample.txt"
    lines = [normalise(line, lang) for lang in ("en", "de")
             for line in (fixture_dir / f"train.{lang}").read_text(encoding="utf-8").splitlines()]
    sample.write_text("".join(line + "\n" for line in lines if line), encoding="utf-8")
    return train_spm(sample, folder / "fixture", FIXTURE_VOCAB, threads=1)


@pytest.fixture(scope="session")
def fixture_data(tmp_path_factory: pytest.TempPathFactory, fixture_dir: Path) -> Path:
    """The fixture corpus prepared by ``nmt prepare local`` (400 pieces, one worker). Shared by the whole
    session: tests must only read it."""
    return prepare_local(fixture_dir, tmp_path_factory.mktemp("fixture-data") / "data", FIXTURE_VOCAB)


# ------------------------------------------------------------------ the two paths of a decoding step

@pytest.fixture(params=["native", *OLDER_TARGETS])
def native_target(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test using it runs with the C library built for this CPU, then for each older x86-64 level it can
    run (``use_native_target``)."""
    use_native_target(request.param, monkeypatch)
    return request.param



@pytest.fixture(params=["C", "torch"])
def step_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test using it runs twice: steps through the C library (``nmt.kernels.native``: attention and
    projections), then through torch's calls and oneDNN's products, the path of machines without a C compiler."""
    if request.param == "torch":
        monkeypatch.setattr(native, "_loaded", [None])
    else:
        use_native_target("native", monkeypatch)
    return request.param
