# The two-stage hierarchical classifier plugin (two_stage.md): grouping of similar classes from
# the reference model's features, a group classifier shared per dataset / IF / data source,
# intra-group classifiers on any method's image set, the stability check and the report outputs.
# Targets: ltdistill.two_stage.targets (two_stage_targets, two_stage_report_targets).
import re

from ltdistill.two_stage.config import VARIANTS, split_variant
from ltdistill.workflow_support import dataset_if_pairs, preprocessing_kind
from ltdistill.two_stage.targets import (
    one_stage_targets,
    settings as two_stage_settings,
    stability_view,
    two_stage_seeds,
    two_stage_targets,
)

TWO_STAGE_CFG = two_stage_settings(config)  # fails early on a bad `two_stage:` section
TWO_STAGE = dict(config.get("two_stage") or {})
TWO_STAGE_GROUPING_CODE = code_digest(
    "src/ltdistill/two_stage/grouping.py", "src/ltdistill/two_stage/config.py"
)
TWO_STAGE_PLOT_CODE = code_digest("src/ltdistill/two_stage/plots.py")
DISTILLED_SOURCE = "ipc[0-9]+/[a-z0-9_]+/s[0-9]+"


def ts_params(*keys):
    """The parts of the `two_stage:` section a rule uses (so unrelated edits rerun nothing)."""
    return {k: TWO_STAGE[k] for k in keys if k in TWO_STAGE}


def ts_distilled(source):
    """'ipc10/random/s0' -> (10, 'random', 0)."""
    ipc, method, dseed = re.fullmatch(r"ipc([0-9]+)/([a-z0-9_]+)/s([0-9]+)", source).groups()
    return int(ipc), method, int(dseed)


def ts_image_set(w, ipc, method, dseed):
    return f"results/distilled/{w.dataset}/if{w.imb}/ipc{ipc}/{method}/s{dseed}/image_set.pt"


def ts_view_inputs(w):
    inputs = {"cache": cache_path(w), "split": split_path(w)}
    if w.view == "lt":
        inputs.update(prep=prep_path(w, method="full"), model=reference_path(w))
    elif w.view == "balanced":
        kind = preprocessing_kind(config, w.dataset, "full")
        inputs.update(prep=f"results/preprocess/{w.dataset}/if1/{kind}.pt",
                      model=f"results/reference/{w.dataset}/if1/model.pt")
    else:
        ipc, method, dseed = ts_distilled(w.view)
        inputs.update(prep=prep_path(w, method=method),
                      image_set=ts_image_set(w, ipc, method, dseed))
    return inputs


def ts_stability_view(w):
    ipc, method, dseed = stability_view(config, w.dataset, w.imb)
    return f"results/two_stage/{w.dataset}/if{w.imb}/views/ipc{ipc}/{method}/s{dseed}.pt"


def ts_group_inputs(w):
    inputs = {"cache": cache_path(w), "split": split_path(w),
              "grouping": f"results/two_stage/{w.dataset}/if{w.imb}/grouping.pt"}
    if w.source == "original":
        inputs["prep"] = prep_path(w, method="full")
    else:
        ipc, method, dseed = ts_distilled(w.source)
        inputs.update(prep=prep_path(w, method=method),
                      image_set=ts_image_set(w, ipc, method, dseed))
    return inputs


def ts_eval_inputs(w):
    stage1, stage2 = split_variant(w.variant)
    group = "original" if stage1 == "original" else f"ipc{w.ipc}/{w.method}/s{w.dseed}"
    inputs = {"cache": cache_path(w), "split": split_path(w),
              "prep_original": prep_path(w, method="full"), "prep_method": prep_path(w),
              "grouping": f"results/two_stage/{w.dataset}/if{w.imb}/grouping.pt",
              "group_model": f"results/two_stage/{w.dataset}/if{w.imb}/group/{group}.pt"}
    if "distilled" in (stage1, stage2):
        inputs["image_set"] = image_set_path(w)
    return inputs


def ts_bars_inputs(w):
    prefixes = (f"results/evaluation/{w.dataset}/if{w.imb}/ipc{w.ipc}/{w.method}/",
                f"results/evaluation/{w.dataset}/if{w.imb}/ipc0/full/")
    two = [t for t in two_stage_targets(config) if t.startswith(prefixes)]
    one = one_stage_targets(config, w.dataset, int(w.imb), int(w.ipc), [w.method])
    return {"one_stage": one, "two_stage": two}


def ts_table_inputs(w):
    one = []
    for dataset, imb in dataset_if_pairs(config):
        one += one_stage_targets(config, dataset, imb)
    return {"one_stage": sorted(set(one)), "two_stage": two_stage_targets(config)}


ruleorder: two_stage_evaluate > evaluate


rule two_stage_grouping:
    input:
        cache=cache_path,
        split=split_path,
        prep=lambda w: prep_path(w, method="full"),
        model=reference_path,
    output:
        grouping="results/two_stage/{dataset}/if{imb}/grouping.pt",
        summary="results/two_stage/{dataset}/if{imb}/grouping.json",
    params:
        two_stage=ts_params("kmeans", "partition"),
        code=TWO_STAGE_GROUPING_CODE,
        device=DEVICE,
    threads: THREADS
    log:
        "logs/two_stage/{dataset}/if{imb}/grouping.log",
    benchmark:
        "benchmarks/two_stage/grouping/{dataset}/if{imb}.tsv"
    conda:
        ENV
    script:
        "../workflow/scripts/two_stage_grouping.py"


