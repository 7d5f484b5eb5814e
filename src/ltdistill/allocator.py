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

One more glibc behaviour needs the environment, because glibc reads it only when a process starts:
PyTorch allocates tensors with `posix_memalign(64, n)`, which carves the aligned block out of a
slightly larger one and frees the small leftover pieces into the per-thread cache (tcache), whose
chunks are never merged with their neighbours. The freed block then stays fenced off from the top
of the heap and is a few bytes too small for the next request of the same size, so every
activation-sized tensor lands on fresh, page-faulted memory after all (measured: 12,800 page faults
for each new 52 MB tensor, an element-wise multiply 10.5 instead of 3.0 ms; the segmented MTT
iteration at the reference setting took ~1.9 million page faults). `job_environment()` gives the
GLIBC_TUNABLES setting that turns the tcache off (glibc.malloc.tcache_count=0) and repeats the two
settings above; the Snakefile puts it in the environment of every job it starts, and the benchmarks
start their measured processes with it. `tcache_disabled()` tells whether this process has it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
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
    _applied = mallopt(M_MMAP_MAX, 0) == 1
    # job_environment's tunable (1 TiB) is above what mallopt can set (an int): keep it
    if "glibc.malloc.trim_threshold=" not in os.environ.get("GLIBC_TUNABLES", ""):
        _applied = _applied and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    _libc = libc if _applied else None
    return _applied


def is_tuned() -> bool:
    """Whether `tune_allocator` changed malloc in this process (recorded in provenance)."""
    return _applied


def tcache_disabled() -> bool:
    """Whether this process was started with glibc's tcache off (`job_environment`)."""
    return "glibc.malloc.tcache_count=0" in os.environ.get("GLIBC_TUNABLES", "")


#: the GLIBC_TUNABLES of policy "auto": no tcache, no mmap for malloc, no trimming below 1 TiB
AUTO_TUNABLES = ("glibc.malloc.tcache_count=0", "glibc.malloc.mmap_max=0",
                 f"glibc.malloc.trim_threshold={2**40}")


def job_environment(policy: str = "auto", environ: dict[str, str] | None = None) -> dict[str, str]:
    """Environment variables to start a job process with under `policy`: GLIBC_TUNABLES with
    AUTO_TUNABLES added to what `environ` (default os.environ) already sets (a setting the user made
    for the same tunable wins). Empty for policy "system" and off Linux."""
    if policy not in POLICIES:
        raise ValueError(f"runtime.allocator must be one of {', '.join(POLICIES)}, got {policy!r}")
    if policy == "system" or not sys.platform.startswith("linux"):
        return {}
    current = (os.environ if environ is None else environ).get("GLIBC_TUNABLES", "")
    items = [t for t in current.split(":") if t]
    names = {t.split("=", 1)[0] for t in items}
    items += [t for t in AUTO_TUNABLES if t.split("=", 1)[0] not in names]
    return {"GLIBC_TUNABLES": ":".join(items)}


def ensure_job_environment(policy: str = "auto") -> None:
    """Restart this Python program (same interpreter and arguments) with `job_environment(policy)`
    when its environment lacks it: for command-line tools such as the benchmarks, whose measured
    processes should allocate as workflow jobs do. Returns normally when nothing is missing."""
    env = job_environment(policy)
    if env and any(os.environ.get(k) != v for k, v in env.items()):
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **env})


def release_free_memory() -> None:
    """Give the free pages of a tuned heap back to the kernel (malloc_trim), for a caller that has
    just freed a large working set and will build a different one (a segment of an unrolled
    graph): without it the next working set lands partly beside the freed one, which raises peak
    RSS. A no-op unless `tune_allocator` applied, and when the tcache is off: then the freed
    blocks are reused in place (peak RSS of the segmented MTT reference iteration 3.2 GB without
    trimming against 3.0 GB with it), and trimming only made the next segment page-fault its
    whole working set again (14.4 vs 12.5 s per iteration)."""
    if _libc is not None and not tcache_disabled():
        _libc.malloc_trim(0)
