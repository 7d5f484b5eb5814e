"""Write the long-tailed split manifest of one (dataset, imbalance factor)."""

from ltdistill.jobs import start
from ltdistill.pipeline import split_dataset

sm = snakemake  # noqa: F821
start(sm)
split_dataset(sm.input.cache, int(sm.wildcards.imb), sm.params.options, sm.params.groups, sm.output[0])
