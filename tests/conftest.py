import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
if not SHARED.exists():  # CI clones next to shared/ as well; allow an override
    SHARED = Path(os.environ.get("NMT_SHARED_DATA", SHARED))


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
def shared_data() -> Path:
    if not (SHARED / "gettext-en-de").exists():
        pytest.fail(f"shared corpus not found at {SHARED} (set NMT_SHARED_DATA)")
    return SHARED


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """The first 3000 training pairs and 200 dev/test pairs of the shared EN-DE corpus, as local files."""
    out = tmp_path_factory.mktemp("corpus")
    for split, n in (("train", 3000), ("dev", 200), ("test", 200)):
        for lang in ("en", "de"):
            lines = (shared_data / "gettext-en-de" / f"{split}.{lang}").read_text(encoding="utf-8").splitlines()[:n]
            (out / f"{split}.{lang}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


@pytest.fixture(scope="session")
def small_data(tmp_path_factory: pytest.TempPathFactory, small_corpus: Path) -> Path:
    """A prepared dataset (vocabulary 1000) made from ``small_corpus``."""
    from nmt.data.prepare import PrepareConfig, prepare

    dest = tmp_path_factory.mktemp("data-bin") / "small"
    prepare(PrepareConfig(corpus="local", dest=dest, src="en", tgt="de", train=str(small_corpus / "train"),
                          valid=str(small_corpus / "dev"), test=str(small_corpus / "test"), vocab_size=1000, workers=1))
    return dest


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
    """The fixture corpus prepared by ``nmt.data.prepare.prepare`` (local corpus, 400 pieces, one worker).

    Shared by the whole session: tests must only read it.
    """
    from nmt.data.prepare import PrepareConfig, prepare

    dest = tmp_path_factory.mktemp("fixture-data") / "data"
    prepare(PrepareConfig(corpus="local", dest=dest, src="en", tgt="de", train=str(fixture_dir / "train"),
                          valid=str(fixture_dir / "dev"), test=str(fixture_dir / "test"), vocab_size=FIXTURE_VOCAB, workers=1))
    return dest
