"""A tiny model trained briefly on real text (the shared gettext-en-de corpus) must learn."""

from pathlib import Path

import pytest

from nmt.train.config import RunConfig, TrainConfig
from nmt.train.distributed import Dist
from nmt.train.loop import Trainer
from nmt.data.text import head_of
from tests.helpers import prepare_local


@pytest.mark.slow
def test_tiny_drives_dev_perplexity_down(real_text: Path, tmp_path: Path) -> None:
    corpus = head_of(real_text, tmp_path / "corpus", {"train": 60000, "dev": 1444})
    data = prepare_local(corpus, tmp_path / "data", 4000, workers=2, max_ratio=3.0)
    train = TrainConfig(max_tokens=2048, warmup=400, max_updates=500, validate_every=500, log_every=100, save_minutes=1e9)
    trainer = Trainer(RunConfig(data=data, save_dir=tmp_path / "run", arch="tiny", train=train, cpu=True), Dist())
    before = trainer.validate()["valid_ppl"]
    after = trainer.fit()["valid_ppl"]
    assert before > 1000  # an untrained model is about as good as uniform over 4000 pieces
    assert after < before / 10
