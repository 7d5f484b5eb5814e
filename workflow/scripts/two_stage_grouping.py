"""Group similar classes: per-class k-means of the reference model's features, class distances
and the max-cut partition."""

from ltdistill.jobs import start
from ltdistill.two_stage.pipeline import grouping

sm = snakemake  # noqa: F821
start(sm)
grouping(sm.input.cache, sm.input.split, sm.input.prep, sm.input.model, sm.params.two_stage,
         sm.params.device, sm.output.grouping, sm.output.summary)
