"""Failure records: a diverging method leaves a record with the reason (not an image set), its
evaluations record status "failed", tables show "–" with a footnote and the summary lists it."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from ltdistill import pipeline
from ltdistill.data.base import save_dataset_cache
from ltdistill.io import load_image_set
from ltdistill.reporting import failures as F
from ltdistill.reporting.aggregate import collect
from ltdistill.reporting.tables import main_table

from ..conftest import make_raw

NETWORK = {"arch": "convnet", "width": 8, "norms": {}}
RECIPE = {"epochs": 2, "batch_size": 8, "default_lr": 0.01}


@pytest.fixture()
def stage_files(tmp_path):
    raw = make_raw()
    save_dataset_cache(tmp_path / "cache.pt", raw)
    pipeline.split_dataset(tmp_path / "cache.pt", 4, {"n_max": 16}, {"many_above": 10, "few_below": 3},
                           tmp_path / "split.json")
    pipeline.fit_preprocessing(tmp_path / "cache.pt", tmp_path / "split.json", "normalise", 0.1,
                               tmp_path / "prep.pt")
    return tmp_path


def _identity(method: str, eseed: int | None = None) -> dict:
    ident = {"dataset": "toy", "imbalance_factor": 4, "ipc": 2, "method": method, "distill_seed": 0}
    if eseed is not None:
        ident.update(model="convnet", recipe="protocol_a", eval_seed=eseed)
    return ident


def _distill(d, method: str, params: dict) -> None:
    pipeline.distill(d / "cache.pt", d / "split.json", d / "prep.pt", method, params, 2, 0, NETWORK,
                     "cpu", {}, d / f"{method}.pt", _identity(method))


def _evaluate(d, method: str, seed: int) -> str:
    out = d / f"{method}_eval{seed}.json"
    pipeline.evaluate(d / f"{method}.pt", d / "cache.pt", d / "split.json", d / "prep.pt", NETWORK,
                      "convnet", RECIPE, seed, "cpu", _identity(method, seed), out)
    return str(out)


def test_divergence_becomes_a_failure_record(stage_files):
    d = stage_files
    # lr_img 1e38 makes DM's pixels overflow to inf after one step: the loss turns non-finite
    _distill(d, "dm", {"iterations": 3, "lr_img": 1e38, "batch_real": 4, "log_every": 0})
    _distill(d, "random", {"ipc_policy": "inherent"})
    failed = load_image_set(d / "dm.pt")
    assert failed.failed and len(failed.labels) == 0
    assert failed.meta["failure"]["kind"] == "diverged"
    assert "non-finite" in failed.failure_reason and failed.failure_reason.startswith("dm diverged")
    assert not load_image_set(d / "random.pt").failed

    paths = [_evaluate(d, m, s) for m in ("dm", "random") for s in (0, 1)]
    rec = json.loads(open(paths[0]).read())
    assert rec["status"] == "failed" and rec["reason"] == failed.failure_reason
    assert "provenance" in rec and "test" not in rec

    tidy = collect(paths)
    table = main_table(tidy, order=["random", "dm"])
    row = table.frame.loc["dm"].iloc[0]
    assert row.startswith("–")
    assert "failed: dm diverged" in table.markdown and "[1]" in table.markdown
    assert table.frame.loc["random"].iloc[0][0].isdigit()

    tidy_path = d / "evaluations.csv"
    tidy.to_csv(tidy_path, index=False)
    n, text = F.summary(tidy_path)
    assert n == 1 and "dm on toy IF 4 IPC 2 seed 0 (2 evaluations)" in text
    assert F.main([str(tidy_path)]) == F.EXIT_FAILURES


def test_summary_of_a_clean_run(tmp_path):
    pd.DataFrame({"method": ["random"], "dataset": ["toy"], "imbalance_factor": [4], "ipc": [2],
                  "distill_seed": [0], "status": ["ok"], "reason": [None]}).to_csv(
        tmp_path / "t.csv", index=False)
    assert F.summary(tmp_path / "t.csv") == (0, "every evaluation succeeded")
    assert F.main([str(tmp_path / "t.csv")]) == 0


def test_programming_errors_still_fail_the_job(stage_files):
    # only divergence / cannot-run become records; a bad parameter is the user's error to fix
    with pytest.raises(ValueError, match="lr_imgg"):
        _distill(stage_files, "dm", {"lr_imgg": 1.0})


def test_one_job_for_several_seeds_writes_what_per_seed_jobs_write(stage_files):
    """runtime.batch_eval_seeds: one evaluate() call with seeds [0, 1] writes, per seed, the
    metrics that two single-seed calls write (sequential on CPU: identical), with a failure
    record for every seed of a failed image set."""
    d = stage_files
    _distill(d, "random", {"ipc_policy": "inherent"})
    singles = [json.loads(open(_evaluate(d, "random", s)).read()) for s in (0, 1)]
    outs = [d / "b0.json", d / "b1.json"]
    pipeline.evaluate(d / "random.pt", d / "cache.pt", d / "split.json", d / "prep.pt", NETWORK,
                      "convnet", RECIPE, [0, 1], "cpu", _identity("random"), outs,
                      checkpoint_every_s=0.0)
    batched = [json.loads(p.read_text()) for p in outs]
    for one, many, seed in zip(singles, batched, (0, 1), strict=True):
        assert many["eval_seed"] == seed and many["train_seed"] == seed
        assert many["test"] == one["test"] and many["status"] == "ok"
        assert many["provenance"]["config"]["seeds_in_job"] == [0, 1]
    assert batched[0]["test"] != batched[1]["test"]  # the seeds differ
    assert not any(p.with_name(p.name + ".ckpt").exists() for p in outs)  # checkpoints dropped
    _distill(d, "dm", {"iterations": 3, "lr_img": 1e38, "batch_real": 4, "log_every": 0})
    pipeline.evaluate(d / "dm.pt", d / "cache.pt", d / "split.json", d / "prep.pt", NETWORK,
                      "convnet", RECIPE, [0, 1], "cpu", _identity("dm"), outs)
    assert [json.loads(p.read_text())["status"] for p in outs] == ["failed", "failed"]
    with pytest.raises(ValueError, match="2 evaluation seeds but 1 output"):
        pipeline.evaluate(d / "random.pt", d / "cache.pt", d / "split.json", d / "prep.pt",
                          NETWORK, "convnet", RECIPE, [0, 1], "cpu", _identity("random"),
                          outs[:1])
