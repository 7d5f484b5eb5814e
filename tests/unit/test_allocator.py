"""runtime.allocator: `auto` keeps freed tensor memory in the process (glibc), so a large tensor
allocated again is not page-faulted again; `system` leaves malloc alone; bad values are named."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ltdistill.allocator import tune_allocator

PROBE = """
import resource, sys, torch
from ltdistill.allocator import tune_allocator
print(tune_allocator(sys.argv[1]))
x = torch.ones(16 * 2**20)  # 64 MB
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(40):
    y = x * 2.0  # a fresh 64 MB result, freed when y is rebound
    del y
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(policy: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, policy], capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_auto_stops_refaulting_large_tensors():
    tuned, tuned_faults = _faults("auto")
    untuned, untuned_faults = _faults("system")
    assert (tuned, untuned) == ("True", "False")
    pages = 40 * 16 * 2**20 * 4 // 4096  # every result page faulted once per allocation
    assert untuned_faults >= 0.9 * pages  # the default: mmap / munmap per tensor
    assert tuned_faults < 0.3 * pages  # tuned: the heap grows a few times, then is reused


def test_bad_policy_is_named():
    with pytest.raises(ValueError, match="runtime.allocator must be one of auto, system"):
        tune_allocator("jemalloc")
    assert tune_allocator("system") is False


def test_job_environment_adds_the_tunables_and_keeps_the_users():
    from ltdistill.allocator import AUTO_TUNABLES, job_environment

    assert job_environment("auto", {}) == {"GLIBC_TUNABLES": ":".join(AUTO_TUNABLES)}
    assert "glibc.malloc.tcache_count=0" in AUTO_TUNABLES
    # a value the user chose for a tunable is kept; other tunables of theirs stay too
    env = job_environment("auto", {"GLIBC_TUNABLES": "glibc.malloc.tcache_count=3:glibc.cpu.x=1"})
    items = env["GLIBC_TUNABLES"].split(":")
    assert items[:2] == ["glibc.malloc.tcache_count=3", "glibc.cpu.x=1"]
    assert [t.split("=")[0] for t in items].count("glibc.malloc.tcache_count") == 1
    assert "glibc.malloc.mmap_max=0" in items
    assert job_environment("system", {}) == {}
    with pytest.raises(ValueError, match="auto, system"):
        job_environment("fast", {})


MEMALIGN = """
import ctypes, resource
libc = ctypes.CDLL("libc.so.6")
libc.posix_memalign.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t, ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
n, faults = 52428800, []
for _ in range(4):  # what PyTorch does for every CPU tensor: 64-byte aligned blocks
    p = ctypes.c_void_p()
    libc.posix_memalign(ctypes.byref(p), 64, n)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    ctypes.memset(p, 1, n)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    libc.free(p)
print(sum(faults[1:]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_job_environment_lets_aligned_blocks_be_reused():
    """posix_memalign + free of a 52 MB block, three times more: with mmap off but the tcache on
    each block lands on fresh pages (12,800 faults each); with job_environment's tunables the
    freed block is reused."""
    import os

    from ltdistill.allocator import job_environment

    def faults(env: dict[str, str]) -> int:
        out = subprocess.run([sys.executable, "-c", MEMALIGN], capture_output=True, text=True,
                             check=True, env={**os.environ, **env})
        return int(out.stdout)

    pages = 3 * 52428800 // 4096
    assert faults({"GLIBC_TUNABLES": "glibc.malloc.mmap_max=0"}) >= 0.9 * pages
    assert faults(job_environment("auto", {})) < 0.05 * pages
