# Aggregation, tables and figures. Cheap rules only: they read metrics JSONs, image sets and
# features, never train. Their params carry a hash of the reporting code they import, so editing
# plotting code reruns these rules and nothing upstream.
from ltdistill.workflow_support import dataset_if_pairs, grid_points, image_sets

REPORT_CODE = code_digest(
    "src/ltdistill/reporting/aggregate.py",
    "src/ltdistill/reporting/tables.py",
    "src/ltdistill/reporting/published.py",
    "src/ltdistill/reporting/published_results.csv",
    "src/ltdistill/reporting/run.py",
)
FIGURE_CODE = code_digest("src/ltdistill/reporting/figures.py", "src/ltdistill/reporting/run.py")
TABLES = ["main", "protocol_b", "classwise", "shot", "hlr_ior", "cross_arch", "cost"]


def report_targets():
    targets = expand("results/tables/{table}.{ext}", table=TABLES, ext=["md", "tex", "csv"])
    targets += ["results/figures/accuracy_vs_if.png", "results/figures/cost.png"]
    targets += sorted({f"results/figures/classwise/{p.dataset}_if{p.imbalance_factor}_ipc{p.ipc}.png"
                       for p in grid_points(config)})
    targets += [f"results/figures/tsne/{d}_if{i}.png" for d, i in dataset_if_pairs(config)]
    targets += [key.figure for key in image_sets(config)]
    return targets


rule aggregate:
    input:
        evaluation_targets(config),
    output:
        tidy="results/tables/evaluations.csv",
    params:
        code=REPORT_CODE,
    log:
        "logs/report/aggregate.log",
    conda:
        ENV
    script:
        "../workflow/scripts/aggregate.py"


rule tables:
    input:
        tidy="results/tables/evaluations.csv",
    output:
        report(
            expand("results/tables/{table}.{ext}", table=TABLES, ext=["md", "tex", "csv"]),
            caption="../workflow/report/tables.rst",
            category="Tables",
        ),
    params:
        method_order=config["report"].get("method_order", []),
        grid=config["grid"],
        code=REPORT_CODE,
    log:
        "logs/report/tables.log",
    conda:
        ENV
    script:
        "../workflow/scripts/tables.py"


rule figures:
    input:
        tidy="results/tables/evaluations.csv",
    output:
        ifplot=report(
            "results/figures/accuracy_vs_if.png",
            caption="../workflow/report/accuracy_vs_if.rst",
            category="Figures",
        ),
        cost=report(
            "results/figures/cost.png", caption="../workflow/report/cost.rst", category="Cost"
        ),
        classwise=report(
            [f"results/figures/classwise/{p.dataset}_if{p.imbalance_factor}_ipc{p.ipc}.png"
             for p in sorted(set(grid_points(config)), key=str)],
            caption="../workflow/report/classwise.rst",
            category="Figures",
        ),
    params:
        method_order=config["report"].get("method_order", []),
        code=FIGURE_CODE,
    log:
        "logs/report/figures.log",
    conda:
        ENV
    script:
        "../workflow/scripts/figures.py"


IMAGE_SETS = image_sets(config)


# One job draws every image set: each drawing takes well under a second, while a job of its own
# costs ~4 s of start-up (Python, torch), 13 jobs in the default grid. Its outputs are all written
# or, when it fails, all removed by Snakemake.
rule image_grids:
    input:
        image_sets=[key.path for key in IMAGE_SETS],
        preps=sorted({prep_path(key) for key in IMAGE_SETS}),
        caches=sorted({cache_path(key) for key in IMAGE_SETS}),
    output:
        [
            report(
                key.figure,
                caption="../workflow/report/image_grid.rst",
                category="Image sets",
                subcategory=f"{key.dataset} IF {key.imb} IPC {key.ipc}",
                labels={"method": key.method, "seed": str(key.dseed)},
            )
            for key in IMAGE_SETS
        ],
    params:
        sets=[{"image_set": key.path, "prep": prep_path(key), "cache": cache_path(key),
               "out": key.figure} for key in IMAGE_SETS],
        max_per_class=config["report"].get("image_grid", {}).get("max_per_class", 10),
        code=FIGURE_CODE,
    log:
        "logs/report/image_grids.log",
    conda:
        ENV
    script:
        "../workflow/scripts/image_grid.py"


rule tsne_features:
    input:
        cache=cache_path,
        split=split_path,
        prep=lambda w: prep_path(w, method="full"),
        model=reference_path,
    output:
        "results/report_data/tsne/{dataset}/if{imb}.pt",
    params:
        tsne=config["report"].get("tsne", {}),
        device=DEVICE,
    threads: THREADS
    log:
        "logs/report/tsne_features/{dataset}/if{imb}.log",
    benchmark:
        "benchmarks/report/tsne_features/{dataset}/if{imb}.tsv"
    conda:
        ENV
    script:
        "../workflow/scripts/tsne_features.py"


rule tsne_plot:
    input:
        "results/report_data/tsne/{dataset}/if{imb}.pt",
    output:
        report(
            "results/figures/tsne/{dataset}_if{imb}.png",
            caption="../workflow/report/tsne.rst",
            category="Figures",
        ),
    params:
        seed=config["report"].get("tsne", {}).get("seed", 0),
        code=FIGURE_CODE,
    log:
        "logs/report/tsne/{dataset}/if{imb}.log",
    conda:
        ENV
    script:
        "../workflow/scripts/tsne_plot.py"
