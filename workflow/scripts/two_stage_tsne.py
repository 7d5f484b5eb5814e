"""Figure 1 of the two-stage paper: t-SNE of test features from balanced, LT and distilled
extractors with per-class centroids."""

from ltdistill.jobs import start
from ltdistill.two_stage.pipeline import tsne_figure

sm = snakemake  # noqa: F821
start(sm)
tsne_figure({"balanced training": sm.input.balanced, "long-tailed training": sm.input.lt,
             f"{sm.wildcards.method} IPC {sm.wildcards.ipc} training": sm.input.distilled},
            sm.output[0], int(sm.params.seed))
