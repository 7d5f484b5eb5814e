# Expert trajectories for the trajectory-matching family (mtt, datm, damed): one job per
# runtime.experts_per_job consecutive experts (default 1), writing the directory
# results/experts/{dataset}/if{imb}/{expert_kind}/{first}-{last}/ of expert_{i}.pt files. Only
# experts that a configured method `needs` are ever requested (through ARTIFACTS, by the generic
# distill rule).
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
                **expert_job_inputs(config, w.dataset, w.imb, w.expert_kind, w.first, w.last),
            }
        ),
    output:
        directory("results/experts/{dataset}/if{imb}/{expert_kind}/{first}-{last}"),
    wildcard_constraints:
        expert_kind="|".join(EXPERT_KINDS),
        first="[0-9]+",
        last="[0-9]+",
    params:
        settings=lambda w: job_settings(config, w.expert_kind),
        network=config["network"],
        dsa_strategy=lambda w: config["datasets"][w.dataset]["dsa_strategy"],
        code=code_digest(*EXPERT_CODE),
        device=DEVICE,
    threads: THREADS
    log:
        "logs/experts/{dataset}/if{imb}/{expert_kind}/{first}-{last}.log",
    benchmark:
        "benchmarks/experts/{dataset}/if{imb}/{expert_kind}/{first}-{last}.tsv"
    conda:
        ENV
    script:
        "../workflow/scripts/train_expert.py"


for _kind in EXPERT_KINDS:
    ARTIFACTS[f"{_kind}_experts"] = lambda w, kind=_kind: expert_paths(
        config, w.dataset, w.imb, kind
    )
