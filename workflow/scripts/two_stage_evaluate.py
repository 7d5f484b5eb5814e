"""Train the intra-group classifiers of one variant and write the two-stage metrics JSON: one
seed per job, or every evaluation seed in one job (runtime.batch_eval_seeds)."""

from ltdistill.jobs import eval_seeds_and_outputs, start
from ltdistill.two_stage.pipeline import evaluate

sm = snakemake  # noqa: F821
start(sm)
w = sm.wildcards
identity = {"dataset": w.dataset, "imbalance_factor": int(w.imb), "ipc": int(w.ipc),
            "method": w.method, "distill_seed": int(w.dseed), "model": w.model,
            "recipe": f"two_stage_{w.variant}"}
seeds, outs = eval_seeds_and_outputs(sm)
evaluate(identity, w.variant, sm.input.cache, sm.input.split, sm.input.prep_original,
         sm.input.prep_method, sm.input.grouping, sm.input.group_model,
         sm.input.get("image_set"), sm.params.two_stage, sm.params.network,
         sm.params.dsa_strategy, seeds, sm.params.device, outs)
