"""Draw one image set as a grid (one row per class) in pixel space."""

from ltdistill.jobs import start
from ltdistill.reporting.run import image_grid

sm = snakemake  # noqa: F821
start(sm)
image_grid(sm.input.image_set, sm.input.prep, sm.input.cache, sm.output[0], sm.params.max_per_class)
