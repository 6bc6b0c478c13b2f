"""nmt.device: device choice and the per-process GPU settings."""

import os
import platform
import subprocess
import sys

import pytest
import torch

from nmt.device import configure_cuda, pick_device, slow_decoding_warning, slow_precision_warning
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
    assert slow_decoding_warning("fp32", torch.device("cpu")) is None


def test_half_precision_decoding_warns_on_every_cpu_not_on_gpus() -> None:
    for precision in ("bf16", "fp16"):
        assert "slower than fp32" in slow_decoding_warning(precision, torch.device("cpu"))
        assert slow_decoding_warning(precision, torch.device("cuda")) is None


ALLOCATION_FAULTS = """
import random, resource, sys, torch
from nmt.kernels.allocator import configure_cpu_allocator
if sys.argv[1] == "configured":
    assert configure_cpu_allocator()
random.seed(0)
def touch():
    x = torch.empty(16 * 2**20 + random.randrange(2**20))  # 64-68 MiB, as a step's logits vary in size
    x.fill_(1.0)
for _ in range(20):  # the first allocations map new pages in any case
    touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    touch()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or not platform.libc_ver()[0] == "glibc", reason="glibc's mallopt")
def test_cpu_allocator_reuses_freed_memory_instead_of_faulting_it_in_again() -> None:
    """Tensors of 64-68 MiB freed and allocated again: glibc's default maps fresh pages each time (a page
    fault per 4 KiB, over 16,000 per allocation); configured, freed blocks are reused, their pages mapped."""
    faults = {}
    for mode in ("default", "configured"):
        out = subprocess.run([sys.executable, "-c", ALLOCATION_FAULTS, mode], capture_output=True, text=True, check=True)
        faults[mode] = int(out.stdout)
    assert faults["default"] > 10 * 8000
    assert faults["configured"] < faults["default"] / 4  # 17,361 against 170,242 on the machine of docs/performance.md


THREAD_FAULTS = """
import resource, sys, threading, torch
from nmt.kernels.allocator import configure_cpu_allocator
assert configure_cpu_allocator()
if sys.argv[1] == "no pad":
    import ctypes, ctypes.util
    ctypes.CDLL(ctypes.util.find_library("c")).mallopt(-2, 0)  # M_TOP_PAD back to glibc's default
counted = []
def work():
    # A search's pattern: batches of steps, each replacing its caches and making a (rows × 4,000) tensor,
    # rows shrinking as sentences finish; the thread's arena chains heaps, emptied at a batch's end.
    for batch in range(6):
        if batch == 3:
            counted.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)
        caches = [torch.zeros(1) for _ in range(4)]
        rows = 2800
        for step in range(30):
            caches = [torch.empty(rows, 4, step + 1, 32).fill_(1.0) for _ in caches]
            logits = torch.empty(rows, 4000).fill_(1.0)
            del logits
            rows = max(4, rows - 100)
    counted.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)
thread = threading.Thread(target=work)
thread.start()
thread.join()
print(counted[1] - counted[0])
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or not platform.libc_ver()[0] == "glibc", reason="glibc's mallopt")
def test_cpu_allocator_keeps_worker_threads_heaps() -> None:
    """The same in a thread other than the main one (nmt translate's workers, the server's decoding): its
    arena's heaps, unmapped as they empty without the top pad, stay mapped."""
    faults = {}
    for mode in ("no pad", "configured"):
        # Two OpenMP threads, as on CI's 2 cores: with one, this pattern happened to keep its heaps unpadded.
        env = {**os.environ, "OMP_NUM_THREADS": "2"}
        out = subprocess.run([sys.executable, "-c", THREAD_FAULTS, mode], capture_output=True, text=True, check=True, env=env)
        faults[mode] = int(out.stdout)
    assert faults["no pad"] > 5000  # 24,670 on the machine of docs/performance.md
    assert faults["configured"] < faults["no pad"] / 4  # 0 there
