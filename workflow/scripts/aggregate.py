"""Join every metrics JSON into one tidy CSV."""

from ltdistill.jobs import start
from ltdistill.reporting.run import aggregate

sm = snakemake  # noqa: F821
start(sm)
aggregate(list(sm.input), sm.output.tidy)
