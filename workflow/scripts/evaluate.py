"""Train one evaluation model on an image set and write its metrics JSON."""

from ltdistill.jobs import checkpoint_every_s, start
from ltdistill.pipeline import evaluate

sm = snakemake  # noqa: F821
start(sm)
w = sm.wildcards
identity = {"dataset": w.dataset, "imbalance_factor": int(w.imb), "ipc": int(w.ipc),
            "method": w.method, "distill_seed": int(w.dseed), "model": w.model,
            "recipe": w.recipe, "eval_seed": int(w.eseed)}
fixed = {"image_set", "cache", "split", "prep"}
artifacts = {k: (v if isinstance(v, str) else list(v)) for k, v in sm.input.items() if k not in fixed}
evaluate(sm.input.image_set, sm.input.cache, sm.input.split, sm.input.prep, sm.params.network,
         w.model, sm.params.recipe, int(w.eseed), sm.params.device, identity, sm.output[0],
         artifacts, checkpoint_every_s=checkpoint_every_s(sm))
