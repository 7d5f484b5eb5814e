# Train fresh students on an image set: one metrics JSON per (model, recipe, seed).


rule evaluate:
    input:
        image_set=image_set_path,
        cache=cache_path,
        split=split_path,
        prep=prep_path,
    output:
        "results/evaluation/{dataset}/if{imb}/ipc{ipc}/{method}/s{dseed}/{model}/{recipe}/seed{eseed}.json",
    params:
        recipe=lambda w: eval_recipe(config, w.dataset, w.method, w.recipe),
        network=config["network"],
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
