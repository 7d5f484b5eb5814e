# Expert trajectories for the trajectory-matching family (mtt, datm, damed): one job per expert,
# results/experts/{dataset}/if{imb}/{expert_kind}/expert_{i}.pt. Only experts that a configured
# method `needs` are ever requested (through ARTIFACTS, by the generic distill rule).
from ltdistill.experts.pipeline import (
    KINDS as EXPERT_KINDS,
    check_experts_config,
    expert_job_inputs,
    expert_paths,
    job_settings,
)

check_experts_config(config)

EXPERT_CODE = [
    f"src/ltdistill/experts/{name}.py"
    for name in ("train", "gsam", "sampler", "maxnorm", "storage")
]


rule train_expert:
    input:
        unpack(
            lambda w: {
                "cache": cache_path(w),
                "split": split_path(w),
                **expert_job_inputs(config, w.dataset, w.imb, w.expert_kind, w.i),
            }
        ),
    output:
        "results/experts/{dataset}/if{imb}/{expert_kind}/expert_{i}.pt",
    wildcard_constraints:
        expert_kind="|".join(EXPERT_KINDS),
        i="[0-9]+",
    params:
        settings=lambda w: job_settings(config, w.expert_kind),
        network=config["network"],
        dsa_strategy=lambda w: config["datasets"][w.dataset]["dsa_strategy"],
        code=code_digest(*EXPERT_CODE),
        device=DEVICE,
    threads: THREADS
    log:
        "logs/experts/{dataset}/if{imb}/{expert_kind}/expert_{i}.log",
    benchmark:
        "benchmarks/experts/{dataset}/if{imb}/{expert_kind}/expert_{i}.tsv"
    conda:
        ENV
    script:
        "../workflow/scripts/train_expert.py"


for _kind in EXPERT_KINDS:
    ARTIFACTS[f"{_kind}_experts"] = lambda w, kind=_kind: expert_paths(
        config, w.dataset, w.imb, kind
    )
