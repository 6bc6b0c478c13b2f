"""The C library's allocator, set up for processes that compute on a CPU."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


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

    Threads other than the main one (``nmt translate``'s workers, the server's decoding) allocate from
    arenas of their own, chains of 64 MiB heaps, and glibc unmaps a heap that empties whatever the trim
    threshold; only a top pad larger than a heap keeps them. Without it two workers translating 2,000 lines
    took 17,000-30,000 more page faults a pass (0.1-0.16 s more system time; docs/performance.md). The pad is
    address space, not memory: pages are resident only once touched (under strict overcommit,
    ``vm.overcommit_memory=2``, each thread's 64 MiB heap is charged in full, and the main heap grows in
    128 MiB steps against ``RLIMIT_DATA``).
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    m_trim_threshold, m_top_pad, m_mmap_max = -1, -2, -4  # <malloc.h>
    # mallopt takes a C int: 2 GiB - 1 is the largest trim threshold it can be given.
    applied = [bool(mallopt(option, value)) for option, value in ((m_mmap_max, 0), (m_trim_threshold, 2**31 - 1), (m_top_pad, 128 * 2**20))]
    return all(applied)
