"""The GPU campaign (bash bench/gpu.sh campaign OUT) runs end to end in its CPU smoke mode, so that the
minutes of a lent GPU go to measuring, not to debugging the script."""

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_campaign_runs_end_to_end_in_smoke_mode(real_text: Path, tmp_path: Path) -> None:
    out = tmp_path / "campaign"
    result = subprocess.run(["bash", "bench/gpu.sh", "campaign", str(out), "--smoke", "--corpus", str(real_text)], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = (out / "summary.md").read_text()
    speed = [line for line in summary.splitlines() if line.startswith("| tiny |")]
    assert len(speed) == 2 and all("failed" not in line for line in speed), summary  # padded and packed both trained
    assert "relative difference 0" in summary or "relative difference" in summary
    assert "BLEU" in (out / "score.txt").read_text() and (out / "learning-curve.svg").read_text().startswith("<svg")
    decode = (out / "decode.md").read_text()
    assert "nmt fp32" in decode and "CTranslate2 float32" in decode, decode
    assert (out / "train.jsonl").exists()
