"""Read a dataset from its real on-disk format into the uint8 tensor cache."""

from ltdistill.jobs import start
from ltdistill.pipeline import cache_dataset

start(snakemake)  # noqa: F821
cache_dataset(snakemake.wildcards.dataset, snakemake.params.options, snakemake.output[0])  # noqa: F821
