# Networks trained on the real LT split that methods and reports read: the reference ConvNet.


rule train_reference:
    input:
        cache=cache_path,
        split=split_path,
        prep=lambda w: prep_path(w, method="full"),
    output:
        "results/reference/{dataset}/if{imb}/model.pt",
    params:
        network=config["network"],
        recipe=lambda w: reference_recipe(config, int(w.imb)),
        seed=config["reference"]["seed"],
        dsa_strategy=lambda w: config["datasets"][w.dataset]["dsa_strategy"],
        device=DEVICE,
    threads: THREADS
    log:
        "logs/reference/{dataset}/if{imb}.log",
    benchmark:
        "benchmarks/reference/{dataset}/if{imb}.tsv"
    conda:
        ENV
    script:
        "../workflow/scripts/train_reference.py"
