# ONE generic rule over the {method} wildcard: every registered method runs through it.


rule distill:
    input:
        unpack(distill_inputs),
    output:
        "results/distilled/{dataset}/if{imb}/ipc{ipc}/{method}/s{dseed}/image_set.pt",
    params:
        method_params=lambda w: config["method_params"][w.method],
        network=config["network"],
        code=method_code,
        device=DEVICE,
    threads: THREADS
    log:
        "logs/distilled/{dataset}/if{imb}/ipc{ipc}/{method}/s{dseed}.log",
    benchmark:
        "benchmarks/distill/{dataset}/if{imb}/ipc{ipc}/{method}/s{dseed}.tsv"
    conda:
        ENV
    script:
        "../workflow/scripts/distill.py"
