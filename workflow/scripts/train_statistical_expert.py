"""Train one observer / teacher (GLMC or plain CE) of the statistical family."""

from ltdistill.jobs import checkpoint_every_s, start
from ltdistill.statistical.pipeline import train_statistical_expert

sm = snakemake  # noqa: F821
start(sm)
w = sm.wildcards
train_statistical_expert(sm.input.cache, sm.input.split, sm.input.prep, w.expert,
                         sm.params.expert, w.dataset, sm.params.device, sm.output[0],
                         checkpoint_every_s=checkpoint_every_s(sm))
