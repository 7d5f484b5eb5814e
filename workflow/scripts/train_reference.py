"""Train the reference ConvNet on the full LT split."""

from ltdistill.jobs import checkpoint_every_s, start
from ltdistill.pipeline import train_reference

sm = snakemake  # noqa: F821
start(sm)
train_reference(sm.input.cache, sm.input.split, sm.input.prep, sm.params.network, sm.params.recipe,
                sm.params.seed, sm.params.device, sm.params.dsa_strategy, sm.output[0],
                checkpoint_every_s=checkpoint_every_s(sm))
