"""nmt.data.spm: the joint SentencePiece model, its fixed special ids, byte fallback, and loading checks."""

from pathlib import Path

import pytest
import sentencepiece as spm

from nmt import atomic
from nmt.data.spm import load_spm, train_spm
from nmt.errors import NmtError
from tests.helpers import small_disk
from nmt.tokens import BOS, EOS, PAD, SPECIAL_PIECES, UNK

FIXTURE_VOCAB = 400


def test_special_ids_are_fixed(fixture_spm: Path) -> None:
    proc = load_spm(fixture_spm)
    assert (proc.pad_id(), proc.unk_id(), proc.bos_id(), proc.eos_id()) == (PAD, UNK, BOS, EOS) == (0, 1, 2, 3)
    assert [proc.id_to_piece(i) for i in range(4)] == ["<pad>", "<unk>", "<s>", "</s>"]
    assert [SPECIAL_PIECES[i] for i in range(4)] == ["<pad>", "<unk>", "<s>", "</s>"]
    assert proc.get_piece_size() == FIXTURE_VOCAB


def test_training_writes_model_and_vocab_and_no_temporary(fixture_spm: Path) -> None:
    folder = fixture_spm.parent
    assert fixture_spm == folder / "fixture.model"
    vocab = (folder / "fixture.vocab").read_text(encoding="utf-8").splitlines()
    assert len(vocab) == FIXTURE_VOCAB and vocab[0].split("\t")[0] == "<pad>"
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("text", [
    "Die Datei „%s“ wurde nicht gefunden.",
    "Emoji 😀 and CJK 東京 and Ωmega",  # none of these characters is in the fixture
    "ﬁle Ａ ½",  # NFKC would change these; the model's normalisation is the identity
    "Zuletzt geöffnet",
])
def test_byte_fallback_round_trips_any_text(fixture_spm: Path, text: str) -> None:
    proc = load_spm(fixture_spm)
    ids = proc.encode(text)
    assert UNK not in ids
    assert proc.decode(ids) == text


def test_unknown_characters_become_byte_pieces(fixture_spm: Path) -> None:
    proc = load_spm(fixture_spm)
    pieces = proc.encode("😀", out_type=str)
    assert [p for p in pieces if p.startswith("<0x")] == ["<0xF0>", "<0x9F>", "<0x98>", "<0x80>"]


def test_merges_are_learnt_from_the_sample(fixture_spm: Path) -> None:
    # 400 pieces leave ~70 merges after the 256 bytes, the specials and the characters: enough that the
    # training text takes clearly fewer pieces than characters, and that its most frequent word is one piece.
    proc = load_spm(fixture_spm)
    text = (fixture_spm.parent / "sample.txt").read_text(encoding="utf-8").splitlines()
    n_pieces = sum(len(ids) for ids in proc.encode(text))
    n_chars = sum(len(line) for line in text)
    assert n_pieces < 0.7 * n_chars
    assert proc.piece_to_id("▁the") != UNK


def test_load_missing_model(tmp_path: Path) -> None:
    with pytest.raises(NmtError, match=rf"^{tmp_path / 'none.model'}: SentencePiece model not found$"):
        load_spm(tmp_path / "none.model")


def test_load_something_else(tmp_path: Path) -> None:
    path = tmp_path / "junk.model"
    path.write_bytes(b"\x00\x01 this is not a protobuf \xff" * 10)
    with pytest.raises(NmtError, match=rf"^{path}: not a SentencePiece model"):
        load_spm(path)


@pytest.mark.parametrize("ids", [
    {},  # SentencePiece's own defaults: unk 0, bos 1, eos 2, no pad
    {"pad_id": 3, "unk_id": 1, "bos_id": 0, "eos_id": 2},  # the right unk, the others shuffled
])
def test_load_model_with_other_special_ids(tmp_path: Path, fixture_spm: Path, ids: dict[str, int]) -> None:
    sample = fixture_spm.parent / "sample.txt"
    spm.SentencePieceTrainer.train(input=str(sample), model_prefix=str(tmp_path / "other"), vocab_size=200,
                                   minloglevel=2, num_threads=1, **ids)
    path = tmp_path / "other.model"
    with pytest.raises(NmtError) as err:
        load_spm(path)
    assert str(err.value) == f"{path}: special ids must be pad=0 unk=1 bos=2 eos=3"


