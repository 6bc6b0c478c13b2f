"""The search's projections and a decoding step's attention in C (``decode_step.c``), compiled on first use by
the machine's C compiler.

The projections (``pack_linear``, ``linear``): a step multiplies a few to a few hundred rows by each of the
decoder's weights, a dozen products a step, and oneDNN's and MKL's products spend 5-13 µs a call preparing
before they multiply (a 4-row product of a 128 × 128 weight computes in under 1 µs). The C product starts at
once on a weight stored in panels of 64 (AVX-512), 16 (AVX2, NEON) or 8 (SSE) columns, with 6 rows a block
in registers; on a 2-core Zen 5, one thread, it took 3-6 µs against 13-20 µs at 1-4 rows of the quick-start
model's layers, and 0.9-1.2x oneDNN's time from 16 to 2,048 rows, for those layers and a base model's; built
for AVX2 and against oneDNN's AVX2 kernels, 1.9-2.5x and 0.8-1.0x (docs/performance.md).
Every output is one multiply-add chain over the inputs in order (fused where the CPU has FMA): a row's
result is bitwise the same whatever the other rows and however many threads share the product.

A decoding step's self-attention reorders each layer's cache (the hypotheses the search kept), appends the
step's keys and values, and attends one query per hypothesis and head over the cache. In torch that is an
``index_select`` and a copy of the whole cache, then two batched products that ATen runs in a scalar loop at
these sizes (a query of 32 against a few dozen positions), reading the cache back from memory between them.
The C step copies nothing: each step's keys and values are written once into a ``Store`` and each
hypothesis's positions are read through its ancestors' rows, so a reorder reorders row numbers (the
decoding state's ``ancestors``); one call a layer attends every hypothesis and head. The cross-attention reads each sentence's keys stored transposed
(``cross_layout``), so a query's scores are one vector over positions. The quick-start model's search (2,000
test lines, beam 4, two workers) ran 12-23 % faster with both, 2,000 of 2,000 outputs the same, and 24 %
faster again with the products too (docs/performance.md).

The search's candidates (``output_top_k``): the output projection's logits, megabytes a step, are turned into
each row's best log-probabilities while each tile is in registers (a running maximum and sum of exponentials,
the row's best so far), instead of being written, normalised in place and searched by torch.

The library is built once per source, compiler, CPU and user into ``NMT_CACHE_DIR`` (default
``$XDG_CACHE_HOME/nmt`` or ``~/.cache/nmt``) under ``kernels/``, with ``-march=native`` and OpenMP, in about
1 s with GCC 12; later processes load it in 3 ms (``NMT_NATIVE_MARCH`` names another ``-march``, ``march``).
Its vectors are the CPU's own width (16, 8 or 4 floats). When loaded it is checked against torch's computation,
and its OpenMP against torch's runtime (else it is built again without OpenMP). Where no compiler is found
(``CC``, else ``cc``, ``gcc`` or ``clang``), ``NMT_NATIVE=0`` is set, or the CPU is not an x86-64 with
SSE4.2 at least (``fast_vectors``; unless ``NMT_NATIVE=1``), ``library()`` is None and decoding takes torch's
path with oneDNN's products; where the build, the load or the check fails, the same after a one-line
warning. The choice is per process, never per batch: the two paths round differently, and a sentence's
translation must not depend on its batch.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

SOURCE = Path(__file__).with_name("decode_step.c")
# No -ffast-math or -fassociative-math: the loops that matter are vectorised by hand, and a compiler free to
# reorder sums could make a hypothesis's result depend on its row's address (peeled loops), or undo exp's
# split constant.
FLAGS = ["-O3", "-fPIC", "-shared"]
# Tried first: the library's loops on torch's OpenMP threads (decode_step.c); without it, where the
# compiler has no OpenMP, each step runs on the calling thread.
OPENMP = "-fopenmp"

_lock = threading.Lock()
_loaded: list[ctypes.CDLL | None] = []  # filled once: the library, or None


def _required(caller: str) -> ctypes.CDLL:
    """The loaded library for ``caller``, which cannot run without it."""
    lib = _loaded[0] if _loaded else library()
    if lib is None:
        raise RuntimeError(f"{caller}: the C library is not available here (see nmt.kernels.native)")
    return lib


def cache_dir() -> Path:
    """Where built libraries are kept: ``NMT_CACHE_DIR``, else ``$XDG_CACHE_HOME/nmt``, else ``~/.cache/nmt``."""
    if root := os.environ.get("NMT_CACHE_DIR"):
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nmt"


def _compiler() -> list[str] | None:
    """The compiler's command: ``CC`` (which may carry arguments, as ``ccache gcc``), else ``cc``, ``gcc`` or
    ``clang``, its program resolved on the PATH; None if there is none."""
    if cc := os.environ.get("CC"):
        words = shlex.split(cc)
        program = shutil.which(words[0]) if words else None
        return [program, *words[1:]] if program else None
    return next(([path] for name in ("cc", "gcc", "clang") if (path := shutil.which(name))), None)


def fast_vectors() -> bool:
    """Whether this CPU has vectors on which the library was measured faster than torch's path: x86-64 with
    SSE4.2 at least (4 floats; AVX2, 8; AVX-512, 16), where its search ran 1.2-1.3x as fast as torch's held to
    the same instructions (docs/performance.md). Elsewhere (ARM's NEON, unmeasured) it is used only with
    ``NMT_NATIVE=1``."""
    return " sse4_2" in _cpu_signature()  # its flags line, where Linux tells it


def march() -> str:
    """The ``-march`` the library is built for: ``NMT_NATIVE_MARCH``, else ``native`` (this CPU's own). An older
    target, as ``x86-64-v3`` (AVX2) or ``x86-64-v2`` (SSE4.2), builds on a newer CPU the code an older one gets,
    which the suite tests and the benchmarks of docs/performance.md measure. A target newer than the CPU
    builds a library whose first call stops the process (an illegal instruction): name only older ones."""
    return os.environ.get("NMT_NATIVE_MARCH") or "native"


def _cpu_signature() -> str:
    """What ``-march=native`` compiles for: the CPU's model and instruction sets where Linux tells them."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine() + platform.processor()
    fields = ("model name", "flags", "Features", "CPU part")
    return platform.machine() + "".join(line for line in info.splitlines()[:40] if line.startswith(fields))


def _build(compiler: list[str], openmp: bool) -> Path:
    """The library for this source, compiler, CPU and user: built (to a temporary name, then renamed, so that
    processes building at once never load a partial file) unless it is already in the cache."""
    stat = Path(compiler[0]).resolve().stat()
    flags = [*FLAGS, f"-march={march()}", *([OPENMP] if openmp else [])]
    key = hashlib.sha256(b"\0".join([SOURCE.read_bytes(), " ".join([*compiler, *flags]).encode(), f"{stat.st_size}:{stat.st_mtime_ns}".encode(),
                                      _cpu_signature().encode()])).hexdigest()[:20]
    # One file per user: a cache directory shared between users holds each one's own library, and a file
    # someone else made is never loaded.
    target = cache_dir() / "kernels" / f"decode_step-{key}-{os.getuid()}.so"
    if target.exists():
        if target.stat().st_uid != os.getuid():
            raise PermissionError(f"{target} belongs to another user")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".build-", suffix=".so")
    os.close(fd)
    try:
        subprocess.run([*compiler, *flags, str(SOURCE), "-o", tmp], check=True, capture_output=True, timeout=120)
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


def vector_width() -> int | None:
    """The floats of the loaded library's vectors (16 on AVX-512, 8 on AVX2, 4 on SSE or NEON); None without it."""
    lib = _loaded[0] if _loaded else library()
    return None if lib is None else lib.nmt_vector_width()


def _open(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.nmt_self_attention_step.argtypes = [ptr, i64, ptr, i64, i64, i64, ptr, ptr, i64, i64, i64, i64, i64, i64, ctypes.c_float]
    lib.nmt_self_attention_step.restype = ctypes.c_int
    lib.nmt_cross_attention_step.argtypes = [ptr, i64, ptr, ptr, ptr, ptr, i64, i64, i64, i64, i64, i64, i64, ctypes.c_float]
    lib.nmt_cross_attention_step.restype = ctypes.c_int
    lib.nmt_threads.restype = ctypes.c_int
    lib.nmt_linear.argtypes = [ptr, i64, i64, ptr, ptr, i64, i64, ctypes.c_int, ptr, i64]
    lib.nmt_linear.restype = None
    lib.nmt_linear_panel.restype = ctypes.c_int
    lib.nmt_vector_width.restype = ctypes.c_int
    lib.panel = lib.nmt_linear_panel()  # read once: every product compares its panels' width with it
    lib.nmt_output_top_k.argtypes = [ptr, i64, i64, ptr, ptr, i64, i64, i64, ptr, i64, i64, ptr, ptr, ptr]
    lib.nmt_output_top_k.restype = ctypes.c_int
    return lib


def _shares_torchs_threads(lib: ctypes.CDLL) -> bool:
    """Whether the library's OpenMP runtime is torch's, so that ``torch.set_num_threads`` sets its threads
    too (a compiler whose OpenMP is another runtime would give each worker a thread per core)."""
    threads = torch.get_num_threads()
    probe = 2 if threads == 1 else 1
    try:
        torch.set_num_threads(probe)
        return lib.nmt_threads() == probe
    finally:
        torch.set_num_threads(threads)


def _load() -> ctypes.CDLL | None:
    """Build, load and check the library, with OpenMP on torch's runtime if it can be had, else without
    OpenMP; None if neither works (with a warning where a compiler was found)."""
    setting = os.environ.get("NMT_NATIVE", "auto")
    if setting == "0" or (compiler := _compiler()) is None:
        return None
    if setting != "1" and not fast_vectors():
        return None
    problem = "it computed other values than torch"
    for openmp in (True, False):
        try:
            lib = _open(_build(compiler, openmp))
            if openmp and not _shares_torchs_threads(lib):
                problem = "its OpenMP is not torch's"
                continue
            if _agrees(lib):
                return lib
        except Exception as e:  # noqa: BLE001 - any failure leaves decoding on torch's path, never broken
            problem = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
    warnings.warn(f"nmt: decoding's C kernels ({SOURCE.name}, {' '.join(compiler)}) are not used, {problem}; "
                  "decoding goes through torch (NMT_NATIVE=0 silences this)", RuntimeWarning, stacklevel=2)
    return None


def library() -> ctypes.CDLL | None:
    """The loaded library, built first if needed; None where it cannot be had (decoding then takes torch's path)."""
    if not _loaded:
        with _lock:
            if not _loaded:
                _loaded.append(_load())
    return _loaded[0]


class Store:
    """One decoder layer's keys and values as ``self_attention_step`` keeps them: rows of heads·(d_k + d_v)
    floats (each head's key, then value), one per hypothesis and step, each left where it was first written.
    The rows live in chunks of ``2**shift`` rows, so that growing the store never copies it (and a batch's
    store is at most one chunk larger than its rows); ``table`` holds the chunks' addresses for C. A copy
    (``copy.deepcopy``, as tests copy decoding states) copies the chunks and makes its own table."""

    def __init__(self, width: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu", shift: int = 10) -> None:
        self.width, self.dtype, self.device, self.shift = width, dtype, torch.device(device), shift
        self.chunks: list[Tensor] = []
        self.table = torch.empty(0, dtype=torch.int64)

    @property
    def capacity(self) -> int:
        return len(self.chunks) << self.shift

    def reserve(self, rows: int) -> None:
        """Room for ``rows`` rows in all: new chunks as needed, the rows already there untouched."""
        if rows <= self.capacity:
            return
        while rows > self.capacity:
            self.chunks.append(torch.empty(1 << self.shift, self.width, dtype=self.dtype, device=self.device))
        self._index()

    def _index(self) -> None:
        self.table = torch.tensor([c.data_ptr() for c in self.chunks], dtype=torch.int64)

    def rows(self, start: int, count: int) -> Tensor:
        """A copy of rows [start, start + count), (count, width)."""
        size = 1 << self.shift
        if not count:
            return torch.empty(0, self.width, dtype=self.dtype, device=self.device)
        return torch.cat([self.chunks[i // size][i % size][None] for i in range(start, start + count)])

    def __deepcopy__(self, memo: dict) -> Store:
        copy = Store(self.width, self.dtype, self.device, self.shift)
        copy.chunks = [c.clone() for c in self.chunks]
        copy._index()
        return copy


def self_attention_step(qkv: Tensor, store: Store, top: int, ancestors: Tensor, out: Tensor, heads: int, d_k: int, d_v: int) -> None:
    """One decoding step's self-attention, float32 on a CPU, over keys and values left where they were first
    written: hypotheses' projections ``qkv`` (R, heads·(2d_k + d_v)), each head's query, key and value side
    by side (``grouped_qkv``), rows of unit inner stride; ``store`` with rows [0, top) written;
    ``ancestors`` (R, t) int64 contiguous, the store's row of each hypothesis's positions 0..t-1. Writes the
    step's keys and values into store rows top..top+R-1 (making room for them) and each head's attention
    output into ``out`` (R, heads·d_v; rows apart, sharing no memory with the inputs).

    A reorder of hypotheses is then a reorder of ``ancestors`` (R × t integers), not of every layer's cache.
    Equal to ``attend_heads`` over each hypothesis's positions, up to rounding. A large step is split by
    hypotheses across the calling thread's torch threads (OpenMP); each hypothesis's result is the same
    however it is split."""
    lib = _required("self_attention_step")
    _step(lib, qkv, store, top, ancestors, out, heads, d_k, d_v)


def _step(lib: ctypes.CDLL, qkv: Tensor, store: Store, top: int, ancestors: Tensor, out: Tensor, heads: int, d_k: int, d_v: int) -> None:
    r, t = ancestors.shape
    f32 = torch.float32
    if not (qkv.dtype is f32 and store.dtype is f32 and out.dtype is f32 and ancestors.dtype is torch.int64
            and qkv.is_cpu and store.device.type == "cpu" and out.is_cpu and ancestors.is_cpu):
        raise ValueError("self_attention_step: float32 tensors and int64 ancestors on the CPU only")
    width = heads * (2 * d_k + d_v)
    if not (qkv.dim() == 2 and qkv.shape == (r, width) and qkv.stride(1) == 1 and qkv.stride(0) >= width and out.shape == (r, heads * d_v)
            and out.stride(1) == 1 and out.stride(0) >= heads * d_v and store.width == heads * (d_k + d_v) and ancestors.is_contiguous()):
        raise ValueError("self_attention_step: shapes or strides other than the documented ones")
    if not 0 <= top <= store.capacity:
        raise IndexError(f"self_attention_step: {top} rows written, in a store of {store.capacity}")
    if not _apart(out, qkv):
        raise ValueError("self_attention_step: out shares memory with qkv")
    store.reserve(top + r)
    status = lib.nmt_self_attention_step(qkv.data_ptr(), qkv.stride(0), store.table.data_ptr(), len(store.chunks), store.shift, top,
                                         ancestors.data_ptr(), out.data_ptr(), out.stride(0), r, heads, t, d_k, d_v, d_k**-0.5)
    if status:
        raise MemoryError(f"self_attention_step: no memory for the weights of {t + 1} positions") if status == 1 else \
            IndexError(f"self_attention_step: an ancestor outside the store's {top} written rows")


def _apart(a: Tensor, b: Tensor) -> bool:
    """Whether two float32 tensors' memory spans (first to last element) do not overlap."""
    def span(t: Tensor) -> tuple[int, int]:
        last = sum((size - 1) * stride for size, stride in zip(t.shape, t.stride())) if t.numel() else -1
        return t.data_ptr(), t.data_ptr() + 4 * (last + 1)
    (a0, a1), (b0, b1) = span(a), span(b)
    return a1 <= b0 or b1 <= a0


def store_of(cache_k: Tensor, cache_v: Tensor, rows: Tensor | None, shift: int = 10) -> tuple[Store, int, Tensor]:
    """Caches laid out as torch's path keeps them, (R_old, heads, t, d_k | d_v), as ``self_attention_step``
    reads them instead: a store (chunks of ``2**shift`` rows) whose row j·R_old + a holds hypothesis a's
    position j, and the ancestors of the hypotheses that continue ``rows`` (None: each its own). Returns
    (store, rows written, ancestors)."""
    old, heads, t, _ = cache_k.shape
    width = heads * (cache_k.size(3) + cache_v.size(3))
    both = torch.cat([cache_k, cache_v], dim=3).permute(2, 0, 1, 3).reshape(t * old, width)  # (t·R_old, heads·(d_k + d_v))
    store = Store(width, both.dtype, both.device, shift)
    store.reserve(t * old)
    size = 1 << shift
    for i, chunk in enumerate(store.chunks):
        part = both[i * size : (i + 1) * size]
        chunk[: part.size(0)] = part
    continued = torch.arange(old) if rows is None else rows
    return store, t * old, (torch.arange(t) * old + continued[:, None]).contiguous()


def cross_layout(keys: Tensor, values: Tensor, bias: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """A search's cross-attention keys (G, S, d_k), values (G, S, d_v) and bias (G, 1, S) (G = sentences ×
    heads; the bias 0 for source tokens, -inf for padding) as ``cross_attention_step`` reads them: positions
    padded to a multiple of 16 (keys and values 0, bias -inf), the keys transposed to (G, d_k, S')."""
    extra = -keys.size(1) % 16
    keys_t = F.pad(keys, (0, 0, 0, extra)).transpose(1, 2).contiguous()
    return keys_t, F.pad(values, (0, 0, 0, extra)).contiguous(), F.pad(bias, (0, extra), value=float("-inf")).contiguous()


def cross_attention_step(q: Tensor, keys_t: Tensor, values: Tensor, bias: Tensor, out: Tensor, heads: int, beam: int) -> None:
    """One decoding step's cross-attention, float32 on a CPU: queries ``q`` (N·beam, heads·d_k), ``beam``
    consecutive rows per sentence, against each sentence's keys and values as ``cross_layout`` arranged them
    (G = N·heads blocks); writes each head's output into ``out`` (N·beam, heads·d_v; rows apart, sharing no
    memory with the inputs). Equal to ``attend_heads`` over each sentence's keys and values, up to rounding,
    and bitwise the same however far the batch pads its sources (padding weighs exactly 0; a source's
    trailing blocks of padding are skipped)."""
    lib = _required("cross_attention_step")
    _cross(lib, q, keys_t, values, bias, out, heads, beam)


def _cross(lib: ctypes.CDLL, q: Tensor, keys_t: Tensor, values: Tensor, bias: Tensor, out: Tensor, heads: int, beam: int) -> None:
    g, d_k, s = keys_t.shape
    d_v, rows = values.shape[2], g // heads * beam
    f32 = torch.float32
    if not (q.dtype is f32 and keys_t.dtype is f32 and values.dtype is f32 and bias.dtype is f32 and out.dtype is f32
            and q.is_cpu and keys_t.is_cpu and values.is_cpu and bias.is_cpu and out.is_cpu):
        raise ValueError("cross_attention_step: float32 tensors on the CPU only")
    if not (s % 16 == 0 and g % heads == 0 and values.shape == (g, s, d_v) and bias.numel() == g * s and q.shape == (rows, heads * d_k)
            and out.shape == (rows, heads * d_v) and q.stride(1) == 1 and out.stride(1) == 1 and q.stride(0) >= heads * d_k
            and out.stride(0) >= heads * d_v
            and keys_t.is_contiguous() and values.is_contiguous() and bias.is_contiguous()):
        raise ValueError(f"cross_attention_step: {q.size(0)} queries for {g // heads} sentences of beam {beam}, or keys, values "
                         "and bias other than cross_layout makes them")
    if not all(_apart(out, t) for t in (q, keys_t, values, bias)):
        raise ValueError("cross_attention_step: out shares memory with an input")
    status = lib.nmt_cross_attention_step(q.data_ptr(), q.stride(0), keys_t.data_ptr(), values.data_ptr(), bias.data_ptr(), out.data_ptr(),
                                          out.stride(0), g, heads, beam, s, d_k, d_v, d_k**-0.5)
    if status:
        raise MemoryError(f"cross_attention_step: no memory for the weights of {s} positions")


@dataclass(frozen=True)
class Panels:
    """A weight (N, K) and its bias as ``linear`` reads them: the weight in panels of ``nmt_linear_panel()``
    columns, (ceil(N / panel), K, panel), the bias padded to as many columns; both padded with zeros."""

    weight: Tensor
    bias: Tensor
    out_features: int
    in_features: int

    def __post_init__(self) -> None:
        # Checked once here, so that a product need only compare the panel width with its library's: the C
        # code reads whole panels of weight and bias.
        w, b, n, k = self.weight, self.bias, self.out_features, self.in_features
        width = w.size(2) if w.dim() == 3 else 0
        if not (width and w.dtype is torch.float32 and b.dtype is torch.float32 and w.is_cpu and b.is_cpu and w.is_contiguous()
                and b.is_contiguous() and w.shape == (-(-n // width), k, width) and b.numel() == w.size(0) * width):
            raise ValueError(f"Panels: panels other than pack_linear makes (weight {tuple(w.shape)}, bias of {b.numel()}, {n} × {k})")


def pack_linear(weight: Tensor, bias: Tensor | None = None) -> Panels:
    """``weight`` (N, K) and ``bias`` (N,) or None, float32 on a CPU, arranged for ``linear``."""
    lib = _required("pack_linear")
    return _pack(lib, weight, bias)


def _pack(lib: ctypes.CDLL, weight: Tensor, bias: Tensor | None) -> Panels:
    if not (weight.dtype is torch.float32 and weight.is_cpu and weight.dim() == 2) or (
            bias is not None and not (bias.dtype is torch.float32 and bias.is_cpu and bias.shape == weight.shape[:1])):
        raise ValueError("pack_linear: a float32 CPU weight (N, K) and bias (N,) or None only")
    panel = lib.panel
    (n, k), extra = weight.shape, -weight.size(0) % panel
    with torch.no_grad():
        panels = F.pad(weight.detach(), (0, 0, 0, extra)).view(-1, panel, k).transpose(1, 2).contiguous()
        b = weight.new_zeros(n) if bias is None else bias.detach()
        return Panels(panels, F.pad(b, (0, extra)).contiguous(), n, k)


def linear(x: Tensor, panels: Panels, relu: bool = False) -> Tensor:
    """``F.linear(x, weight, bias)`` (then ReLU if ``relu``) for x (M, K) float32 on a CPU with unit inner
    stride, the weight and bias as ``pack_linear`` arranged them; a new (M, N) tensor. Each output is one
    multiply-add chain over K in order (fused where the CPU has FMA), then the bias: a row's result is the same whatever the other
    rows, and whatever the number of threads a large product is shared among."""
    lib = _required("linear")
    return _linear(lib, x, panels, relu)


def _fits(lib: ctypes.CDLL, panels: Panels, caller: str) -> None:
    """Refuses panels packed for another build's panel width (``NMT_NATIVE_MARCH``); their layout was checked
    when they were made."""
    if panels.weight.size(2) != lib.panel:
        raise ValueError(f"{caller}: panels other than pack_linear makes for this library (panels of {lib.panel} columns)")


def _linear(lib: ctypes.CDLL, x: Tensor, panels: Panels, relu: bool) -> Tensor:
    _fits(lib, panels, "linear")
    if not (x.dtype is torch.float32 and x.is_cpu and x.dim() == 2 and x.shape[1] == panels.in_features and x.stride(1) == 1
            and (x.stride(0) >= panels.in_features or x.shape[0] <= 1)):
        raise ValueError(f"linear: float32 CPU rows of {panels.in_features} with unit inner stride only, not {tuple(x.shape)}")
    m, n = x.shape[0], panels.out_features
    y = x.new_empty(m, n)
    if m:
        lib.nmt_linear(x.data_ptr(), x.stride(0), m, panels.weight.data_ptr(), panels.bias.data_ptr(), panels.in_features, n,
                       int(relu), y.data_ptr(), n)
    return y


TOP_K_MOST = 64  # the most entries per row that output_top_k keeps


def output_top_k(x: Tensor, panels: Panels, k: int, banned: Tensor, also: int) -> tuple[Tensor, Tensor, Tensor]:
    """What a beam search needs of ``log_softmax(F.linear(x, weight, bias))`` (the output projection, packed by
    ``pack_linear``), without the (R, V) log-probabilities ever being written: each row's ``k`` (1-64) best,
    largest first, with their columns (the ``banned`` columns, int64, excluded, though they count in the
    softmax's sum), and each row's log-probability at column ``also`` (-inf for none). x (R, K) float32 on a
    CPU with unit inner stride. Returns (values (R, k), columns (R, k) int64, also (R,)): of equal values the
    lower column first; a row with fewer than k finite values ends with -inf at columns 0, 1, .... Each row's
    results depend on that row alone."""
    return _output_top_k(_required("output_top_k"), x, panels, k, banned, also)


def _output_top_k(lib: ctypes.CDLL, x: Tensor, panels: Panels, k: int, banned: Tensor, also: int) -> tuple[Tensor, Tensor, Tensor]:
    _rows(x, "output_top_k")
    _fits(lib, panels, "output_top_k")
    if x.size(1) != panels.in_features or not 1 <= k <= TOP_K_MOST or banned.dtype is not torch.int64 or not banned.is_contiguous() or not banned.is_cpu:
        raise ValueError(f"output_top_k: rows of {panels.in_features}, k 1-64 and contiguous int64 banned columns on the CPU only")
    m = x.size(0)
    values, columns, also_values = x.new_empty(m, k), torch.empty(m, k, dtype=torch.int64), x.new_empty(m)
    if m and lib.nmt_output_top_k(x.data_ptr(), x.stride(0), m, panels.weight.data_ptr(), panels.bias.data_ptr(), panels.in_features,
                                  panels.out_features, k, banned.data_ptr(), banned.numel(), also, values.data_ptr(),
                                  columns.data_ptr(), also_values.data_ptr()):
        raise MemoryError(f"output_top_k: no memory for the state of {m} rows")
    return values, columns, also_values


def _rows(x: Tensor, caller: str) -> None:
    if not (x.dtype is torch.float32 and x.is_cpu and x.dim() == 2 and x.stride(1) == 1 and (x.stride(0) >= x.size(1) or x.size(0) <= 1)):
        raise ValueError(f"{caller}: float32 CPU rows with unit inner stride only, not {x.dtype} {tuple(x.shape)} strides {x.stride()}")


def _agrees(lib: ctypes.CDLL) -> bool:
    """Whether the library computes what torch does on small cases: a reorder, a padded source, products, the
    output pass."""
    g = torch.Generator().manual_seed(0)
    # Head widths that take the vector code and widths that do not; scores within one 16-float block and
    # across several.
    for heads, d_k, d_v, t, s in ((2, 16, 32, 5, 7), (2, 8, 12, 5, 7), (1, 24, 20, 20, 40)):
        n, beam = 2, 3
        qkv = torch.randn(n * beam, heads * (2 * d_k + d_v), generator=g)
        cache_k, cache_v = torch.randn(4, heads, t, d_k, generator=g), torch.randn(4, heads, t, d_v, generator=g)
        rows = torch.tensor([3, 0, 3, 1, 1, 2])
        out = torch.zeros(n * beam, heads * d_v)
        keys, values = torch.randn(n * heads, s, d_k, generator=g), torch.randn(n * heads, s, d_v, generator=g)
        bias = torch.zeros(n * heads, 1, s)
        bias[heads:, :, 4:] = float("-inf")  # the second source is shorter
        cross = torch.zeros(n * beam, heads * d_v)
        store, top, ancestors = store_of(cache_k, cache_v, rows, shift=3)  # chunks of 8 rows: rows across chunks
        try:
            _step(lib, qkv, store, top, ancestors, out, heads, d_k, d_v)
            _cross(lib, qkv[:, : heads * d_k], *cross_layout(keys, values, bias), cross, heads, beam)
        except (MemoryError, ctypes.ArgumentError):
            return False
        parts = qkv.view(n * beam, heads, 1, -1)
        want_k = torch.cat([cache_k[rows], parts[..., d_k : 2 * d_k]], 2)
        want_v = torch.cat([cache_v[rows], parts[..., 2 * d_k :]], 2)
        want = ((parts[..., :d_k] @ want_k.transpose(-1, -2) * d_k**-0.5).softmax(-1) @ want_v).view(n * beam, heads * d_v)
        q = qkv[:, : heads * d_k].view(n, beam, heads, d_k).transpose(1, 2)  # (N, heads, beam, d_k)
        scores = q @ keys.view(n, heads, s, d_k).transpose(-1, -2) * d_k**-0.5 + bias.view(n, heads, 1, s)
        want_cross = (scores.softmax(-1) @ values.view(n, heads, s, d_v)).transpose(1, 2).reshape(n * beam, heads * d_v)
        stored = store.rows(top, n * beam).view(n * beam, heads, d_k + d_v)
        if not (torch.equal(stored[..., :d_k], parts[:, :, 0, d_k : 2 * d_k]) and torch.equal(stored[..., d_k:], parts[:, :, 0, 2 * d_k :])
                and torch.allclose(out, want, rtol=1e-5, atol=1e-6)
                and torch.allclose(cross, want_cross, rtol=1e-5, atol=1e-6)):
            return False
    # Products: a width that fills no whole panel, every row count of a block and its remainders; the output
    # pass's best log-probabilities over the same weights, a banned column and the one asked for.
    for n, k, relu in ((37, 24, False), (130, 16, True)):
        weight, bias, x = torch.randn(n, k, generator=g), torch.randn(n, generator=g), torch.randn(13, k, generator=g)
        panels = _pack(lib, weight, bias)
        want = F.linear(x, weight, bias)
        lprobs = want.log_softmax(-1)
        want = want.relu() if relu else want
        if not all(torch.allclose(_linear(lib, x[:m], panels, relu), want[:m], rtol=1e-5, atol=1e-5) for m in (1, 5, 13)):
            return False
        values, columns, also = _output_top_k(lib, x, panels, 4, torch.tensor([0]), 3)
        best = lprobs.index_fill(1, torch.tensor([0]), float("-inf")).topk(4, dim=1)
        if not (torch.allclose(values, best.values, rtol=1e-5, atol=1e-5) and torch.equal(columns, best.indices)
                and torch.allclose(also, lprobs[:, 3], rtol=1e-5, atol=1e-5)):
            return False
    return True
