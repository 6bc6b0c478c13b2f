"""nmt.device: device choice and the per-process GPU settings."""

import pytest
import torch

from nmt.device import configure_cuda, pick_device, slow_precision_warning
from nmt.errors import NmtError


def test_cuda_processes_leave_cudnn_attention_out() -> None:
    """cuDNN's attention plans each new shape (about 10 ms of host time on an H100): with token batches of
    ever-changing shapes it left the GPU idle most of each update, and gave occasional non-finite gradients
    in bf16 training. Every GPU process (training ranks and nmt translate) must switch it off."""
    torch.backends.cuda.enable_cudnn_sdp(True)
    try:
        configure_cuda()
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()
    finally:
        torch.backends.cuda.enable_cudnn_sdp(True)


def test_pick_device_names_the_bad_option() -> None:
    assert pick_device("cpu") == torch.device("cpu")
    with pytest.raises(NmtError, match=r"--device gpu0: not a device"):
        pick_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(NmtError, match=r"--device cuda: no GPU is present"):
            pick_device("cuda")


def test_fp32_never_warns() -> None:
    assert slow_precision_warning("fp32", torch.device("cpu")) is None
