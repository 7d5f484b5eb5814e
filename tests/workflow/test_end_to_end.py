"""The tiny config end to end on CPU (real Fashion-MNIST), then: the HTML report builds, a
plotting-code edit reruns only plotting rules, and a rerun after completion does nothing.
Run: pytest tests/workflow/test_end_to_end.py -q  (about a minute on 2 cores)"""

from __future__ import annotations

import json
import shutil
import sys
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


ALL_METHODS = {"full", "random", "herding", "k_center", "dc", "dsa", "dm", "mtt", "datm", "damed",
               "sre2l", "rded", "rldd", "dm_diverges"}
SOFT = {"datm", "damed", "sre2l", "rded", "rldd"}  # soft-label methods also get `hard` (HLR)


def test_outputs_exist_and_are_consistent(ran: Path):
    tidy = pd.read_csv(ran / "results/tables/evaluations.csv")
    assert set(tidy["method"]) == ALL_METHODS
    conv = tidy[tidy.model == "convnet"]
    # every method x 2 seeds: protocol_a (all but rldd), hard (soft-label sets, rldd included),
    # protocol_b
    assert set(conv[conv.recipe == "protocol_a"]["method"]) == ALL_METHODS - {"rldd"}
    assert set(conv[conv.recipe == "hard"]["method"]) == SOFT
    assert set(conv[conv.recipe == "protocol_b"]["method"]) == {"random", "rldd"}
    assert (conv.groupby(["method", "recipe"]).size() == 2).all()
    assert len(conv) == 2 * (13 + len(SOFT) + 2)
    # the cross-architecture entry names two methods: their records again with AlexNet
    alex = tidy[tidy.model == "alexnet"]
    assert sorted(alex.groupby(["method", "recipe"]).size().items()) == [
        (("datm", "hard"), 2), (("datm", "protocol_a"), 2), (("random", "protocol_a"), 2),
        (("random", "protocol_b"), 2)]
    ok = tidy[tidy.method != "dm_diverges"]
    assert (ok["status"] == "ok").all(), ok[ok.status != "ok"][["method", "reason"]]
    assert ok["top1"].between(0, 1).all()
    for ext in ("md", "tex", "csv"):
        assert (ran / f"results/tables/main.{ext}").stat().st_size > 0
    main = (ran / "results/tables/main.md").read_text()
    assert "| Random |" in main and "±" in main  # display names, not slugs
    assert "| DAMED |" in main and "| MTT |" in main and "| DC |" in main
    protocol_b = (ran / "results/tables/protocol_b.md").read_text()
    assert "| RLDD |" in protocol_b and "| Random |" in protocol_b
    assert "Group Acc" in (ran / "results/tables/two_stage.md").read_text()
    hlr = (ran / "results/tables/hlr_ior.md").read_text()
    assert "| RLDD (B) |" in hlr and "| DATM |" in hlr  # Protocol-B-only methods get HLR/IOR too
    assert (ran / "results/figures/tsne/fashion_mnist_if10.png").stat().st_size > 1000
    assert (ran / "results/figures/images/fashion_mnist/if10/ipc2/random/s0.png").exists()
    record = json.loads(next((ran / "results/evaluation").rglob("seed0.json")).read_text())
    prov = record["provenance"]
    assert {"git_commit", "versions", "device", "wall_time_s"} <= set(prov)
    # tiny.yaml's runtime: micro_batch, allocator and native kernels default to auto, amp and
    # compile to off, one thread, not deterministic, and the Snakefile started the job with
    # glibc's tcache off (allocator.job_environment); the native kernels loaded where a C++
    # compiler exists (CI installs g++)
    linux = sys.platform.startswith("linux")
    compiler = bool(shutil.which("c++") or shutil.which("g++"))
    assert prov["runtime"] == {"micro_batch": "auto", "amp": "off", "compile": "off",
                               "native_kernels": "auto:loaded" if linux and compiler
                               else "auto:unavailable",
                               "allocator_tuned": linux, "malloc_tcache_off": linux,
                               "deterministic": False, "threads": 1}
    assert record["lt_test"] is not None  # tiny config enables the LT test split


