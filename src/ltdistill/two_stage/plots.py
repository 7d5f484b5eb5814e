"""Two-stage report outputs: Figure 1 (t-SNE panels of balanced / LT / distilled extractors with
per-class centroids), one-stage vs two-stage class-wise bars, and the two-stage table. Built on
ltdistill.reporting (imported lazily: matplotlib/seaborn only load when a report is drawn)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

SOURCE_LABELS = {"original": "Original", "distilled": "Distilled"}


def _variant_of(record: dict[str, Any]) -> str | None:
    recipe = str(record.get("recipe", ""))
    return recipe[len("two_stage_"):] if recipe.startswith("two_stage_") else None


def training_label(record: dict[str, Any]) -> str:
    """'Original + DC' style label of how a record's classifier was trained ('DC' one-stage)."""
    from ..reporting.tables import method_label

    method = record["method"]
    variant = _variant_of(record)
    name = "Original" if method == "full" else method_label(method)
    if variant is None:
        return f"{name} (one-stage)" if record.get("recipe") == "protocol_a" else \
            f"{name} ({record.get('recipe')})"
    a, b = variant.split("_")
    parts = ["Original" if s == "original" else name for s in (a, b)]
    return " + ".join(parts)


# --------------------------------------------------------------------------- Figure 1

def tsne_panels(panels: Sequence[dict[str, Any]], out: str | Path, seed: int = 0) -> list[Path]:
    """One t-SNE panel per extractor: test features coloured by class, per-class centroids as
    black-edged stars (embedded jointly with the points), the extractor's groups in the
    subtitle."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ..reporting.figures import save_figure, tsne_embed

    n = len(panels)
    fig = Figure(figsize=(4.6 * n + 1.6, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n, squeeze=False)[0]
    class_names = list(panels[0]["class_names"])
    import matplotlib as mpl

    cmap = mpl.colormaps["tab10" if len(class_names) <= 10 else "hsv"]
    colors = [cmap(k % cmap.N if len(class_names) <= 10 else k / len(class_names))
              for k in range(len(class_names))]
    for ax, panel in zip(axes, panels, strict=True):
        labels = np.asarray(panel["labels"]).astype(int)
        cen = np.asarray(panel["centroids"])
        emb = tsne_embed(np.asarray(panel["features"]), cen, seed)
        pts, cemb = emb[:len(labels)], emb[len(labels):]
        m = cen.shape[1]
        for k, name in enumerate(class_names):
            sel = labels == k
            if sel.any():
                ax.scatter(pts[sel, 0], pts[sel, 1], s=7, color=colors[k], alpha=0.7, lw=0,
                           label=str(name))
            part = cemb[k * m:(k + 1) * m]
            ax.scatter(part[:, 0], part[:, 1], s=90, marker="*", color=colors[k],
                       edgecolors="black", linewidths=0.8, zorder=3)
        groups = " | ".join(", ".join(str(c) for c in g) for g in panel.get("groups", []))
        ax.set_title(f"{panel['title']}\n{groups}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    if len(class_names) <= 20:
        handles, labs = axes[0].get_legend_handles_labels()
        fig.legend(handles, labs, loc="outside right center", fontsize=7, frameon=False)
    return save_figure(fig, out)


# --------------------------------------------------------------------------- class-wise bars

def _classwise_frame(records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for rec in records:
        if rec.get("status", "ok") != "ok":
            continue
        label = training_label(rec)
        for c, acc in enumerate(rec["test"]["per_class"]):
            rows.append({"label": label, "class_index": c, "acc": np.nan if acc is None else acc})
    return pd.DataFrame(rows, columns=["label", "class_index", "acc"])


def _label_order(labels: Sequence[str]) -> list[str]:
    def key(lab: str) -> tuple[int, str]:
        one = "(one-stage)" in lab
        orig = lab.startswith("Original")
        return (0 if one and orig else 1 if one else 2 if orig else 3, lab)

    return sorted(set(labels), key=key)


def one_vs_two_stage_bars(records: Sequence[dict[str, Any]], out: str | Path) -> list[Path]:
    """Grouped bars of class-wise accuracy (%), one bar per training (one-stage: the full LT
    data and the method; two-stage: each variant), mean ± std (ddof 0) over records; classes
    of group 1 first, group boundary marked; mean top-1 / std / group accuracy in the legend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ..reporting.figures import save_figure

    records = [r for r in records if r.get("status", "ok") == "ok"]
    if not records:
        raise ValueError("one_vs_two_stage_bars: no successful records")
    df = _classwise_frame(records)
    class_names = records[0]["class_names"]
    part = next((r["partition"] for r in records if r.get("partition")), None)
    order = list(range(len(class_names)))
    bounds: list[int] = []
    if part:
        order = [c for g in part["groups"] for c in g]
        sizes = np.cumsum([len(g) for g in part["groups"]])[:-1]
        bounds = [int(s) for s in sizes]
    labels = _label_order(df["label"].tolist())
    stats = df.groupby(["label", "class_index"])["acc"].agg(
        mean="mean", std=lambda a: float(np.std(a, ddof=0)))
    summary: dict[str, str] = {}
    for lab in labels:
        recs = [r for r in records if training_label(r) == lab]
        top1 = np.mean([r["test"]["top1"] for r in recs]) * 100
        std = np.mean([r["test"]["class_std"] for r in recs]) * 100
        gacc = [r["test"].get("group_acc") for r in recs if r["test"].get("group_acc") is not None]
        extra = f", group {np.mean(gacc) * 100:.1f}" if gacc else ""
        summary[lab] = f"{lab}: top-1 {top1:.1f}, std {std:.1f}{extra}"
    n_cls, n_l = len(order), len(labels)
    fig = Figure(figsize=(max(7.0, 0.55 * n_cls * max(1.0, n_l / 2.5)), 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    import matplotlib as mpl

    cmap = mpl.colormaps["tab10"]
    width = 0.8 / n_l
    x = np.arange(n_cls)
    for k, lab in enumerate(labels):
        means = [stats["mean"].get((lab, c), np.nan) * 100 for c in order]
        stds = [stats["std"].get((lab, c), np.nan) * 100 for c in order]
        ax.bar(x - 0.4 + width * (k + 0.5), means, width, yerr=stds, color=cmap(k % 10),
               label=summary[lab], capsize=1.5, error_kw={"lw": 0.6})
    for b in bounds:
        ax.axvline(b - 0.5, color="black", lw=0.8, ls="--")
    ax.set_xticks(x)
    ax.set_xticklabels([str(class_names[c]) for c in order], rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, 105)
    ax.set_xlim(-0.6, n_cls - 0.4)
    ax.set_ylabel("class accuracy (%)")
    r0 = records[0]
    ipc = next((r["ipc"] for r in records if r["method"] != "full"), r0["ipc"])
    ax.set_title(f"{r0['dataset']} IF {r0['imbalance_factor']} IPC {ipc}: one-stage vs "
                 "two-stage (groups separated by dashed lines)", fontsize=9)
    fig.legend(loc="outside lower center", fontsize=7, ncol=2, frameon=False)
    return save_figure(fig, out)


# --------------------------------------------------------------------------- table

def _mean_std(values: Sequence[float | None]) -> tuple[float, float]:
    vals = np.asarray([v for v in values if v is not None and not
                       (isinstance(v, float) and math.isnan(v))], dtype=float)
    if not vals.size:
        return math.nan, math.nan
    return float(vals.mean()), float(vals.std(ddof=0))


def two_stage_summary(records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per (dataset, IF, IPC, method, model, training) with means (and ddof-0 stds over
    seeds) of top-1, class std and group accuracy, in percent, and Train Img Num."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for rec in records:
        if rec.get("status", "ok") != "ok":
            continue
        key = (rec["dataset"], int(rec["imbalance_factor"]), int(rec["ipc"]), rec["method"],
               rec["model"], str(rec["recipe"]))
        groups.setdefault(key, []).append(rec)
    rows = []
    for (d, f, p, m, model, recipe), recs in sorted(groups.items()):
        top1, top1_sd = _mean_std([r["test"]["top1"] for r in recs])
        std, _ = _mean_std([r["test"]["class_std"] for r in recs])
        gacc, _ = _mean_std([r["test"].get("group_acc") for r in recs])
        shot = {g: _mean_std([(r["test"].get("shot") or {}).get(g) for r in recs])[0]
                for g in ("many", "medium", "few")}
        rows.append({
            "dataset": d, "imbalance_factor": f, "ipc": p, "method": m, "model": model,
            "recipe": recipe, "training": training_label(recs[0]),
            "train_img_num": int(recs[0].get("train_img_num", recs[0].get("train_images", 0))),
            "top1": top1 * 100, "top1_std_over_seeds": top1_sd * 100, "class_std": std * 100,
            "group_acc": gacc * 100, **{k: v * 100 for k, v in shot.items()}, "runs": len(recs)})
    return pd.DataFrame(rows)


def two_stage_table(records: Sequence[dict[str, Any]], outs: Sequence[str | Path]) -> None:
    """Write the summary as Markdown, LaTeX and CSV (the stems of `outs`)."""
    from ..reporting.tables import (
        Table,
        dataset_label,
        frame_grid,
        render_latex,
        render_markdown,
        write_table,
    )

    frame = two_stage_summary(records)
    if frame.empty:
        raise ValueError("two_stage_table: no successful records")

    def pm(m: float, s: float) -> str:
        if not np.isfinite(m):
            return "–"
        return f"{m:.1f} ± {s:.1f}" if np.isfinite(s) else f"{m:.1f}"

    shown = pd.DataFrame({
        "Setting": [f"{dataset_label(d)} IF {f} IPC {p}" for d, f, p in
                    frame[["dataset", "imbalance_factor", "ipc"]].itertuples(index=False)],
        "Training (stage 1 + stage 2)": frame["training"],
        "Train Img Num": frame["train_img_num"].astype(str),
        "Total Acc (%)": [pm(m, s) for m, s in zip(frame["top1"], frame["top1_std_over_seeds"],
                                                   strict=True)],
        "Acc Std (%)": [f"{v:.1f}" for v in frame["class_std"]],
        "Group Acc (%)": [f"{v:.1f}" if np.isfinite(v) else "–" for v in frame["group_acc"]],
        "Many": [f"{v:.1f}" if np.isfinite(v) else "–" for v in frame["many"]],
        "Medium": [f"{v:.1f}" if np.isfinite(v) else "–" for v in frame["medium"]],
        "Few": [f"{v:.1f}" if np.isfinite(v) else "–" for v in frame["few"]],
        "Runs": frame["runs"].astype(str),
    })
    grid = frame_grid(shown)
    stem = Path(outs[0]).with_suffix("")
    write_table(Table(frame, render_markdown(grid), render_latex(grid)), stem)
