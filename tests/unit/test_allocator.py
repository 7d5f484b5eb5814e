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
