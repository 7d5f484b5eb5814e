# Train fresh students on an image set: one metrics JSON per (model, recipe, seed).


rule evaluate:
    input:
        unpack(eval_inputs),
    output:
        "results/evaluation/{dataset}/if{imb}/ipc{ipc}/{method}/s{dseed}/{model}/{recipe}/seed{eseed}.json",
    params:
        recipe=lambda w: eval_recipe(config, w.dataset, w.method, w.recipe),
        network=config["network"],
        code=EVAL_CODE,
        device=DEVICE,
    threads: THREADS
    log:
        "logs/evaluation/{dataset}/if{imb}/ipc{ipc}/{method}/s{dseed}/{model}/{recipe}/seed{eseed}.log",
    benchmark:
        "benchmarks/evaluate/{dataset}/if{imb}/ipc{ipc}/{method}/s{dseed}/{model}/{recipe}/seed{eseed}.tsv"
    conda:
        ENV
    script:
        "../workflow/scripts/evaluate.py"
