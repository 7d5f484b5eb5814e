# Train fresh students on an image set: one metrics JSON per (model, recipe, seed).
#
# runtime.batch_eval_seeds false (default): one job per seed, the most parallel layout (clusters).
# true: one job per (image set, model, recipe) writes every seed's JSON (the same files): the data
# and image set load once, and under Protocol A the seeds train as one vmapped model where that
# is exact and faster (runtime.seed_batching: auto = CUDA only; evaluation/multi_seed.py).

EVAL_SEEDS = [int(s) for s in config["evaluation"]["seeds"]]
EVAL_DIR = "{dataset}/if{imb}/ipc{ipc}/{method}/s{dseed}/{model}/{recipe}"


if config["runtime"].get("batch_eval_seeds", False):

    rule evaluate:
        input:
            unpack(eval_inputs),
        output:
            [f"results/evaluation/{EVAL_DIR}/seed{s}.json" for s in EVAL_SEEDS],
        params:
            recipe=lambda w: eval_recipe(config, w.dataset, w.method, w.recipe),
            network=config["network"],
            code=EVAL_CODE,
            device=DEVICE,
            seeds=EVAL_SEEDS,
        threads: THREADS
        log:
            f"logs/evaluation/{EVAL_DIR}/seeds.log",
        benchmark:
            f"benchmarks/evaluate/{EVAL_DIR}/seeds.tsv"
        conda:
            ENV
        script:
            "../workflow/scripts/evaluate.py"

else:

    rule evaluate:
        input:
            unpack(eval_inputs),
        output:
            f"results/evaluation/{EVAL_DIR}/seed{{eseed}}.json",
        params:
            recipe=lambda w: eval_recipe(config, w.dataset, w.method, w.recipe),
            network=config["network"],
            code=EVAL_CODE,
            device=DEVICE,
        threads: THREADS
        log:
            f"logs/evaluation/{EVAL_DIR}/seed{{eseed}}.log",
        benchmark:
            f"benchmarks/evaluate/{EVAL_DIR}/seed{{eseed}}.tsv"
        conda:
            ENV
        script:
            "../workflow/scripts/evaluate.py"
