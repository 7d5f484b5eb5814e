"""Partition agreement of the groupings from balanced, LT and distilled extractors."""

from ltdistill.jobs import start
from ltdistill.two_stage.pipeline import stability

sm = snakemake  # noqa: F821
start(sm)
stability({"balanced": sm.input.balanced, "lt": sm.input.lt, "distilled": sm.input.distilled},
          sm.output[0])