def test_divergence_is_recorded_and_the_dag_completes(ran: Path):
    """dm_diverges (lr_img 1e38) overflows: a failure record, not a crash; '–' plus a footnote."""
    tidy = pd.read_csv(ran / "results/tables/evaluations.csv")
    bad = tidy[tidy.method == "dm_diverges"]
    assert len(bad) and (bad.status == "failed").all()
    assert bad.reason.str.contains("dm_diverges diverged").all()
    main = (ran / "results/tables/main.md").read_text()
    row = next(line for line in main.splitlines() if line.startswith("| dm_diverges"))
    assert "–" in row and "[1]" in row
    assert "failed: dm_diverges diverged" in main
    assert (ran / "results/figures/images/fashion_mnist/if10/ipc2/dm_diverges/s0.png").exists()
    from ltdistill.reporting.failures import summary

    n, text = summary(ran / "results/tables/evaluations.csv")
    assert n == 1 and "dm_diverges on fashion_mnist IF 10 IPC 2" in text


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


def test_benchmark_harness_reads_the_run(ran: Path, tmp_path: Path):
    """benchmarks/harness.py at toy size on the tiny run: figures for every stage, no timing
    assertions (speed is measured by the harness, not by tests)."""
    import importlib.util

    from .conftest import ROOT

    spec = importlib.util.spec_from_file_location("harness", ROOT / "benchmarks/harness.py")
    harness = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(harness)
    report = harness.main(["--toy", "--run-dir", str(ran), "--config", str(ran / "config/tiny.yaml"),
                           "--out", str(tmp_path / "h")])
    assert report["machine"]["matmul_gflops"] > 0
    assert {k["channels_last"] for k in report["kernels"]} == {True, False}
    assert all(k["gflop_per_step"] > 0 for k in report["kernels"])
    # the native-kernel rows count the same work as the stock rows (the stock operations' FLOPs)
    stock = next(k for k in report["kernels"] if not k["native"] and not k["channels_last"])
    fast = [k for k in report["kernels"] if k["native"]]
    assert len(fast) == (2 if shutil.which("c++") or shutil.which("g++") else 0)
    assert all(k["gflop_per_step"] == stock["gflop_per_step"] for k in fast)
    # the convolution bound: blocks 2-3 of width 8, batch 16, forward + dW + dX, counted by hand
    bound = report["conv_bound"][0]
    work = bound["gemm_conv_gflops"] * bound["gemm_conv_ms"] / 1e3
    assert work == pytest.approx(3 * 2 * 9 * 8 * 8 * (16 * 16 + 8 * 8) * 16 / 1e9)
    assert 0 < bound["share_of_step"] and bound["ceiling_gflops"] > 0
    p = report["pipeline"]
    methods = {d["method"] for d in p["distill"]}
    assert methods == ALL_METHODS
    assert next(d for d in p["distill"] if d["method"] == "dm")["iterations"] == 3
    assert any("mtt" in e["job"] for e in p["experts"]) and p["grid_wall_s"] > 0
    assert any(k.startswith("random (protocol_a") for k in p["evaluation_images_per_s"])
    assert (tmp_path / "h.md").read_text().startswith("# ltdistill benchmark harness")
    # the targets' FLOPs: a toy (width 8) training step on 3x32x32, counted by hand: forward of
    # the three convolutions and the classifier, backward twice that except the first
    # convolution's input gradient (the input needs none)
    w = 8
    conv1, conv2, conv3, lin = 2 * 32 * 32 * w * 27, 2 * 16 * 16 * w * w * 9, 2 * 8 * 8 * w * w * 9, 2 * w * 16 * 10
    expert = next(t for t in report["targets"] if t["target"].startswith("expert"))
    assert expert["gflop"] == pytest.approx((3 * (conv1 + conv2 + conv3 + lin) - conv1) / 1e9)
    mtt = next(t for t in report["targets"] if t["target"].startswith("MTT"))
    peak = report["machine"]["matmul_gflops"]
    assert mtt["needed_fraction_of_peak"][1] == pytest.approx(mtt["gflop"] / 10.5 / peak)


def test_interrupted_job_reruns_alone(ran: Path):
    """A job killed before it wrote its output (or a lost output) is all a rerun redoes: the image
    set, its evaluations and the tables built from them; no other distillation, expert or split."""
    lost = sorted((ran / "results/distilled").glob("*/if*/ipc*/dm/s0/image_set.pt"))[0]
    (lost.parent / "image_set.pt.ckpt").write_bytes(b"")  # what a kill would leave beside it
    lost.unlink()
    status = plan(ran, "--configfile", "config/tiny.yaml")
    pending = {f for f, p in status.items() if p != "no update"}
    rel = str(lost.relative_to(ran))
    assert rel in pending
    assert not any(f.startswith(("results/distilled/", "results/experts/", "results/reference/",
                                 "results/splits/", "results/data/")) and f != rel
                   for f in pending), pending
    evals = {f for f in pending if f.startswith("results/evaluation/")}
    assert evals and all("/dm/s0/" in f for f in evals), evals
