"""Draw every image set as a grid (one row per class) in pixel space, in one job."""

from ltdistill.jobs import start
from ltdistill.reporting.run import image_grid

sm = snakemake  # noqa: F821
log = start(sm)
for i, s in enumerate(sm.params.sets, 1):
    image_grid(s["image_set"], s["prep"], s["cache"], s["out"], sm.params.max_per_class)
    log.info("image grid %d/%d: %s", i, len(sm.params.sets), s["out"])
