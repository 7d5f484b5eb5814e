"""Draw class-wise bars, accuracy against imbalance factor, and the cost figure."""

from ltdistill.jobs import start
from ltdistill.reporting.run import make_figures

sm = snakemake  # noqa: F821
start(sm, uses_torch=False)  # reads CSV/JSON only: no torch import (~2 s)
make_figures(sm.input.tidy, sm.output.ifplot, sm.output.cost, list(sm.output.classwise),
             sm.params.method_order, benchmarks_dir="benchmarks")
