"""benchmarks/harness.py's same-host reference table: best of reps on each side, the speedup
their ratio (hand-computed), rows only for pairs that ran."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def _harness():
    path = Path(__file__).resolve().parents[2] / "benchmarks/harness.py"
    spec = importlib.util.spec_from_file_location("harness_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_same_host_reference_table():
    report = {"machine": {"date": "d", "cpu_count": 2, "torch": "t", "threads": 2,
                          "matmul_gflops": 100.0},
              "command": "harness.py", "kernels": [], "seed_batching": [],
              "same_host_reference": {"runs": {
                  "straightforward": [{"seconds": 30.0}, {"seconds": 24.0}],
                  "ltdistill_segmented": [{"seconds": 13.0}, {"seconds": 12.0}],
                  "straightforward_dm": [{"seconds": 2.0}],
                  "ltdistill_dm": [{"seconds": 1.6}]}}}
    md = _harness().markdown(report)
    assert "| segmented | 24.00 | 12.00 | 2.00x |" in md  # best of reps: 24 / 12
    assert "| dm | 2.00 | 1.60 | 1.25x |" in md
    assert "| whole |" not in md and "| dc |" not in md  # pairs that did not run
