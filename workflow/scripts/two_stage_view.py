"""One extractor's grouping and test features (balanced / LT reference, or a ConvNet trained
on a distilled set) for the stability check and Figure 1."""

from ltdistill.jobs import start
from ltdistill.two_stage.pipeline import extractor_view

sm = snakemake  # noqa: F821
start(sm)
extractor_view(sm.input.cache, sm.input.split, sm.input.prep, sm.params.two_stage,
               sm.params.device, sm.output[0], view=sm.wildcards.view,
               model_path=sm.input.get("model"), image_set_path=sm.input.get("image_set"),
               network=sm.params.network, dsa_strategy=sm.params.dsa_strategy)
