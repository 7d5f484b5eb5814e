"""Draw the t-SNE of test features with per-class k-means centroids."""

from ltdistill.jobs import start
from ltdistill.reporting.run import tsne_plot

sm = snakemake  # noqa: F821
start(sm)
tsne_plot(sm.input[0], sm.output[0], int(sm.params.seed))
