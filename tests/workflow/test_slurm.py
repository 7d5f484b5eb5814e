"""The tiny benchmark through a real SLURM scheduler: a one-node cluster (munge, slurmctld,
slurmd from Debian's packages, started by scripts/local_slurm.sh) and `--profile profiles/slurm`
(snakemake-executor-plugin-slurm). Every job is submitted with sbatch; the test checks the
outputs, that SLURM ran the jobs (per-job SLURM logs) and prints the job count and wall time.

Skips, with the reason, when the cluster cannot be started here (not root, packages missing).
CI installs them (`.ci/run`); locally: apt-get install slurm-wlm munge."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from .conftest import ROOT, copy_workflow, smk

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def _stop_cluster() -> None:
    """Stop the daemons and remove the slurm.conf that start wrote: left behind without a
    controller, it makes every later `snakemake` command wait ~9 s in the SLURM plugin's import."""
    subprocess.run(["bash", str(ROOT / "scripts/local_slurm.sh"), "stop"], capture_output=True,
                   timeout=60)


def _cluster_or_skip(request: pytest.FixtureRequest) -> None:
    if os.geteuid() != 0:
        pytest.skip("SLURM test: needs root to start munge/slurmctld/slurmd")
    missing = [b for b in ("slurmctld", "slurmd", "munged", "sbatch") if not shutil.which(b)]
    if missing:
        pytest.skip(f"SLURM test: {', '.join(missing)} not installed (apt-get install slurm-wlm munge)")
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        pytest.skip("SLURM test: pip install snakemake-executor-plugin-slurm")
    if not Path("/usr/share/datasets/fashion-mnist").exists():
        pytest.skip("SLURM test: needs dataset-fashion-mnist")
    request.addfinalizer(_stop_cluster)
    out = subprocess.run(["bash", str(ROOT / "scripts/local_slurm.sh"), "start"], text=True,
                         capture_output=True, timeout=180)
    if out.returncode != 0:
        pytest.skip(f"SLURM test: could not start the local cluster: {out.stderr[-800:]}")
    state = subprocess.run(["sinfo", "-h", "-o", "%T"], text=True, capture_output=True).stdout
    if not any(s in state for s in ("idle", "mixed", "allocated")):
        pytest.skip(f"SLURM test: node not usable (sinfo: {state.strip()})")


def _slurm_config(wdir: Path) -> Path:
    """The tiny config cut to one expert-based method and one selection baseline, so the
    scheduler round trips (not the training) dominate and the test stays a few minutes."""
    cfg = yaml.safe_load((wdir / "config/tiny.yaml").read_text())
    cfg["methods"] = ["full", "random", "mtt"]
    cfg["method_params"] = {k: cfg["method_params"][k] for k in cfg["methods"]}
    cfg["experts"] = {"mtt": cfg["experts"]["mtt"]}
    fm = cfg["datasets"]["fashion_mnist"]
    fm["zca_methods"] = [m for m in fm.get("zca_methods", []) if m in cfg["methods"]]
    cfg["evaluation"]["seeds"] = [0]
    cfg["evaluation"]["cross_arch"] = []
    cfg["evaluation"].pop("protocol_b", None)
    cfg.pop("two_stage", None)
    cfg["report"]["method_order"] = cfg["methods"]
    path = wdir / "config/slurm_test.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_tiny_benchmark_through_slurm(tmp_path: Path, request: pytest.FixtureRequest):
    _cluster_or_skip(request)
    wdir = copy_workflow(tmp_path / "wf")
    _slurm_config(wdir)
    start = time.perf_counter()
    out = smk("--profile", "profiles/slurm", "--jobs", "4", "--configfile", "config/slurm_test.yaml",
              cwd=wdir, timeout=1500)
    wall = time.perf_counter() - start
    assert out.returncode == 0, (out.stdout + out.stderr)[-5000:]
    tidy = pd.read_csv(wdir / "results/tables/evaluations.csv")
    assert set(tidy["method"]) == {"full", "random", "mtt"} and (tidy["status"] == "ok").all()
    assert (wdir / "results/tables/main.md").read_text().count("±") >= 3
    slurm_logs = list((wdir / "logs/slurm").rglob("*.log"))
    submitted = [line for line in (out.stdout + out.stderr).splitlines()
                 if "submitted" in line.lower() and "slurm" in line.lower()]
    assert slurm_logs, "no per-job SLURM logs: jobs did not go through sbatch"
    print(f"SLURM test: {len(slurm_logs)} jobs ran through sbatch ({len(submitted)} submission "
          f"lines), wall time {wall:.0f}s")
