"""One-stage vs two-stage class-wise accuracy bars for one method."""

from ltdistill.jobs import start
from ltdistill.two_stage.pipeline import classwise_bars

sm = snakemake  # noqa: F821
start(sm)
classwise_bars(list(sm.input.one_stage), list(sm.input.two_stage), sm.output[0])