rule two_stage_view:
    input:
        unpack(ts_view_inputs),
    output:
        "results/two_stage/{dataset}/if{imb}/views/{view}.pt",
    wildcard_constraints:
        view=f"lt|balanced|{DISTILLED_SOURCE}",
    params:
        two_stage=ts_params("kmeans", "partition", "feature_extractor", "figures"),
        network=config["network"],
        dsa_strategy=lambda w: config["datasets"][w.dataset]["dsa_strategy"],
        code=TWO_STAGE_GROUPING_CODE,
        device=DEVICE,
    threads: THREADS
    log:
        "logs/two_stage/{dataset}/if{imb}/views/{view}.log",
    benchmark:
        "benchmarks/two_stage/views/{dataset}/if{imb}/{view}.tsv"
    conda:
        ENV
    script:
        "../workflow/scripts/two_stage_view.py"


rule two_stage_stability:
    input:
        balanced="results/two_stage/{dataset}/if{imb}/views/balanced.pt",
        lt="results/two_stage/{dataset}/if{imb}/views/lt.pt",
        distilled=ts_stability_view,
    output:
        "results/two_stage/{dataset}/if{imb}/stability.json",
    log:
        "logs/two_stage/{dataset}/if{imb}/stability.log",
    conda:
        ENV
    script:
        "../workflow/scripts/two_stage_stability.py"


rule two_stage_group_classifier:
    input:
        unpack(ts_group_inputs),
    output:
        "results/two_stage/{dataset}/if{imb}/group/{source}.pt",
    wildcard_constraints:
        source=f"original|{DISTILLED_SOURCE}",
    params:
        two_stage=ts_params("group_classifier"),
        network=config["network"],
        dsa_strategy=lambda w: config["datasets"][w.dataset]["dsa_strategy"],
        device=DEVICE,
    threads: THREADS
    log:
        "logs/two_stage/{dataset}/if{imb}/group/{source}.log",
    benchmark:
        "benchmarks/two_stage/group/{dataset}/if{imb}/{source}.tsv"
    conda:
        ENV
    script:
        "../workflow/scripts/two_stage_group_classifier.py"


# One job per seed, or (runtime.batch_eval_seeds, as rules/evaluate.smk) one job per variant that
# trains every evaluation seed and writes the same per-seed JSONs.
TS_EVAL_DIR = "{dataset}/if{imb}/ipc{ipc}/{method}/s{dseed}/{model}/two_stage_{variant}"
TS_EVAL_SEEDS = two_stage_seeds(config, TWO_STAGE_CFG)
if config["runtime"].get("batch_eval_seeds", False):
    _ts_eval_out = [f"results/evaluation/{TS_EVAL_DIR}/seed{s}.json" for s in TS_EVAL_SEEDS]
    _ts_eval_tag = "seeds"
else:
    _ts_eval_out = [f"results/evaluation/{TS_EVAL_DIR}/seed{{eseed}}.json"]
    _ts_eval_tag = "seed{eseed}"


rule two_stage_evaluate:
    input:
        unpack(ts_eval_inputs),
    output:
        _ts_eval_out,
    wildcard_constraints:
        variant="|".join(VARIANTS),
    params:
        two_stage=ts_params("intra_classifier", "routing"),
        network=config["network"],
        dsa_strategy=lambda w: config["datasets"][w.dataset]["dsa_strategy"],
        device=DEVICE,
        seeds=TS_EVAL_SEEDS,
    threads: THREADS
    log:
        f"logs/evaluation/{TS_EVAL_DIR}/{_ts_eval_tag}.log",
    benchmark:
        f"benchmarks/evaluate/{TS_EVAL_DIR}/{_ts_eval_tag}.tsv"
    conda:
        ENV
    script:
        "../workflow/scripts/two_stage_evaluate.py"


rule two_stage_tsne:
    input:
        balanced="results/two_stage/{dataset}/if{imb}/views/balanced.pt",
        lt="results/two_stage/{dataset}/if{imb}/views/lt.pt",
        distilled=lambda w: (f"results/two_stage/{w.dataset}/if{w.imb}/views/ipc{w.ipc}/"
                             f"{w.method}/s{config['distill_seeds'][0]}.pt"),
    output:
        report(
            "results/figures/two_stage/tsne_{dataset}_if{imb}_ipc{ipc}_{method}.png",
            caption="../workflow/report/tsne.rst",
            category="Two-stage",
        ),
    params:
        seed=(config.get("two_stage") or {}).get("figures", {}).get("seed", 0),
        code=TWO_STAGE_PLOT_CODE,
    log:
        "logs/two_stage/figures/tsne_{dataset}_if{imb}_ipc{ipc}_{method}.log",
    conda:
        ENV
    script:
        "../workflow/scripts/two_stage_tsne.py"


rule two_stage_bars:
    input:
        unpack(ts_bars_inputs),
    output:
        report(
            "results/figures/two_stage/classwise_{dataset}_if{imb}_ipc{ipc}_{method}.png",
            caption="../workflow/report/classwise.rst",
            category="Two-stage",
        ),
    params:
        code=TWO_STAGE_PLOT_CODE,
    log:
        "logs/two_stage/figures/classwise_{dataset}_if{imb}_ipc{ipc}_{method}.log",
    conda:
        ENV
    script:
        "../workflow/scripts/two_stage_bars.py"


rule two_stage_table:
    input:
        unpack(ts_table_inputs),
    output:
        expand("results/tables/two_stage.{ext}", ext=["md", "tex", "csv"]),
    params:
        code=TWO_STAGE_PLOT_CODE,
    log:
        "logs/two_stage/table.log",
    conda:
        ENV
    script:
        "../workflow/scripts/two_stage_table.py"
