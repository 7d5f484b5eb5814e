# ltdistill: long-tailed dataset distillation benchmark.
# Run: snakemake --cores all  (add --use-conda on machines with conda; --profile profiles/slurm on a cluster)
from snakemake.utils import min_version, validate

min_version("9.0")


# --configfile replaces the default config instead of being merged onto it, so CPU-sized settings of
# config/config.yaml can never leak into a paper-scale run.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"



validate(config, "workflow/schemas/config.schema.yaml")


# Every job process starts with glibc's allocator tuned for large tensors (runtime.allocator:
# GLIBC_TUNABLES is read only at process start, so it is set here, for the jobs Snakemake starts).
import os
from ltdistill.allocator import job_environment

os.environ.update(job_environment(config["runtime"].get("allocator", "auto")))


report: "workflow/report/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/experts.smk"
include: "rules/trajectory.smk"
include: "rules/statistical.smk"
include: "rules/two_stage.smk"
include: "rules/distill.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        get_final_outputs(),


onsuccess:
    # failure records (a method diverged or could not run) do not fail a job; say so at the end
    from ltdistill.reporting.failures import summary

    n_failed, text = summary("results/tables/evaluations.csv")
    if n_failed:
        print(text)
