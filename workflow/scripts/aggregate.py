"""Join every metrics JSON into one tidy CSV."""

from ltdistill.jobs import start
from ltdistill.reporting.run import aggregate

sm = snakemake  # noqa: F821
start(sm, uses_torch=False)  # reads CSV/JSON only: no torch import (~2 s)
aggregate(list(sm.input), sm.output.tidy)
