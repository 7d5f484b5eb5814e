# Config checks beyond the schema, wildcard constraints, and the get_* helpers every rule uses.
import functools
import hashlib
from pathlib import Path

from ltdistill.two_stage.targets import two_stage_report_targets, two_stage_targets
from ltdistill.workflow_support import (
    check_config,
    code_closure,
    eval_recipe,
    evaluation_targets,
    method_needs,
    method_slug_registered,
    preprocessing_kind,
    reference_recipe,
)

check_config(config)

ENV = "../environment.yml"
THREADS = int(config["runtime"].get("threads", 1))
DEVICE = config["runtime"].get("device", "auto")
ROOT = Path(workflow.basedir)


wildcard_constraints:
    dataset="[a-z0-9_]+",
    imb="[0-9]+",
    ipc="[0-9]+",
    method="[a-z0-9_]+",
    dseed="[0-9]+",
    model="[a-z0-9_]+",
    recipe="[a-z0-9_]+",
    eseed="[0-9]+",
    kind="[a-z]+",


def code_digest(*relpaths):
    """Content hash of source files, as a param: a real code change reruns the rule, a touch does not."""
    h = hashlib.sha256()
    for rel in relpaths:
        h.update((ROOT / rel).read_bytes())
    return h.hexdigest()[:16]


def dataset_options(wildcards):
    return config["datasets"][wildcards.dataset]


def split_path(w):
    return f"results/splits/{w.dataset}/if{w.imb}/split.json"


def cache_path(w):
    return f"results/data/{w.dataset}/dataset.pt"


def prep_path(w, method=None):
    kind = preprocessing_kind(config, w.dataset, method or w.method)
    return f"results/preprocess/{w.dataset}/if{w.imb}/{kind}.pt"


def reference_path(w):
    return f"results/reference/{w.dataset}/if{w.imb}/model.pt"


# artifact kind -> function(wildcards) -> path or list of paths. Rule files that produce an artifact
# a method `needs` register it here (e.g. rules/trajectory.smk adds the expert kinds).
ARTIFACTS = {
    "feature_model": reference_path,
}
# evaluation recipe -> function(wildcards) -> {name: path}: extra inputs a recipe reads (e.g. the
# teacher of Protocol B). Registered by the rule file that produces them.
EVAL_ARTIFACTS = {}


def eval_inputs(w):
    inputs = {"image_set": image_set_path(w), "cache": cache_path(w), "split": split_path(w),
              "prep": prep_path(w)}
    if w.recipe in EVAL_ARTIFACTS:
        inputs.update(EVAL_ARTIFACTS[w.recipe](w))
    return inputs


def distill_inputs(w):
    inputs = {"cache": cache_path(w), "split": split_path(w), "prep": prep_path(w)}
    for need in method_needs(config, w.method):
        inputs[need] = ARTIFACTS[need](w)
    return inputs


def distill_artifacts(w, input):
    return {need: input[need] for need in method_needs(config, w.method)}


def method_code(w):
    """Hash of the method's module and every package module it imports (workflow_support.
    code_closure): editing trajectory_core.py reruns mtt/datm/damed, not random."""
    return _registered_method_code(method_slug_registered(config, w.method))


@functools.cache
def _registered_method_code(registered):
    # once per registered method and DAG build: parsing the import closure for each of paper.yaml's
    # 1,620 distill jobs took two of its four minutes of DAG building
    return code_digest(*code_closure(ROOT / "src/ltdistill", f"methods.{registered}"))


EVAL_CODE = code_digest(*code_closure(ROOT / "src/ltdistill", "evaluation.evaluate"))


def image_set_path(w):
    return (f"results/distilled/{w.dataset}/if{w.imb}/ipc{w.ipc}/{w.method}/s{w.dseed}/"
            "image_set.pt")


def get_final_outputs():
    """The report's files. Every evaluation and two-stage metrics JSON is an input of the rules
    making them (aggregate, two_stage_table), so `all` need not list the ~17,000 JSONs of
    paper.yaml again (each listed file costs Snakemake another producer lookup; the same jobs,
    a dry run 15.6 -> 15.0 s)."""
    return report_targets() + two_stage_report_targets(config)
