"""Published reference numbers (transcribed from published_results.md) and their join with our results."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import numpy as np
import pandas as pd

from .aggregate import mean_std

#: Base method slugs that may appear in the published table (variants add a "[...]" suffix,
#: e.g. "rldd[w/o model debiasing]" or "two_stage[original+dc]").
KNOWN_METHODS = (
    "random", "k_center", "graph_cut", "dc", "dsa", "dm", "mtt", "dream", "idm", "minimax",
    "datm", "rded", "edc", "damed", "rldd", "sre2l", "tesla", "g_vbsm", "cafe", "ftd",
    # reference rows and the plugin, not distillation methods of their own
    "full", "two_stage",
)

COLUMNS = ["source", "table", "dataset", "imbalance_factor", "ipc", "method", "model", "metric",
           "mean", "std", "uncertain", "note", "unit"]
#: Methods whose result does not depend on IPC; joined with published rows that have no IPC.
IPC_FREE_METHODS = ("full",)
KEY = ["dataset", "imbalance_factor", "ipc", "method", "model"]
CSV_NAME = "published_results.csv"


def base_method(slug: str) -> str:
    """'rldd[w/o model debiasing]' -> 'rldd'."""
    return str(slug).split("[", 1)[0]


@lru_cache(maxsize=1)
def _load_cached() -> pd.DataFrame:
    ref = resources.files(__package__).joinpath(CSV_NAME)
    with resources.as_file(ref) as path:
        df = pd.read_csv(path, dtype={"source": str, "table": str, "dataset": str, "method": str,
                                      "model": str, "metric": str, "note": str, "unit": str},
                         keep_default_na=False, na_values={"mean": [""], "std": [""],
                                                           "imbalance_factor": [""],
                                                           "ipc": [""]})
    for col in ("imbalance_factor", "ipc"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
    for col in ("mean", "std"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    df["uncertain"] = df["uncertain"].map({"True": True, "False": False, True: True,
                                           False: False}).astype(bool)
    df["model"] = df["model"].replace("", np.nan)
    return df[COLUMNS]


def load_published() -> pd.DataFrame:
    """The tidy published table: one row per (source, table, setting, method, model, metric).

    `mean`/`std` are as printed (percent for accuracies, fractions for the DAMED supplement's
    macro P/R/F1; see `unit`). A "–" cell is a row with NaN mean and a note starting
    "not run (–)". Returns a fresh copy on every call."""
    return _load_cached().copy()


def published_top1(published: pd.DataFrame | None = None) -> pd.DataFrame:
    """Published top-1 rows, one per (dataset, IF, IPC, method, model): the first row in file order
    wins (main tables precede reprints and secondary summaries)."""
    pub = load_published() if published is None else published
    pub = pub[pub["metric"] == "top1"]
    return pub.drop_duplicates(KEY, keep="first").reset_index(drop=True)


def match(df_ours: pd.DataFrame, published: pd.DataFrame | None = None, model: str = "convnet3",
          recipes: tuple[str, ...] = ("protocol_a", "protocol_b")) -> pd.DataFrame:
    """Set our top-1 (mean ± std over evaluations, ddof 0) beside the published top-1 value.

    Join keys: dataset, imbalance_factor, ipc, method, model. Our rows are taken from the given
    recipes (the method's own recipe, not the hard-label run) and successful records only. The
    model is each row's own `model`; rows without one are taken as `model` (default ConvNet-3).
    The full-data reference is matched without IPC (its `ipc` is NA in the output).
    Returns one row per our setting with columns ours_top1_pct, ours_std_pct, n_evals,
    published_top1_pct, published_std_pct, published_uncertain, published_source, published_note
    and delta_pp (ours - published, percentage points). Settings with no published number keep
    NaN published columns (new results, never compared against a guess)."""
    ours = df_ours[df_ours["status"] == "ok"]
    if "recipe" in ours.columns and recipes:
        ours = ours[ours["recipe"].isin(recipes)]
    ours = ours.copy()
    if "model" not in ours.columns:
        ours["model"] = model
    ours["model"] = ours["model"].fillna(model)
    # IPC-free references (the full-data run, stored as ipc 0) match published rows without IPC
    ours["ipc"] = ours["ipc"].astype("Int64").mask(ours["method"].isin(IPC_FREE_METHODS))
    rows = []
    for key, grp in ours.groupby(KEY, sort=True, dropna=False):
        m, s, n = mean_std(grp["top1"].to_numpy(dtype=float) * 100.0)
        rows.append(dict(zip(KEY, key, strict=True), ours_top1_pct=m, ours_std_pct=s, n_evals=n))
    left = pd.DataFrame(rows, columns=KEY + ["ours_top1_pct", "ours_std_pct", "n_evals"])
    for col in ("imbalance_factor", "ipc"):
        left[col] = pd.to_numeric(left[col], errors="coerce").astype("Int64")
    pub = published_top1(published)[KEY + ["mean", "std", "uncertain", "source", "table", "note"]]
    pub = pub.rename(columns={"mean": "published_top1_pct", "std": "published_std_pct",
                              "uncertain": "published_uncertain", "note": "published_note"})
    pub["published_source"] = pub.pop("source") + " " + pub.pop("table")
    out = left.merge(pub, on=KEY, how="left")
    out["delta_pp"] = out["ours_top1_pct"] - out["published_top1_pct"]
    return out
