"""nmt.decode.config: the search's settings, their one-line errors, the output-length limit, and the settings a
checkpoint carries with command-line overrides on top."""

from pathlib import Path

import pytest

from nmt.decode.config import DecodeConfig, decode_config
from nmt.errors import NmtError
from nmt.recipe import run_config
from nmt.train.config import to_plain


@pytest.mark.parametrize("kw, message", [
    ({"beam": 0}, "--beam must be at least 1, not 0"),
    ({"nbest": 0}, "--nbest 0 must be between 1 and --beam 4"),
    ({"beam": 2, "nbest": 3}, "--nbest 3 must be between 1 and --beam 2"),
    ({"max_tokens": 0}, "--max-tokens must be at least 1, not 0"),
    ({"max_len_a": -0.5}, "--max-len-a -0.5 and --max-len-b 50 leave no room for an output"),
    ({"max_len_b": -1}, "--max-len-a 1.0 and --max-len-b -1 leave no room for an output"),
    ({"max_len_a": 0.0, "max_len_b": 0}, "--max-len-a 0.0 and --max-len-b 0 leave no room for an output"),
    ({"penalty": "wu"}, "--penalty must be one of gnmt, fairseq, not 'wu'"),
])
def test_decode_config_validation(kw: dict, message: str) -> None:
    with pytest.raises(NmtError) as err:
        DecodeConfig(**kw)
    assert str(err.value) == message


def test_decode_config_accepts_the_edges_of_each_limit() -> None:
    """The smallest settings that still allow an output are accepted and mean what they say."""
    assert DecodeConfig(beam=1, nbest=1).beam == 1 and DecodeConfig(beam=3, nbest=3).nbest == 3
    assert DecodeConfig(max_len_a=0.0, max_len_b=1).max_output_len(40, 1024) == 1  # EOS alone
    assert DecodeConfig(max_len_a=1.0, max_len_b=0).max_output_len(40, 1024) == 41  # the source's length, EOS counted


@pytest.mark.parametrize("a, b, n_src, positions, expected", [
    # Both lengths count their EOS (tensor2tensor's decode_length): the paper's |source| + 50 lets 10 source
    # tokens through as at most 60 output tokens plus EOS.
    (1.0, 50, 10, 1024, 61),
    (1.5, 5, 7, 1024, 17),  # 1.5 · 8 + 5 = 17
    (1.5, 5, 6, 1024, 15),  # 15.5 truncated
    (1.0, 50, 2000, 1024, 1024),  # within the model's positions
    (0.5, 0, 1, 1024, 1),  # at least one token (the EOS)
    (0.0, 3, 100, 1024, 3),
    (2.0, 0, 0, 1024, 2),
])
def test_max_output_len(a: float, b: int, n_src: int, positions: int, expected: int) -> None:
    assert DecodeConfig(max_len_a=a, max_len_b=b).max_output_len(n_src, positions) == expected


def test_decode_config_from_a_checkpoint_with_overrides() -> None:
    plain = to_plain(run_config(data=Path("d"), decode={"beam": 8, "lenpen": 1.0, "penalty": "fairseq"}))
    assert decode_config(plain) == DecodeConfig(beam=8, lenpen=1.0, penalty="fairseq")
    assert decode_config(plain, beam=2, lenpen=None, nbest=None) == DecodeConfig(beam=2, lenpen=1.0, penalty="fairseq")
    assert decode_config(None) == DecodeConfig() and decode_config({}, beam=6) == DecodeConfig(beam=6)
    older = {"decode": {**plain["decode"], "removed_setting": 1}}  # a key this version no longer has is ignored
    assert decode_config(older) == decode_config(plain)
    with pytest.raises(NmtError, match="--nbest 5 must be between 1 and --beam 2"):
        decode_config(plain, beam=2, nbest=5)
