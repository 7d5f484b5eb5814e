"""Join per-evaluation metrics JSON records into one tidy pandas table (fractions, no paths parsed)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..atomic import write_text

# Identity of one evaluation record, in table order. Every record must carry these keys
# (aggregation reads them from the JSON, never from the file path).
IDENTITY = ["dataset", "imbalance_factor", "ipc", "method", "distill_seed", "model", "recipe",
            "eval_seed"]
# Optional descriptive keys copied when present.
DESCRIPTIVE = ["selection", "ipc_policy", "config_hash", "num_classes", "lr", "epochs",
               "batch_size", "soft_labels_used", "train_images"]
TEST_METRICS = ["top1", "mean_per_class", "class_std", "macro_precision", "macro_recall",
                "macro_f1", "group_acc"]
SHOT_GROUPS = ["many", "medium", "few"]
LT_METRICS = ["top1", "macro_precision", "macro_recall", "macro_f1"]

COLUMNS = (IDENTITY + DESCRIPTIVE + TEST_METRICS + SHOT_GROUPS
           + [f"lt_{m}" for m in LT_METRICS]
           + ["status", "reason", "wall_time_s", "git_commit", "device",
              "per_class", "lt_per_class", "class_names", "groups", "lt_counts", "path"])

_INT_COLUMNS = ["imbalance_factor", "ipc", "distill_seed", "eval_seed", "num_classes", "epochs",
                "batch_size", "train_images"]


class RecordError(ValueError):
    """A metrics JSON that lacks required keys or is not valid JSON."""


def _num(value: Any) -> float:
    """None/missing -> NaN; numbers -> float."""
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _json_list(value: Any) -> str | None:
    if value is None:
        return None
    return json.dumps(list(value))


def _expand(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    if isinstance(paths, (str, Path)):
        paths = [paths]
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            out.extend(sorted(p.rglob("*.json")))
        else:
            out.append(p)
    return out


def record_row(record: dict, path: str | Path | None = None) -> dict:
    """One tidy row from one metrics record (a dict as loaded from JSON)."""
    where = f" ({path})" if path is not None else ""
    missing = [k for k in IDENTITY if k not in record]
    if missing:
        raise RecordError(f"metrics record{where} lacks {', '.join(missing)}")
    row: dict[str, Any] = {k: record.get(k) for k in IDENTITY + DESCRIPTIVE}
    test = record.get("test") or {}
    status = record.get("status") or ("ok" if test else "failed")
    if status == "ok" and not test:
        raise RecordError(f"metrics record{where} has status 'ok' but no test block")
    for m in TEST_METRICS:
        row[m] = _num(test.get(m))
    shot = test.get("shot") or {}
    for g in SHOT_GROUPS:
        row[g] = _num(shot.get(g))
    lt = record.get("lt_test") or {}
    lt_top1 = lt.get("top1", lt.get("accuracy"))
    row["lt_top1"] = _num(lt_top1)
    for m in LT_METRICS[1:]:
        row[f"lt_{m}"] = _num(lt.get(m))
    prov = record.get("provenance") or {}
    row.update(
        status=status,
        reason=record.get("reason"),
        wall_time_s=_num(prov.get("wall_time_s")),
        git_commit=prov.get("git_commit"),
        device=prov.get("device"),
        per_class=_json_list(test.get("per_class")),
        lt_per_class=_json_list(lt.get("per_class")),
        class_names=_json_list(record.get("class_names")),
        groups=_json_list(record.get("groups")),
        lt_counts=_json_list(record.get("lt_counts")),
        path=str(path) if path is not None else None,
    )
    return row


def collect(paths: str | Path | Iterable[str | Path]) -> pd.DataFrame:
    """Read metrics JSON files (or directories searched recursively) into one tidy DataFrame.

    One row per record; accuracies stay fractions in [0, 1]; list-valued fields (per-class
    accuracies, class names, groups, LT counts) are JSON strings. Rows are sorted by identity."""
    rows = []
    for p in _expand(paths):
        try:
            with open(p) as fh:
                record = json.load(fh)
        except json.JSONDecodeError as exc:
            raise RecordError(f"{p}: not valid JSON ({exc})") from exc
        rows.append(record_row(record, p))
    df = pd.DataFrame(rows, columns=COLUMNS)
    for col in _INT_COLUMNS:
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
    if len(df):
        df = df.sort_values(IDENTITY, kind="mergesort", na_position="last").reset_index(drop=True)
    return df


def write_tidy(df: pd.DataFrame, path: str | Path) -> None:
    """Write the `collect` table as CSV, atomically."""
    write_text(path, df.to_csv(index=False))


def read_tidy(path: str | Path) -> pd.DataFrame:
    """Read a CSV written by `write_tidy`, restoring the integer (nullable) identity columns."""
    df = pd.read_csv(path)
    for col in _INT_COLUMNS:
        if col in df.columns:
            df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
    return df


def classwise(df: pd.DataFrame) -> pd.DataFrame:
    """Long format: one row per class per (successful) record.

    Columns: the identity columns, class_index, class_name, group, lt_count, acc (balanced test,
    fraction) and lt_acc (LT test, NaN when absent)."""
    keep = IDENTITY + ["selection"]
    rows = []
    for rec in df.itertuples(index=False):
        rec = rec._asdict()
        if rec.get("status") != "ok" or not isinstance(rec.get("per_class"), str):
            continue
        accs = json.loads(rec["per_class"])
        n = len(accs)
        names = json.loads(rec["class_names"]) if isinstance(rec.get("class_names"), str) else None
        groups = json.loads(rec["groups"]) if isinstance(rec.get("groups"), str) else None
        counts = json.loads(rec["lt_counts"]) if isinstance(rec.get("lt_counts"), str) else None
        lt = (json.loads(rec["lt_per_class"]) if isinstance(rec.get("lt_per_class"), str)
              else None)
        for c in range(n):
            row = {k: rec.get(k) for k in keep}
            row.update(
                class_index=c,
                class_name=names[c] if names and c < len(names) else str(c),
                group=groups[c] if groups and c < len(groups) else None,
                lt_count=counts[c] if counts and c < len(counts) else None,
                acc=_num(accs[c]),
                lt_acc=_num(lt[c]) if lt and c < len(lt) else math.nan,
            )
            rows.append(row)
    cols = keep + ["class_index", "class_name", "group", "lt_count", "acc", "lt_acc"]
    out = pd.DataFrame(rows, columns=cols)
    for col in ["imbalance_factor", "ipc", "distill_seed", "eval_seed", "class_index", "lt_count"]:
        out[col] = pd.to_numeric(out[col], errors="coerce").astype("Int64")
    return out


def mean_std(values: Iterable[float]) -> tuple[float, float, int]:
    """Mean, population std (ddof 0) and count of the finite values; NaNs if there are none."""
    arr = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if arr.size == 0:
        return math.nan, math.nan, 0
    return float(arr.mean()), float(arr.std(ddof=0)), int(arr.size)
