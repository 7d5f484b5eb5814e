"""Embed test images with the reference ConvNet and cluster the training features per class."""

from ltdistill.jobs import start
from ltdistill.pipeline import tsne_features

sm = snakemake  # noqa: F821
start(sm)
t = sm.params.tsne
tsne_features(sm.input.cache, sm.input.split, sm.input.prep, sm.input.model,
              int(t.get("max_points", 2000)), int(t.get("clusters_per_class", 5)),
              int(t.get("seed", 0)), sm.params.device, sm.output[0])
