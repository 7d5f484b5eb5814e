"""Fair per-class BN recalibration of one frozen observer over the whole LT split."""

from ltdistill.jobs import start
from ltdistill.statistical.pipeline import bn_recalibrate

sm = snakemake  # noqa: F821
start(sm)
w = sm.wildcards
bn_recalibrate(sm.input.cache, sm.input.split, sm.input.prep, sm.input.observer,
               sm.params.expert, w.dataset, sm.params.device, sm.output[0])
