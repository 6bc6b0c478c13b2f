"""Devices and number formats: which device a command runs on, and what this CPU computes natively."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

import torch

from nmt.errors import NmtError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def configure_cuda() -> None:
    """Settings for every nmt process that computes on a GPU.

    cuDNN's fused attention is left out of ``scaled_dot_product_attention``'s choices (flash and
    memory-efficient attention remain): it builds an execution plan for every new input shape, about 10 ms
    of host time per call measured on an H100 with torch 2.11, and token batches change shape at every
    step, so the GPU sat idle most of each update (base: 586 ms per update, 76 ms of it on the GPU).
    """
    torch.backends.cuda.enable_cudnn_sdp(False)


@functools.cache
def configure_cpu_allocator() -> bool:
    """Keep freed memory in the process for reuse, where the C library is glibc; returns whether it did.

    Training and decoding allocate and free tensors of tens of MiB at every step (the (tokens × vocabulary)
    logits, log-probabilities and their gradients). glibc serves each allocation over 32 MiB with a fresh
    ``mmap`` and returns it with ``munmap``, so every step touches fresh pages and pays a page fault for each
    4 KiB of them; on the 2-core VM of docs/performance.md that was a fifth of a tiny model's update (the
    log-softmax backward took 100 ms on a 64 MiB tensor). Without ``mmap`` for large blocks and without
    trimming the heap, freed blocks are reused and their pages stay mapped. The cost is a resident set that
    stays at its peak instead of shrinking between steps, which a training or decoding process reaches
    again at its next long batch anyway.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
    # mallopt takes a C int: 2 GiB - 1 is the largest trim threshold it can be given.
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


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
