# Rules for the statistical family (RLDD, SRe2L, RDED): observer / teacher experts trained on the
# LT split (GLMC-debiased or plain CE) and the fair per-class BN recalibration of an observer.
# Expert kinds are the `experts:` entries named observer_* / teacher_*; which kinds a method (or
# variant) reads comes from its method_params (statistical.pipeline.expert_kinds).
from ltdistill.statistical.pipeline import (
    check_experts,
    expert_kinds,
    protocol_b_teacher_kind,
)

check_experts(config.get("experts", {}))

STAT_EXPERT = "(observer|teacher)_[a-z0-9_]+"


def stat_prep_path(w):
    # experts always work on mean/std-normalised images (statistical_methods.md §1.3)
    return f"results/preprocess/{w.dataset}/if{w.imb}/normalise.pt"


def stat_expert_path(w, kind):
    return f"results/experts/{w.dataset}/if{w.imb}/{kind}/model.pt"


def stat_expert_params(w):
    if w.expert not in config.get("experts", {}):
        raise ValueError(f"expert kind '{w.expert}' has no `experts: {w.expert}:` entry")
    return config["experts"][w.expert]


def stat_kinds(w):
    return expert_kinds(config["method_params"], w.method)


ARTIFACTS["observer"] = lambda w: stat_expert_path(w, stat_kinds(w)["observer"])
ARTIFACTS["teacher"] = lambda w: stat_expert_path(w, stat_kinds(w)["teacher"])
ARTIFACTS["bn_stats"] = lambda w: (
    f"results/experts/{w.dataset}/if{w.imb}/bnstats_{stat_kinds(w)['observer']}.pt"
)
# Protocol B: the method's own teacher, else evaluation.protocol_b.teacher (default teacher_glmc)
EVAL_ARTIFACTS["protocol_b"] = lambda w: {
    "teacher": stat_expert_path(
        w,
        protocol_b_teacher_kind(
            config["method_params"],
            w.method,
            config["evaluation"].get("protocol_b", {}).get("teacher", "teacher_glmc"),
        ),
    )
}


rule train_statistical_expert:
    input:
        cache=cache_path,
        split=split_path,
        prep=stat_prep_path,
    output:
        "results/experts/{dataset}/if{imb}/{expert}/model.pt",
    wildcard_constraints:
        expert=STAT_EXPERT,
    params:
        expert=stat_expert_params,
        code=code_digest(
            "src/ltdistill/statistical/glmc.py", "src/ltdistill/statistical/augment.py"
        ),
        device=DEVICE,
    threads: THREADS
    log:
        "logs/experts/{dataset}/if{imb}/{expert}.log",
    benchmark:
        "benchmarks/experts/{dataset}/if{imb}/{expert}.tsv"
    conda:
        ENV
    script:
        "../workflow/scripts/train_statistical_expert.py"


rule bn_recalibrate:
    input:
        cache=cache_path,
        split=split_path,
        prep=stat_prep_path,
        observer="results/experts/{dataset}/if{imb}/{expert}/model.pt",
    output:
        "results/experts/{dataset}/if{imb}/bnstats_{expert}.pt",
    wildcard_constraints:
        expert=STAT_EXPERT,
    params:
        expert=stat_expert_params,
        code=code_digest("src/ltdistill/statistical/bn_recal.py"),
        device=DEVICE,
    threads: THREADS
    log:
        "logs/experts/{dataset}/if{imb}/bnstats_{expert}.log",
    benchmark:
        "benchmarks/experts/{dataset}/if{imb}/bnstats_{expert}.tsv"
    conda:
        ENV
    script:
        "../workflow/scripts/bn_recalibrate.py"
