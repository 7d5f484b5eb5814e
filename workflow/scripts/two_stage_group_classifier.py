"""Train the two-stage group classifier on the full LT split or on a distilled set."""

from ltdistill.jobs import start
from ltdistill.two_stage.pipeline import group_classifier

sm = snakemake  # noqa: F821
start(sm)
group_classifier(sm.input.cache, sm.input.split, sm.input.prep, sm.input.grouping,
                 sm.params.two_stage, sm.params.network, sm.params.dsa_strategy,
                 sm.params.device, sm.output[0], image_set_path=sm.input.get("image_set"))
