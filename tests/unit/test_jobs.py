"""The job prelude: the report jobs at the end of every DAG start without importing torch."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_report_jobs_start_and_run_without_torch(tmp_path):
    """start(job, uses_torch=False) sets up logging and OMP_NUM_THREADS and imports no torch, and the
    report functions those jobs call (aggregate, tables, figures) do not import it either."""
    code = textwrap.dedent(f"""
        import os, sys
        from types import SimpleNamespace
        from ltdistill.jobs import start
        job = SimpleNamespace(log=[{str(tmp_path / "job.log")!r}], threads=3, rule="aggregate",
                              wildcards={{}}, config={{"runtime": {{"allocator": "system"}}}})
        start(job, uses_torch=False)
        import ltdistill.reporting.run, ltdistill.reporting.tables, ltdistill.reporting.figures
        print("torch" in sys.modules, os.environ["OMP_NUM_THREADS"])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "3"]
    assert "rule aggregate" in (tmp_path / "job.log").read_text()


def test_training_jobs_get_their_threads_and_policies(tmp_path):
    code = textwrap.dedent(f"""
        from types import SimpleNamespace
        import torch
        from ltdistill import acceleration, microbatch
        from ltdistill.jobs import start
        job = SimpleNamespace(log=[{str(tmp_path / "job.log")!r}], threads=1, rule="evaluate",
                              wildcards={{}}, config={{"runtime": {{"micro_batch": 8, "amp": "bf16",
                                                                    "compile": "on"}}}})
        start(job)
        acc = acceleration.get_acceleration()
        print(torch.get_num_threads(), microbatch.get_micro_batch(), acc["amp"], acc["compile"])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "8", "bf16", "on"]
