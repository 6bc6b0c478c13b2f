"""A tiny model trained briefly on real text (the shared gettext-en-de corpus) must learn."""

from pathlib import Path

import pytest

from nmt.train.config import RunConfig, TrainConfig
from nmt.data.prepare import PrepareConfig, prepare
from nmt.train.distributed import Dist
from nmt.train.loop import Trainer


@pytest.mark.slow
def test_tiny_drives_dev_perplexity_down(real_text: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for split, n in (("train", 60000), ("dev", 1444)):
        for lang in ("en", "de"):
            lines = (real_text / f"{split}.{lang}").read_text(encoding="utf-8").splitlines()[:n]
            (corpus / f"{split}.{lang}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    data = tmp_path / "data"
    prepare(PrepareConfig(corpus="local", dest=data, src="en", tgt="de", train=str(corpus / "train"),
                          valid=str(corpus / "dev"), vocab_size=4000, workers=2, max_ratio=3.0))
    train = TrainConfig(max_tokens=2048, warmup=400, max_updates=500, validate_every=500, log_every=100, save_minutes=1e9)
    trainer = Trainer(RunConfig(data=data, save_dir=tmp_path / "run", arch="tiny", train=train, cpu=True), Dist())
    before = trainer.validate()["valid_ppl"]
    after = trainer.fit()["valid_ppl"]
    assert before > 1000  # an untrained model is about as good as uniform over 4000 pieces
    assert after < before / 10
