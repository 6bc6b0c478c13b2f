import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from nmt import checkpoint
from nmt.decode.config import DecodeConfig
from nmt.train.config import RunConfig, TrainConfig
from nmt.decode.translate import TranslateConfig, Translator
from nmt.train.launch import run

TINY = {"d_model": 64, "d_ff": 128, "heads": 2}


@pytest.fixture(scope="module")
def trained(small_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model trained for 60 updates, with numbered checkpoints at 20, 40 and 60."""
    save_dir = tmp_path_factory.mktemp("run")
    t = TrainConfig(max_tokens=1024, warmup=30, max_updates=60, save_every=20, validate_every=1000, log_every=20, save_minutes=1e9)
    run(RunConfig(data=small_data, save_dir=save_dir, arch="tiny", model=dict(TINY), train=t, cpu=True))
    return save_dir


def nmt(*args: str, input: str | bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nmt", *args], input=input, capture_output=True,
                          text=not isinstance(input, bytes))


def test_average_equals_elementwise_mean_and_translates(trained: Path, tmp_path: Path) -> None:
    r = nmt("average", str(trained), "--last", "3", "-o", str(tmp_path / "avg.pt"))
    assert r.returncode == 0, r.stderr
    avg = checkpoint.load(tmp_path / "avg.pt")
    parts = [checkpoint.load(trained / f"checkpoint_{n}.pt")["model"] for n in (20, 40, 60)]
    for k, v in avg["model"].items():
        torch.testing.assert_close(v, (parts[0][k] + parts[1][k] + parts[2][k]) / 3, rtol=1e-6, atol=1e-7)
    assert avg["model_config"] == checkpoint.load(trained / "checkpoint_60.pt")["model_config"]
    r = nmt("translate", str(tmp_path / "avg.pt"), "--beam", "2", input="Open the file.\n")
    assert r.returncode == 0 and r.stdout.count("\n") == 1
    r = nmt("average", str(trained), "--last", "9", "-o", str(tmp_path / "x.pt"))
    assert r.returncode == 2 and "fewer than --last 9" in r.stderr
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    r = nmt("average", str(trained / "checkpoint_20.pt"), str(tmp_path / "junk.pt"), "-o", str(tmp_path / "y.pt"))
    assert r.returncode == 2 and "junk.pt: not a readable nmt checkpoint" in r.stderr and not (tmp_path / "y.pt").exists()


def test_average_refuses_other_architecture(trained: Path, small_data: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    t = TrainConfig(max_tokens=1024, warmup=30, max_updates=1, validate_every=1000, save_minutes=1e9)
    run(RunConfig(data=small_data, save_dir=other, arch="tiny", model={**TINY, "d_ff": 64}, train=t, cpu=True))
    r = nmt("average", str(trained / "checkpoint_20.pt"), str(other / "checkpoint_1.pt"), "-o", str(tmp_path / "z.pt"))
    assert r.returncode == 2 and "architecture differs" in r.stderr


def test_stdin_to_stdout_keeps_alignment_with_empty_and_odd_lines(trained: Path) -> None:
    lines = b"Open the file.\n\n   \nSave \xff\xfe as\n" + "x " .encode() * 2000 + b"\nClose.\n"
    r = nmt("translate", str(trained / "checkpoint_60.pt"), "--beam", "2", "--max-len-b", "10", input=lines)
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode().split("\n")
    assert len(out) == 7 and out[-1] == "" and out[1] == "" and out[2] == ""
    assert b"line 4: invalid UTF-8 replaced" in r.stderr
    assert b"line 5:" in r.stderr and b"truncated" in r.stderr


def test_ensemble_from_the_command_line(trained: Path) -> None:
    alone = nmt("translate", str(trained / "checkpoint_60.pt"), input="Open the file.\nQuit\n")
    twice = nmt("translate", str(trained / "checkpoint_60.pt"), str(trained / "checkpoint_60.pt"), input="Open the file.\nQuit\n")
    mixed = nmt("translate", str(trained / "checkpoint_40.pt"), str(trained / "checkpoint_60.pt"), input="Open the file.\nQuit\n")
    assert alone.returncode == twice.returncode == mixed.returncode == 0
    assert twice.stdout == alone.stdout  # log of the mean of identical distributions is the same distribution
    assert mixed.stdout.count("\n") == 2


def test_missing_or_foreign_checkpoint_fails_in_one_line(tmp_path: Path) -> None:
    r = nmt("translate", str(tmp_path / "none.pt"), input="x\n")
    assert r.returncode == 2 and "none.pt: checkpoint not found" in r.stderr and r.stderr.count("\n") == 1
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    r = nmt("translate", str(tmp_path / "foreign.pt"), input="x\n")
    assert r.returncode == 2 and "not an nmt checkpoint" in r.stderr


def test_streamed_line_is_answered_before_the_next_is_written(trained: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "nmt", "translate", str(trained / "checkpoint_60.pt"), "--buffer-size", "1", "--beam", "2"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        for sentence in ("Open the file.", "Save the document as a new file.", "Quit"):
            proc.stdin.write(sentence + "\n")
            proc.stdin.flush()
            answer = proc.stdout.readline()  # blocks until this very line is translated
            assert answer.endswith("\n")
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)
    assert proc.returncode == 0


@pytest.mark.slow
def test_output_does_not_depend_on_batching(trained: Path, real_text: Path) -> None:
    """2000 lines of the test split: alone, in token batches, and in reverse order, line for line equal."""
    lines = (real_text / "test.en").read_text(encoding="utf-8").splitlines()[:2000]
    numbered = list(enumerate(lines, 1))
    limits = {"beam": 4, "max_len_a": 1.0, "max_len_b": 5}  # short outputs keep 2000 single-line searches cheap
    batched = Translator([trained / "checkpoint_60.pt"], TranslateConfig(decode=DecodeConfig(**limits))).translate_buffer(numbered)
    one = Translator([trained / "checkpoint_60.pt"], TranslateConfig(decode=DecodeConfig(max_tokens=1, **limits)))
    alone = [one.translate_buffer([pair])[0] for pair in numbered]
    reordered = Translator([trained / "checkpoint_60.pt"], TranslateConfig(decode=DecodeConfig(max_tokens=64 * 64, **limits))).translate_buffer(numbered[::-1])[::-1]
    assert len(batched) == 2000
    assert batched == alone
    assert batched == reordered


def test_workers_search_each_batch_as_one_worker_does(trained: Path, real_text: Path, tmp_path: Path) -> None:
    """Batches searched by two workers at once: the same output as one worker, both workers busy, torch's
    thread count restored, and a failure in a worker raised in the caller. Every search runs on one thread
    (two workers of 2 threads ÷ 2), since sums split across threads round differently."""
    lines = (real_text / "test.en").read_text(encoding="utf-8").splitlines()[:200]
    decode = DecodeConfig(beam=4, max_len_a=1.0, max_len_b=5, max_tokens=128)  # about 20 batches
    one = Translator([trained / "checkpoint_60.pt"], TranslateConfig(decode=decode, workers=1))
    two = Translator([trained / "checkpoint_60.pt"], TranslateConfig(decode=decode, workers=2))
    sources = [one.encode(n, text) for n, text in enumerate(lines, 1) if text.strip()]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = one.translate_ids(sources)
        torch.set_num_threads(2)
        names: set[str] = set()
        record = lambda i, hyps: names.add(threading.current_thread().name)  # noqa: E731
        assert two.translate_ids(sources, on_done=record) == alone
        assert names == {"nmt-search-0", "nmt-search-1"}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)

    # By default one worker per thread for a small model, one worker for a large one.
    auto = Translator([trained / "checkpoint_60.pt"], TranslateConfig(decode=decode))
    try:
        torch.set_num_threads(2)
        names.clear()
        auto.translate_ids(sources, on_done=record)
        assert names == {"nmt-search-0", "nmt-search-1"}
        auto.small = False  # as a model whose step weights exceed SMALL_STEP_BYTES is
        names.clear()
        auto.translate_ids(sources, on_done=record)
        assert names == {"MainThread"}
    finally:
        torch.set_num_threads(threads)

    def fail(i: int, hyps: object) -> None:
        if i == len(sources) - 1:
            raise ValueError("boom in a worker")

    with pytest.raises(ValueError, match="boom in a worker"):
        two.translate_ids(sources, on_done=fail)
    assert torch.get_num_threads() == threads

    (tmp_path / "in.en").write_text("\n".join(lines) + "\n", encoding="utf-8")
    outputs = []
    for threads, workers in (("1", "1"), ("2", "2")):
        r = nmt("translate", str(trained / "checkpoint_60.pt"), "-i", str(tmp_path / "in.en"), "--max-tokens", "128",
                "--max-len-b", "5", "--threads", threads, "--workers", workers)
        assert r.returncode == 0, r.stderr
        outputs.append(r.stdout)
    assert outputs[0] == outputs[1] and len(outputs[0].splitlines()) == 200
    r = nmt("translate", str(trained / "checkpoint_60.pt"), "--workers", "-1", input="Quit\n")
    assert r.returncode != 0 and "--workers" in r.stderr


def test_nbest_and_scores_format(trained: Path) -> None:
    r = nmt("translate", str(trained / "checkpoint_60.pt"), "--nbest", "3", "--beam", "4", input="Open the file.\nQuit\n")
    rows = [line.split("\t") for line in r.stdout.splitlines()]
    assert [row[0] for row in rows] == ["1", "1", "1", "2", "2", "2"]
    scores = [float(row[1]) for row in rows[:3]]
    assert scores == sorted(scores, reverse=True)
    r = nmt("translate", str(trained / "checkpoint_60.pt"), "--scores", input="Quit\n")
    assert len(r.stdout.split("\t")) == 2


def test_score_equals_sacrebleu_command(real_text: Path, tmp_path: Path) -> None:
    ref = real_text / "test.de"
    hyp = tmp_path / "hyp.de"
    # A real system-like hypothesis: the reference with every third line replaced by another line.
    refs = ref.read_text(encoding="utf-8").splitlines()
    hyp.write_text("\n".join(r if i % 3 else refs[(i + 7) % len(refs)] for i, r in enumerate(refs)) + "\n", encoding="utf-8")
    ours = nmt("score", "--ref", str(ref), "--hyp", str(hyp), "--metrics", "bleu,chrf,ter")
    theirs = subprocess.run([sys.executable, "-m", "sacrebleu", str(ref), "-i", str(hyp), "-m", "bleu", "chrf", "ter", "-b", "-f", "text", "-w", "2"], capture_output=True, text=True)
    assert ours.returncode == 0 and theirs.returncode == 0, theirs.stderr
    our_lines = [line for line in ours.stdout.splitlines() if not line.startswith("  ")]
    values = theirs.stdout.split()
    assert len(our_lines) == len(values) == 3
    for mine, value in zip(our_lines, values):
        assert mine.split(" = ")[1].split()[0] == value
    r = nmt("score", "--ref", str(ref), "--hyp", str(hyp), "--json", "--tokenized", "--paired-bs", str(ref))
    data = json.loads(r.stdout)
    assert [s["kind"].split()[0] for s in data["scores"]] == ["sacrebleu", "tokenized"]
    assert data["paired_bootstrap"][0]["baseline"] == pytest.approx(100.0)


def test_score_line_count_mismatch(tmp_path: Path) -> None:
    (tmp_path / "ref").write_text("a\nb\n")
    r = nmt("score", "--ref", str(tmp_path / "ref"), input="a\n")
    assert r.returncode == 2 and "stdin has 1 lines but" in r.stderr and "has 2" in r.stderr


def test_empty_input_answers_without_loading_torch_or_the_model(tmp_path: Path) -> None:
    """Scripts pipe whatever they have, nothing included: an empty input is answered without the seconds that
    importing torch and loading the checkpoint take (the import log shows torch never loaded)."""
    ckpt = Path(__file__).resolve().parents[1] / "fixtures" / "tiny" / "checkpoint.pt"
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "nmt", "translate", str(ckpt)], input="", capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout == ""
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "nmt.cli" in imported and "torch" not in imported and "nmt.decode.translate" not in imported
    out = tmp_path / "out.txt"
    assert nmt("translate", str(ckpt), "--output", str(out), input="").returncode == 0 and out.read_text() == ""
    missing = nmt("translate", str(tmp_path / "missing.pt"), input="")
    assert missing.returncode == 2 and missing.stderr.strip() == f"nmt: error: {tmp_path / 'missing.pt'}: checkpoint not found"
