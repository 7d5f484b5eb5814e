"""The tiny config end to end on CPU (real Fashion-MNIST), then: the HTML report builds, a
plotting-code edit reruns only plotting rules, and a rerun after completion does nothing.
Run: pytest tests/workflow/test_end_to_end.py -q  (about a minute on 2 cores)"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest

from .conftest import plan, smk

FMNIST = Path("/usr/share/datasets/fashion-mnist")
pytestmark = pytest.mark.skipif(not FMNIST.exists(),
                                reason="needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)")


@pytest.fixture(scope="module")
def ran(tmp_path_factory) -> Path:
    from .conftest import copy_workflow

    wdir = copy_workflow(tmp_path_factory.mktemp("e2e"))
    out = smk("--cores", "2", "--configfile", "config/tiny.yaml", cwd=wdir, timeout=1500)
    assert out.returncode == 0, (out.stdout + out.stderr)[-5000:]
    return wdir


def test_outputs_exist_and_are_consistent(ran: Path):
    tidy = pd.read_csv(ran / "results/tables/evaluations.csv")
    # 4 methods x 2 seeds on convnet, plus the alexnet cross-architecture runs
    assert set(tidy["method"]) == {"full", "random", "herding", "k_center"}
    assert len(tidy[tidy.model == "convnet"]) == 8 and len(tidy[tidy.model == "alexnet"]) == 8
    assert tidy["top1"].between(0, 1).all()
    for ext in ("md", "tex", "csv"):
        assert (ran / f"results/tables/main.{ext}").stat().st_size > 0
    main = (ran / "results/tables/main.md").read_text()
    assert "| Random |" in main and "±" in main  # display names, not slugs
    assert (ran / "results/figures/tsne/fashion_mnist_if10.png").stat().st_size > 1000
    assert (ran / "results/figures/images/fashion_mnist/if10/ipc2/random/s0.png").exists()
    record = json.loads(next((ran / "results/evaluation").rglob("seed0.json")).read_text())
    prov = record["provenance"]
    assert {"git_commit", "versions", "device", "wall_time_s"} <= set(prov)
    assert record["lt_test"] is not None  # tiny config enables the LT test split


def test_rerun_is_a_no_op(ran: Path):
    out = smk("-n", "--cores", "1", "--configfile", "config/tiny.yaml", cwd=ran)
    assert out.returncode == 0 and "Nothing to be done" in out.stdout + out.stderr


def test_report_builds(ran: Path):
    out = smk("--report", "report.html", "--configfile", "config/tiny.yaml", cwd=ran)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (ran / "report.html").stat().st_size > 10_000


def test_plotting_edit_reruns_only_plots(ran: Path):
    time.sleep(1.1)
    figures = ran / "src/ltdistill/reporting/figures.py"
    figures.write_text(figures.read_text() + "\n# cosmetic edit\n")
    status = plan(ran, "--configfile", "config/tiny.yaml")
    pending = {f for f, p in status.items() if p == "update pending"}
    assert "results/figures/accuracy_vs_if.png" in pending
    assert not any(f.startswith(("results/evaluation/", "results/distilled/", "results/reference/",
                                 "results/splits/", "results/data/")) for f in pending), pending
