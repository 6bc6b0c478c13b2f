"""The README's first command, end to end: recipes/quickstart.sh on the catalogs installed here."""

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# An untrained or barely trained model scores about 0 (it repeats frequent pieces); the quick start's
# tiny model reaches well above this in its 1200 updates.
MIN_BLEU = 5.0


@pytest.mark.slow
def test_quickstart_trains_and_scores(tmp_path: Path) -> None:
    env = {**os.environ, "DATA": str(tmp_path / "data"), "RUN": str(tmp_path / "run")}
    r = subprocess.run(["bash", str(ROOT / "recipes" / "quickstart.sh")], capture_output=True, text=True, env=env, timeout=1500)
    assert r.returncode == 0, r.stderr[-3000:]
    bleu = float(re.search(r"^BLEU = ([\d.]+)", r.stdout, re.M).group(1))
    assert bleu > MIN_BLEU, r.stdout
    hyp = (tmp_path / "run" / "test.hyp").read_text(encoding="utf-8").splitlines()
    assert len(hyp) == len((tmp_path / "data" / "test.en").read_text(encoding="utf-8").splitlines())
    pairs = [line.split("\t") for line in r.stdout.splitlines()[-3:]]
    assert [p[0] for p in pairs] == ["Open the file.", "The document could not be saved.", "Do you want to quit without saving?"]
    assert all(len(p) == 2 and p[1].strip() for p in pairs)  # each came back translated
