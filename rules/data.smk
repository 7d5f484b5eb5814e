# Obtain a dataset once (uint8 tensor cache), make the long-tailed split, fit preprocessing.


rule cache_dataset:
    output:
        "results/data/{dataset}/dataset.pt",
    params:
        options=dataset_options,
    log:
        "logs/data/{dataset}/cache.log",
    benchmark:
        "benchmarks/data/{dataset}/cache.tsv"
    conda:
        ENV
    script:
        "../workflow/scripts/cache_dataset.py"


rule split:
    input:
        cache=cache_path,
    output:
        "results/splits/{dataset}/if{imb}/split.json",
    params:
        options=dataset_options,
        groups=config["evaluation"].get("shot_groups", {}),
    log:
        "logs/splits/{dataset}/if{imb}.log",
    benchmark:
        "benchmarks/splits/{dataset}/if{imb}.tsv"
    conda:
        ENV
    script:
        "../workflow/scripts/split.py"


rule preprocess:
    input:
        cache=cache_path,
        split=split_path,
    output:
        "results/preprocess/{dataset}/if{imb}/{kind}.pt",
    params:
        eps=lambda w: config["datasets"][w.dataset].get("zca_eps", 0.1),
    log:
        "logs/preprocess/{dataset}/if{imb}/{kind}.log",
    benchmark:
        "benchmarks/preprocess/{dataset}/if{imb}/{kind}.tsv"
    conda:
        ENV
    script:
        "../workflow/scripts/preprocess.py"
