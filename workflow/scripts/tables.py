"""Write the paper-style tables (Markdown, LaTeX, CSV) from the tidy CSV."""

from ltdistill.jobs import start
from ltdistill.reporting.run import make_tables

sm = snakemake  # noqa: F821
start(sm, uses_torch=False)  # reads CSV/JSON only: no torch import (~2 s)
make_tables(sm.input.tidy, list(sm.output), sm.params.method_order, benchmarks_dir="benchmarks")
