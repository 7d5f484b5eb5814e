"""Unit tests for ltdistill.reporting: aggregation, published numbers, tables and figures."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from ltdistill.reporting import aggregate, figures, published, tables

CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
               "truck"]
LT_COUNTS = [500, 300, 200, 120, 90, 60, 40, 25, 15, 5]          # many ×4, medium ×4, few ×2
GROUPS = ["many"] * 4 + ["medium"] * 4 + ["few"] * 2
OFFSETS = np.array([0.05, 0.04, 0.03, 0.02, 0.01, -0.01, -0.02, -0.03, -0.04, -0.05])


def _record(method: str, eval_seed: int, top1: float | None, recipe: str = "protocol_a",
            ipc: int = 10, model: str = "convnet3", reason: str | None = None) -> dict:
    rec = {
        "dataset": "cifar10", "imbalance_factor": 10, "ipc": ipc, "method": method,
        "distill_seed": 0, "model": model, "recipe": recipe, "eval_seed": eval_seed,
        "selection": "damed", "num_classes": 10, "class_names": CLASS_NAMES,
        "lt_counts": LT_COUNTS, "groups": GROUPS, "lr": 0.01, "epochs": 300, "batch_size": 256,
        "soft_labels_used": False, "train_images": 100, "lt_test": None,
        "provenance": {"git_commit": "abc123", "versions": {}, "device": "cpu",
                       "wall_time_s": 12.5},
    }
    if reason is not None:
        rec.update(status="failed", reason=reason)
        return rec
    per_class = (top1 + OFFSETS).tolist()
    shot = {g: float(np.mean([a for a, gg in zip(per_class, GROUPS, strict=True) if gg == g]))
            for g in ("many", "medium", "few")}
    rec["test"] = {
        "top1": top1, "mean_per_class": top1, "per_class": per_class,
        "class_std": float(np.std(per_class)), "shot": shot, "macro_precision": 0.5,
        "macro_recall": top1, "macro_f1": 0.5, "confusion": [[1]],
    }
    rec["status"] = "ok"
    return rec


def _write(tmp_path, records: list[dict]) -> list:
    paths = []
    for k, rec in enumerate(records):
        p = tmp_path / "evaluation" / f"r{k:03d}.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(rec))
        paths.append(p)
    return paths


@pytest.fixture()
def df(tmp_path) -> pd.DataFrame:
    records = [_record("dc", s, a) for s, a in enumerate([0.70, 0.72, 0.74])]
    records += [_record("damed", s, a) for s, a in enumerate([0.80, 0.81, 0.85])]
    records.append(_record("mtt", 0, None, reason="trajectory buffer missing"))
    return aggregate.collect(_write(tmp_path, records))


# --------------------------------------------------------------------------- aggregate

def test_collect_tidy(df):
    assert len(df) == 7
    assert {"top1", "class_std", "many", "medium", "few", "macro_f1", "lt_top1", "status",
            "reason", "wall_time_s", "git_commit", "device", "per_class"} <= set(df.columns)
    dc = df[df["method"] == "dc"].sort_values("eval_seed")
    assert dc["top1"].tolist() == pytest.approx([0.70, 0.72, 0.74])     # fractions, not %
    assert json.loads(dc["per_class"].iloc[0]) == pytest.approx((0.70 + OFFSETS).tolist())
    assert math.isnan(dc["lt_top1"].iloc[0])
    failed = df[df["method"] == "mtt"].iloc[0]
    assert failed["status"] == "failed" and failed["reason"] == "trajectory buffer missing"
    assert math.isnan(failed["top1"])


def test_tidy_csv_round_trip(df, tmp_path):
    aggregate.write_tidy(df, tmp_path / "evaluations.csv")
    back = aggregate.read_tidy(tmp_path / "evaluations.csv")
    assert back["ipc"].dtype == "Int64"
    assert tables.main_table(back).markdown == tables.main_table(df).markdown
    assert len(aggregate.classwise(back)) == len(aggregate.classwise(df))


def test_classwise_long(df):
    long = aggregate.classwise(df)
    assert len(long) == 6 * 10                      # failed record has no classes
    row = long[(long["method"] == "dc") & (long["eval_seed"] == 0)
               & (long["class_index"] == 9)].iloc[0]
    assert row["class_name"] == "truck" and row["group"] == "few" and row["lt_count"] == 5
    assert row["acc"] == pytest.approx(0.65)


# --------------------------------------------------------------------------- main table

def test_main_table_cells_bold_and_failure(df):
    frame, md, tex = tables.main_table(df)
    col = ("cifar10", 10, 10)
    assert frame.loc["dc", col] == "72.0 ± 1.6"     # std ddof 0: sqrt(8/3) = 1.63
    assert frame.loc["damed", col] == "82.0 ± 2.2"  # 0.80, 0.81, 0.85 -> 82.0, 2.16
    assert frame.loc["mtt", col] == "–"
    assert list(frame.index) == ["dc", "mtt", "damed"]          # default order
    assert "**82.0 ± 2.2**" in md and "**72.0" not in md
    assert r"\textbf{82.0 $\pm$ 2.2}" in tex
    assert "–[1]" in md and "[1] failed: trajectory buffer missing" in md
    assert r"--\textsuperscript{1}" in tex and "trajectory buffer missing" in tex


def test_main_table_with_published(df):
    frame, md, _ = tables.main_table(df, published=True)
    col = ("cifar10", 10, 10)
    assert frame.loc["damed (published)", col] == "58.1 ± 0.3"
    assert frame.loc["dc (published)", col] == "37.9 ± 0.9"
    assert "DAMED (published)" in md
    assert "**58.1" not in md                        # published rows never bold


def test_write_table(df, tmp_path):
    paths = tables.write_table(tables.main_table(df), tmp_path / "tables" / "main")
    assert [p.suffix for p in paths] == [".md", ".tex", ".csv"]
    assert all(p.stat().st_size > 0 for p in paths)
    paths = tables.write_table(pd.DataFrame({"a": [1.0], "b": ["x"]}), tmp_path / "plain.csv")
    assert paths[0].name == "plain.md" and "| a | b |" in paths[0].read_text()


# --------------------------------------------------------------------------- published numbers

def test_published_csv():
    pub = published.load_published()
    assert list(pub.columns)[:12] == ["source", "table", "dataset", "imbalance_factor", "ipc",
                                      "method", "model", "metric", "mean", "std", "uncertain",
                                      "note"]

    def cell(dataset, if_, ipc, method, table):
        sel = pub[(pub["dataset"] == dataset) & (pub["imbalance_factor"] == if_)
                  & (pub["ipc"] == ipc) & (pub["method"] == method) & (pub["metric"] == "top1")
                  & (pub["table"] == table) & (pub["model"] == "convnet3")]
        assert len(sel) == 1
        return sel.iloc[0]

    rldd = cell("cifar100", 10, 10, "rldd", "Table 2")
    assert rldd["mean"] == pytest.approx(47.1) and rldd["std"] == pytest.approx(0.1)
    assert cell("cifar10", 10, 10, "damed", "Table 1")["mean"] == pytest.approx(58.1)
    known = set(published.KNOWN_METHODS)
    assert set(pub["method"].map(published.base_method)) <= known
    dashes = pub[pub["note"].str.startswith("not run (–)")]
    assert len(dashes) and dashes["mean"].isna().all()
    assert pub["uncertain"].dtype == bool
    assert pub[(pub["imbalance_factor"] == 200) & (pub["ipc"] == 50)
               & (pub["metric"] == "top1")]["uncertain"].all()


def test_match(df):
    m = published.match(df)
    row = m[(m["method"] == "damed")].iloc[0]
    assert row["published_top1_pct"] == pytest.approx(58.1)
    assert row["ours_top1_pct"] == pytest.approx(82.0)
    assert row["delta_pp"] == pytest.approx(82.0 - 58.1)


# --------------------------------------------------------------------------- other tables

def test_hlr_ior_hand_check(tmp_path):
    records = [_record("full", 0, 0.80)]
    records += [_record("damed", s, 0.50, recipe="hard") for s in range(2)]
    records += [_record("damed", s, a) for s, a in enumerate([0.58, 0.62])]
    records += [_record("random", s, 0.40) for s in range(2)]
    frame, md, _ = tables.hlr_ior_table(aggregate.collect(_write(tmp_path, records)))
    row = frame[frame["method"] == "damed"].iloc[0]
    assert row["hlr"] == pytest.approx(0.30)
    assert row["ior"] == pytest.approx(0.20)
    alpha = 0.5 * 0.20 - 0.5 * 0.30
    assert row["alpha"] == pytest.approx(alpha)
    expected = (math.exp(alpha) - math.exp(-1)) / (math.e - math.exp(-1))
    assert row["lrs"] == pytest.approx(expected)
    for g in ("many", "medium", "few"):
        assert row[f"ior_{g}"] == pytest.approx(0.20)
    assert "30.0" in md and "20.0" in md


def test_hlr_ior_scores_protocol_b_only_methods_under_protocol_b(tmp_path):
    records = [_record("full", 0, 0.80)]
    records += [_record("random", s, 0.40) for s in range(2)]  # Protocol A reference
    records += [_record("random", s, a, recipe="protocol_b") for s, a in enumerate([0.30, 0.34])]
    records += [_record("rldd", s, 0.45, recipe="hard") for s in range(2)]
    records += [_record("rldd", s, 0.52, recipe="protocol_b") for s in range(2)]
    frame, md, _ = tables.hlr_ior_table(aggregate.collect(_write(tmp_path, records)))
    row = frame[frame["method"] == "rldd"].iloc[0]
    assert row["own_recipe"] == "protocol_b"
    assert row["acc_random"] == pytest.approx(0.32)  # random under Protocol B, not A
    assert row["ior"] == pytest.approx(0.52 - 0.32)
    assert row["hlr"] == pytest.approx(0.80 - 0.45)
    assert "| RLDD (B) |" in md and "35.0" in md and "20.0" in md


def test_classwise_and_shot_tables(df):
    frame, md, _ = tables.classwise_table(df)
    # 10 classes + many/medium/few + mean + std; group, n_train, then one column per method
    assert frame.shape == (15, 2 + 2)
    assert list(frame.columns) == ["group", "n_train", "dc", "damed"]
    assert frame.loc["airplane", "dc"] == "77.0"            # mean of 0.75, 0.77, 0.79
    assert frame.loc["mean", "damed"] == "82.0"
    assert "**87.0**" in md
    shot, _, _ = tables.shot_table(df)
    assert shot.loc["dc", ("cifar10", 10, 10, "few")] == "67.5 ± 1.6"


def test_cross_arch_table(tmp_path):
    records = [_record("damed", s, a, model=mo) for s, a in enumerate([0.5, 0.6])
               for mo in ("convnet3", "vgg11")]
    frame, _, _ = tables.cross_arch_table(aggregate.collect(_write(tmp_path, records)))
    assert list(frame.columns.get_level_values("model")) == ["convnet3", "vgg11"]
    assert frame.loc["damed"].tolist() == ["55.0 ± 5.0", "55.0 ± 5.0"]


def test_cost_table(tmp_path):
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    a = tmp_path / "benchmarks" / "distill" / "a.tsv"
    b = tmp_path / "benchmarks" / "distill" / "b.tsv"
    c = tmp_path / "benchmarks" / "evaluate" / "c.tsv"
    for p in (a, b, c):
        p.parent.mkdir(parents=True, exist_ok=True)
    a.write_text(header + "12.5\t0:00:12\t512.3\t900.1\t400.0\t410.0\t1.0\t2.0\t95.0\t11.9\n")
    b.write_text(header + "7.5\t0:00:07\t100.0\t200.0\tNA\tNA\tNA\tNA\t50.0\t7.0\n")
    c.write_text(header + "3.0\t0:00:03\t64.0\t100.0\t1\t1\t1\t1\t10.0\t2.0\n")
    frame, md, _ = tables.cost_table({"distill/a": a, "distill/b": b, "evaluate/c": c})
    d = frame.set_index("stage").loc["distill"]
    assert d["n_jobs"] == 2
    assert d["wall_time_s"] == pytest.approx(20.0)
    assert d["peak_rss_mb"] == pytest.approx(512.3)
    assert "| evaluate | 1 | 3.0 |" in md


# --------------------------------------------------------------------------- figures

def _nonempty_png(paths):
    png = [p for p in paths if p.suffix == ".png"][0]
    assert png.exists() and png.stat().st_size > 1000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any(p.suffix == ".pdf" and p.stat().st_size > 0 for p in paths)


def test_figures(df, tmp_path):
    _nonempty_png(figures.classwise_bars(aggregate.classwise(df), tmp_path / "cw"))
    _nonempty_png(figures.accuracy_vs_if(df, tmp_path / "aif.png"))
    g = torch.Generator().manual_seed(0)
    images = torch.rand(12, 3, 8, 8, generator=g)
    _nonempty_png(figures.image_grid(images, torch.arange(12) % 3, ["a", "b", "c"],
                                     tmp_path / "grid", max_per_class=4))
    rng = np.random.default_rng(0)
    feats = np.concatenate([rng.normal(3.0 * k, 1.0, size=(10, 6)) for k in range(4)])
    labels = np.repeat(np.arange(4), 10)
    centroids = np.stack([feats[labels == k][:2].mean(0, keepdims=True) for k in range(4)])
    _nonempty_png(figures.tsne_plot(feats, labels, centroids, list("ABCD"), tmp_path / "tsne",
                                    seed=0))
    cost = pd.DataFrame({"stage": ["distill", "evaluate"], "wall_time_s": [20.0, 3.0],
                         "peak_rss_mb": [512.3, 64.0]})
    _nonempty_png(figures.cost_bars(cost, tmp_path / "cost"))
