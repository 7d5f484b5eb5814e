"""Train evaluation models on an image set and write their metrics JSONs: one seed per job, or
every evaluation seed in one job (runtime.batch_eval_seeds)."""

from ltdistill.jobs import checkpoint_every_s, eval_seeds_and_outputs, start
from ltdistill.pipeline import evaluate

sm = snakemake  # noqa: F821
start(sm)
w = sm.wildcards
identity = {"dataset": w.dataset, "imbalance_factor": int(w.imb), "ipc": int(w.ipc),
            "method": w.method, "distill_seed": int(w.dseed), "model": w.model,
            "recipe": w.recipe}
fixed = {"image_set", "cache", "split", "prep"}
artifacts = {k: (v if isinstance(v, str) else list(v)) for k, v in sm.input.items() if k not in fixed}
seeds, outs = eval_seeds_and_outputs(sm)
evaluate(sm.input.image_set, sm.input.cache, sm.input.split, sm.input.prep, sm.params.network,
         w.model, sm.params.recipe, seeds, sm.params.device, identity, outs, artifacts,
         checkpoint_every_s=checkpoint_every_s(sm),
         seed_batching=sm.config["runtime"].get("seed_batching", "auto"))
