"""Report stages over paths (aggregate, tables, figures, image grids, t-SNE), one function per
workflow script. Only reads metrics JSONs, image sets and features; never trains."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ..atomic import write_text
from .aggregate import collect, read_tidy, write_tidy

log = logging.getLogger("ltdistill.reporting")

NO_DATA = "_No evaluations for this view in the configured grid._\n"


def aggregate(paths: Sequence[str | Path], out: str | Path) -> None:
    df = collect(list(paths))
    write_tidy(df, out)
    log.info("aggregated %d evaluation records into %s", len(df), out)


def benchmark_files(root: str | Path = "benchmarks") -> dict[str, Path]:
    """Snakemake benchmark TSVs keyed "stage/job" (stage = first folder under benchmarks/)."""
    root = Path(root)
    files = {}
    for path in sorted(root.rglob("*.tsv")):
        rel = path.relative_to(root).with_suffix("")
        files[f"{rel.parts[0]}/{'/'.join(rel.parts[1:]) or rel.parts[0]}"] = path
    return files


def _write_or_placeholder(build, stem: Path) -> None:
    """Write a table; a view with no data (e.g. no cross-architecture runs configured) still gets
    its three files so the report is complete, each saying why it is empty."""
    from .tables import write_table

    try:
        write_table(build(), stem)
    except (ValueError, KeyError) as exc:
        log.info("table %s: %s", stem.name, exc)
        write_text(stem.with_suffix(".md"), NO_DATA + f"\n<!-- {exc} -->\n")
        write_text(stem.with_suffix(".tex"), "% " + NO_DATA)
        pd.DataFrame({"note": [str(exc)]}).to_csv(stem.with_suffix(".csv"), index=False)


def make_tables(tidy: str | Path, outputs: Sequence[str | Path], method_order: Sequence[str],
                benchmarks_dir: str | Path = "benchmarks") -> None:
    from . import tables as T

    df = read_tidy(tidy)
    order = list(method_order) or None
    stems = {Path(p).with_suffix("") for p in outputs}
    builders = {
        "main": lambda: T.main_table(df, published=True, order=order),
        # RLDD-style KD evaluation (evaluation_protocol.md §3): its own table, never mixed with A
        "protocol_b": lambda: T.main_table(df, published=True, order=order, recipe="protocol_b"),
        "classwise": lambda: _classwise_all(df, order),
        "shot": lambda: T.shot_table(df, order=order),
        "hlr_ior": lambda: T.hlr_ior_table(with_hard_label_rows(df), order=order),
        "cross_arch": lambda: T.cross_arch_table(df, order=order),
        "cost": lambda: T.cost_table(benchmark_files(benchmarks_dir)),
    }
    for stem in sorted(stems):
        _write_or_placeholder(builders[stem.name], stem)


def with_hard_label_rows(df: pd.DataFrame) -> pd.DataFrame:
    """HLR needs hard-label accuracy. For image sets without soft labels the method's own
    (protocol_a) run already is the hard-label run, so it is reused as recipe `hard`; soft-label
    methods have real `hard` evaluations from the workflow."""
    have_hard = set(df.loc[df["recipe"] == "hard", "method"])
    hard_only = df[(df["recipe"] == "protocol_a") & ~df["soft_labels_used"].fillna(False).astype(bool)
                   & ~df["method"].isin(have_hard)]
    return pd.concat([df, hard_only.assign(recipe="hard")], ignore_index=True)


def _classwise_all(df: pd.DataFrame, order):
    """One class-wise table per (dataset, IF, IPC) of the ConvNet runs, stacked."""
    from .tables import Table, classwise_table

    ok = df[(df["status"] == "ok") & (df["recipe"] == "protocol_a")]
    settings = (ok[ok["ipc"] > 0][["dataset", "imbalance_factor", "ipc"]].drop_duplicates()
                .sort_values(["dataset", "imbalance_factor", "ipc"]).itertuples(index=False))
    parts = []
    for d, f, p in settings:
        sub = ok[(ok.dataset == d) & (ok.imbalance_factor == f) & ok.ipc.isin([0, p])]
        model = sub["model"].value_counts().index[0] if "convnet" not in set(sub.model) else "convnet"
        parts.append((f"{d} IF {f} IPC {p}", classwise_table(sub, model=model, order=order)))
    if not parts:
        raise ValueError("no successful protocol_a evaluations")
    frame = pd.concat([t.frame.assign(setting=name) for name, t in parts])
    md = "\n\n".join(f"### {name}\n\n{t.markdown}" for name, t in parts)
    tex = "\n\n".join(t.latex for _, t in parts)
    return Table(frame, md, tex)


def make_figures(tidy: str | Path, ifplot: str | Path, cost: str | Path,
                 classwise_outs: Sequence[str | Path], method_order: Sequence[str],
                 benchmarks_dir: str | Path = "benchmarks") -> None:
    from . import figures as F
    from .aggregate import classwise
    from .tables import cost_table

    df = read_tidy(tidy)
    order = list(method_order) or None
    F.accuracy_vs_if(df, ifplot, order=order)
    F.cost_bars(cost_table(benchmark_files(benchmarks_dir)).frame, cost)
    long = classwise(df)
    for out in classwise_outs:
        # file name: {dataset}_if{IF}_ipc{IPC}.png
        name = Path(out).stem
        dataset, rest = name.rsplit("_if", 1)
        imb, ipc = rest.split("_ipc")
        sub = long[(long.dataset == dataset) & (long.imbalance_factor == int(imb))
                   & long.ipc.isin([0, int(ipc)]) & (long.recipe == "protocol_a")]
        models = set(sub["model"])
        model = "convnet" if "convnet" in models else sorted(models)[0]
        F.classwise_bars(sub[sub.model == model], out, order=order)


def image_grid(image_set_path: str | Path, preprocessing_path: str | Path, cache: str | Path,
               out: str | Path, max_per_class: int) -> None:
    from ..data.base import load_dataset_cache
    from ..data.preprocess import load_preprocessing
    from ..io import load_image_set
    from .figures import image_grid as draw

    s = load_image_set(image_set_path)
    prep = load_preprocessing(preprocessing_path)
    class_names = load_dataset_cache(cache).class_names
    draw(prep.to_unit(s.images), s.labels, class_names, out, max_per_class=max_per_class,
         note=f"failed: {s.failure_reason}" if s.failed else None)


def tsne_plot(features_path: str | Path, out: str | Path, seed: int) -> None:
    from ..io import load_tensors
    from .figures import tsne_plot as draw

    tensors, meta = load_tensors(features_path)
    draw(tensors["features"].numpy(), tensors["labels"].numpy(), tensors["centroids"].numpy(),
         meta["class_names"], out, seed=seed)
