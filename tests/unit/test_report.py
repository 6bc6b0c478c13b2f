"""nmt.train.report: the figures of a log line from the summed statistics of a window of updates."""

import errno
import json
import math
from pathlib import Path

import pytest
import torch

from nmt.errors import NmtError
from nmt.train import report
from nmt.train.report import Reporter, Stats, window_record
from tests.helpers import fail_writes, small_disk


def window(**values: float) -> Stats:
    return Stats(**values)


def test_stats_add_up_and_travel_as_one_vector() -> None:
    a, b = Stats(loss=1.0, tgt_tokens=3, oom=1), Stats(loss=2.5, slots=7, save=1)
    total = a + b
    assert total == Stats(loss=3.5, tgt_tokens=3, slots=7, oom=1, save=1)
    vector = total.vector(torch.device("cpu"))
    assert vector.dtype == torch.float64 and Stats.of(vector.tolist()) == total


def test_figures_of_a_window() -> None:
    w = window(loss=2000.0, nll=1500.0, tgt_tokens=1000, src_tokens=900, slots=2500, skipped=1)
    r = window_record(w, seconds=4.0, update=100, epoch=2, updates_in_window=10, remaining_updates=900, lr=1e-3,
                      flops_per_token=1e9, peak=1e12, world=2)
    assert r["loss"] == 2.0 and r["ppl"] == pytest.approx(math.exp(1.5)) and r["tgt_tok_s"] == 250.0
    assert r["pad_efficiency"] == pytest.approx(1900 / 2500) and r["skipped"] == 1
    assert r["mfu"] == pytest.approx(250 * 1e9 / 2e12) and r["tgt_tokens_per_update"] == 100.0
    assert r["eta_min"] == pytest.approx(900 * 0.4 / 60)  # 0.4 s per update
    assert "mfu" not in window_record(w, 4.0, 100, 2, 10, 900, 1e-3, 1e9, None, 2)


def test_eta_takes_whichever_limit_comes_first() -> None:
    """A 25-minute --max-time run with 100k updates left must not promise 3.3e4 minutes."""
    w = window(tgt_tokens=1000)
    slow = window_record(w, 10.0, 10, 1, 10, 100_000, 1e-3, 1e9, None, 1, seconds_left=600.0)
    assert slow["eta_min"] == pytest.approx(10.0)
    fast = window_record(w, 10.0, 10, 1, 10, 5, 1e-3, 1e9, None, 1, seconds_left=600.0)
    assert fast["eta_min"] == pytest.approx(5 * 1.0 / 60)
    assert window_record(w, 10.0, 10, 1, 10, 5, 1e-3, 1e9, None, 1, seconds_left=-3.0)["eta_min"] == 0.0


def test_a_record_that_does_not_fit_is_cut_back_to_the_last_whole_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk while train.jsonl is appended (injected: the kernel's short write, then ENOSPC): the half
    line written is cut away, so every reader of the log still parses it, and the fault is one line."""
    disk = fail_writes(monkeypatch, report, errno.ENOSPC, room=1 << 20)
    reporter = Reporter(tmp_path, main=True)
    reporter.log({"update": 1, "loss": 5.0})
    before = (tmp_path / "train.jsonl").read_text()
    disk.room = 10  # the next record's first 10 bytes fit
    with pytest.raises(NmtError) as err:
        reporter.log({"update": 2, "loss": 4.5, "ppl": 90.0})
    assert str(err.value) == f"{tmp_path / 'train.jsonl'}: no space left on the device; free space there (or choose another location) and run the command again"
    assert (tmp_path / "train.jsonl").read_text() == before and json.loads(before)["update"] == 1


def test_a_real_full_disk_under_the_log(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", 8) as disk:
        reporter = Reporter(disk, main=True)
        with pytest.raises(NmtError, match="no space left on the device"):
            for update in range(1, 10_000):
                reporter.log({"update": update, "loss": 1.0 / update, "note": "x" * 100})
        text = (disk / "train.jsonl").read_text()
        assert text.endswith("\n") and [json.loads(line)["update"] for line in text.splitlines()] == list(range(1, update))
