"""Fit the preprocessing (normalise, or ZCA on the LT train split) of one split."""

from ltdistill.jobs import start
from ltdistill.pipeline import fit_preprocessing

sm = snakemake  # noqa: F821
start(sm)
fit_preprocessing(sm.input.cache, sm.input.split, sm.wildcards.kind, sm.params.eps, sm.output[0])
