"""Summary of the failure records of a run (methods that diverged or could not run): printed at
the end of `./run.sh benchmark` and by the Snakefile's onsuccess handler.

    python -m ltdistill.reporting.failures results/tables/evaluations.csv

exits 0 when every evaluation succeeded and 3 when some are failure records (the report is still
complete: their table cells are "–" with the reason as a footnote)."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

EXIT_FAILURES = 3
KEYS = ["method", "dataset", "imbalance_factor", "ipc", "distill_seed"]


def failures(tidy: pd.DataFrame) -> pd.DataFrame:
    """One row per failed (method, dataset, IF, IPC, distill seed, reason) with the number of
    evaluation records it affects."""
    bad = tidy[tidy["status"] != "ok"].copy()
    if bad.empty:
        return pd.DataFrame(columns=KEYS + ["reason", "evaluations"])
    bad["reason"] = bad["reason"].fillna("no reason recorded").astype(str)
    return (bad.groupby(KEYS + ["reason"], dropna=False).size().rename("evaluations")
            .reset_index().sort_values(KEYS))


def summary(tidy_path: str | Path) -> tuple[int, str]:
    """(number of failed settings, text for the terminal)."""
    path = Path(tidy_path)
    if not path.exists():
        return 0, f"no {path}: nothing was aggregated yet"
    from .aggregate import read_tidy

    table = failures(read_tidy(path))
    if table.empty:
        return 0, "every evaluation succeeded"
    lines = [f"{len(table)} image set(s) are failure records (table cells show '–'):"]
    for row in table.itertuples(index=False):
        lines.append(f"  - {row.method} on {row.dataset} IF {row.imbalance_factor} IPC {row.ipc} "
                     f"seed {row.distill_seed} ({row.evaluations} evaluations): {row.reason}")
    return len(table), "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    n, text = summary(args[0] if args else "results/tables/evaluations.csv")
    print(text, file=sys.stderr if n else sys.stdout)
    return EXIT_FAILURES if n else 0


if __name__ == "__main__":
    raise SystemExit(main())
