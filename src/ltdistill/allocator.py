"""Keep freed CPU tensor memory inside the process (glibc malloc), instead of returning it to the
kernel after every large tensor.

glibc serves every allocation above its mmap threshold (at most 32 MB, usually far less) with a
fresh `mmap` and gives it back with `munmap` on free. A ConvNet step allocates and frees dozens of
activation-sized tensors (a 100 x 128 x 32 x 32 float tensor is 52 MB), so every one of them is
page-faulted and zero-filled by the kernel again: measured on 2 cores, an elementwise multiply of
two such tensors took 14-19 ms with the default and 5-6 ms with large blocks kept in the heap, and
the whole-graph exact MTT unroll of width 128 went from 54 to 33 s (docs/performance.md). Small
tensors gain nothing: width-32 evaluation in slices of 32 allocates a few MB at a time, which
glibc's dynamic threshold already keeps (an A/B of one evaluation job: 73-77 vs 77-79 s).

`tune_allocator("auto")` therefore disables mmap for malloc (M_MMAP_MAX = 0, every block comes from
the heap and is reused) and raises the trim threshold to 2 GiB (freed memory at the top of the heap
is returned only above that). The cost is that a process keeps its peak heap until it exits (and
some fragmentation on top of it): peak RSS, which `ltdistill` reports anyway, is what it holds.
It is the same as starting Python with MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647,
applied from inside the process so no launcher has to remember it. `runtime.allocator: system`
leaves malloc alone; on other C libraries (macOS, musl) `auto` does nothing. CUDA memory is
PyTorch's own caching allocator and is not affected.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger("ltdistill.allocator")

M_TRIM_THRESHOLD = -1  # <malloc.h>
M_MMAP_MAX = -4
TRIM_THRESHOLD = 2**31 - 1  # an int: the largest value mallopt takes
POLICIES = ("auto", "system")
_applied = False
_libc = None


def tune_allocator(policy: str = "auto") -> bool:
    """Apply `policy` ("auto" or "system") to this process; returns True when malloc was tuned."""
    global _applied
    if policy not in POLICIES:
        raise ValueError(f"runtime.allocator must be one of {', '.join(POLICIES)}, got {policy!r}")
    if policy == "system" or not sys.platform.startswith("linux"):
        return False
    if _applied:
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        log.debug("no mallopt in this C library: allocator left alone")
        return False
    global _libc
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _applied = mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    _libc = libc if _applied else None
    return _applied


def is_tuned() -> bool:
    """Whether `tune_allocator` changed malloc in this process (recorded in provenance)."""
    return _applied


def release_free_memory() -> None:
    """Give the free pages of a tuned heap back to the kernel (malloc_trim), for a caller that has
    just freed a large working set and will build a different one (a segment of an unrolled
    graph): without it the next working set lands partly beside the freed one, which raises peak
    RSS. A no-op unless `tune_allocator` applied."""
    if _libc is not None:
        _libc.malloc_trim(0)
