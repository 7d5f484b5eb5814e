"""The two-stage table (Markdown, LaTeX, CSV): one-stage and two-stage rows per method."""

from ltdistill.jobs import start
from ltdistill.two_stage.pipeline import table

sm = snakemake  # noqa: F821
start(sm)
table(list(sm.input.one_stage) + list(sm.input.two_stage), list(sm.output))
