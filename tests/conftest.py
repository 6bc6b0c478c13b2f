import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
if not SHARED.exists():  # CI clones next to shared/ as well; allow an override
    SHARED = Path(os.environ.get("NMT_SHARED_DATA", SHARED))


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
