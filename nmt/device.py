"""Devices and number formats: which device a command runs on, and what this CPU computes natively."""

from __future__ import annotations

import torch

from nmt.errors import NmtError
from nmt.kernels.allocator import configure_cpu_allocator

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def configure_cuda() -> None:
    """Settings for every nmt process that computes on a GPU.

    cuDNN's fused attention is left out of ``scaled_dot_product_attention``'s choices (flash and
    memory-efficient attention remain): it builds an execution plan for every new input shape, about 10 ms
    of host time per call measured on an H100 with torch 2.11, and token batches change shape at every
    step, so the GPU sat idle most of each update (base: 586 ms per update, 76 ms of it on the GPU).
    """
    torch.backends.cuda.enable_cudnn_sdp(False)


def pick_device(name: str) -> torch.device:
    """``auto`` (a GPU when there is one), ``cpu``, ``cuda`` or ``cuda:N``; one-line errors otherwise."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise NmtError(f"--device {name}: not a device (cpu, cuda, cuda:1, auto)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise NmtError(f"--device {name}: no GPU is present")
    if device.type == "cuda":
        configure_cuda()
    else:
        configure_cpu_allocator()
    return device


def cpu_has_native(precision: str) -> bool:
    """Whether this CPU computes ``precision`` natively (AVX512-BF16 or AMX for bf16, AMX-FP16 for fp16).

    Without them torch emulates the format and matrix products run several times slower than in fp32.
    """
    if precision == "bf16":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    if precision == "fp16":
        return torch.cpu._is_amx_fp16_supported()
    return True


def slow_precision_warning(precision: str, device: torch.device) -> str | None:
    """A one-line warning when ``precision`` will be slower than fp32 on ``device``, else None."""
    if device.type == "cpu" and precision in ("bf16", "fp16") and not cpu_has_native(precision):
        return (f"{precision} on a CPU without native {precision} instructions (AVX512-BF16 or AMX): "
                "correct, but slower than fp32 here")
    return None


def slow_decoding_warning(precision: str, device: torch.device) -> str | None:
    """A one-line warning for ``nmt translate --dtype`` bf16 or fp16 on a CPU, else None.

    Unlike training, decoding in half precision is slower than fp32 on every CPU measured, AMX included
    (docs/performance.md, machine C: 0.6-0.7×): a step multiplies a few rows by matrices of a few hundred
    columns, too small to pay, and oneDNN prepares a kernel for each new shape, which changes at every step.
    """
    if device.type == "cpu" and precision in ("bf16", "fp16"):
        return f"{precision} decoding on a CPU: correct, but slower than fp32 (decoding steps are too small to pay)"
    return None