def test_vocabulary_too_large_for_the_text(tmp_path: Path, fixture_spm: Path) -> None:
    sample = fixture_spm.parent / "sample.txt"
    with pytest.raises(NmtError) as err:
        train_spm(sample, tmp_path / "big", 50_000, threads=1)
    message = str(err.value)
    assert message.startswith("SentencePiece training failed: --vocab-size 50000 cannot be reached on this training text; at most ")
    at_most = int(message.rsplit(" ", 3)[1])
    assert FIXTURE_VOCAB < at_most < 50_000
    assert "\n" not in message
    assert list(tmp_path.iterdir()) == []  # neither the model nor a temporary


def test_vocabulary_smaller_than_the_characters(tmp_path: Path, fixture_spm: Path) -> None:
    # 256 byte pieces and 4 specials already exceed 100: SentencePiece's own message, on one line.
    with pytest.raises(NmtError) as err:
        train_spm(fixture_spm.parent / "sample.txt", tmp_path / "small", 100, threads=1)
    assert str(err.value).startswith("SentencePiece training failed: ") and "ocabulary size" in str(err.value)
    assert "\n" not in str(err.value)


def test_training_is_deterministic(tmp_path: Path, fixture_spm: Path) -> None:
    # The model files differ in the prefix they record; the pieces and their scores must not.
    again = load_spm(train_spm(fixture_spm.parent / "sample.txt", tmp_path / "again", FIXTURE_VOCAB, threads=1))
    first = load_spm(fixture_spm)
    assert [(again.id_to_piece(i), again.get_score(i)) for i in range(FIXTURE_VOCAB)] == \
        [(first.id_to_piece(i), first.get_score(i)) for i in range(FIXTURE_VOCAB)]


def test_a_full_disk_under_sentencepiece(tmp_path: Path, fixture_spm: Path) -> None:
    """SentencePiece does not check its writes: on a full disk it leaves empty model files and reports
    success. The model is loaded back before it is renamed into place."""
    with small_disk(tmp_path / "disk", 64) as disk:
        with open(disk / "filler", "wb", buffering=0) as f:  # every block of the disk taken
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError:
                pass
        with pytest.raises(NmtError) as err:
            train_spm(fixture_spm.parent / "sample.txt", disk / "spm", FIXTURE_VOCAB, threads=1)
        assert str(err.value) == f"{disk / 'spm.model'}: no space left on the device; free space there (or choose another location) and run the command again"
        assert sorted(p.name for p in disk.iterdir()) == ["filler"]


@pytest.mark.parametrize("space", [0, 10 << 30])
def test_an_unloadable_model_written_by_sentencepiece(tmp_path: Path, fixture_spm: Path, monkeypatch: pytest.MonkeyPatch, space: int) -> None:
    """Injected: SentencePiece's training leaves the empty files it leaves on a full disk; with the disk
    (pretended) full that is what the line says, otherwise that the model cannot be loaded back."""
    def empty_files(**kwargs: object) -> None:
        for ext in ("model", "vocab"):
            Path(f"{kwargs['model_prefix']}.{ext}").write_bytes(b"")

    monkeypatch.setattr(spm.SentencePieceTrainer, "train", empty_files)
    monkeypatch.setattr(atomic, "space_left", lambda folder: space)
    with pytest.raises(NmtError) as err:
        train_spm(fixture_spm.parent / "sample.txt", tmp_path / "spm", FIXTURE_VOCAB, threads=1)
    expected = (f"{tmp_path / 'spm.model'}: no space left on the device; free space there (or choose another location) and run the command again"
                if space == 0 else f"{tmp_path / 'spm.model'}: SentencePiece wrote a model it cannot load back (write error?); run again")
    assert str(err.value) == expected and list(tmp_path.iterdir()) == []
