"""Deterministic report figures (class-wise bars, accuracy vs IF, image grids, t-SNE, cost), saved as PNG and PDF."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.transforms import blended_transform_factory

from ..atomic import atomic_path
from .aggregate import classwise, mean_std
from .tables import (
    REFERENCE_METHODS,
    dataset_label,
    method_label,
    order_methods,
    select_setting,
)

# No pyplot: figures are built on the Agg canvas directly, so importing this module changes no
# global backend state and nothing ever opens a window.
DPI = 150
GROUP_SHADES = {"many": "#e6e6e6", "medium": "#f3f3f3", "few": "#fbf3e6"}
_PNG_META = {"Software": None}
_PDF_META = {"Creator": None, "Producer": None, "CreationDate": None}


def _figure(width: float, height: float, nrows: int = 1, ncols: int = 1,
            style: str = "whitegrid", **kw: Any) -> tuple[Figure, Any]:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    with sns.axes_style(style):
        axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def save_figure(fig: Figure, out: str | Path) -> list[Path]:
    """Write `out` as .png (dpi 150) and .pdf atomically, without timestamps; returns both paths.

    `out` may be given with or without a .png/.pdf suffix."""
    out = Path(out)
    stem = out.with_suffix("") if out.suffix.lower() in (".png", ".pdf") else out
    paths = []
    for ext, kw in ((".png", {"format": "png", "dpi": DPI, "metadata": _PNG_META}),
                    (".pdf", {"format": "pdf", "metadata": _PDF_META})):
        path = stem.with_name(stem.name + ext)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, **kw)
        paths.append(path)
    return paths


def _palette(n: int) -> list:
    return sns.color_palette("tab10" if n <= 10 else "husl", n)


# --------------------------------------------------------------------------- class-wise bars

def classwise_bars(df_classwise: pd.DataFrame, out: str | Path,
                   order: Sequence[str] | None = None, **filters: Any) -> list[Path]:
    """Grouped bars of per-class accuracy (%): methods side by side per class, mean ± std (ddof 0)
    over evaluations, class names on x, shot groups shaded and labelled.

    `df_classwise` is `aggregate.classwise(...)` output (a `collect` frame is converted);
    `filters` (dataset=, imbalance_factor=, ipc=, model=, recipe=) must select one setting."""
    long = df_classwise if "class_index" in df_classwise.columns else classwise(df_classwise)
    filters.setdefault("recipe", "protocol_a")
    sub = select_setting(long, "classwise_bars", **filters)
    methods = order_methods(sub["method"].unique(), order)
    classes = (sub[["class_index", "class_name", "group"]].drop_duplicates("class_index")
               .sort_values("class_index").reset_index(drop=True))
    n_cls, n_m = len(classes), len(methods)
    stats = (sub.assign(acc=sub["acc"] * 100.0).groupby(["method", "class_index"])["acc"]
             .agg(mean="mean", std=lambda a: float(np.std(a, ddof=0))))
    width = min(30.0, max(6.0, 0.25 * n_cls * max(1.0, n_m / 1.5)))
    fig, axes = _figure(width, 4.0)
    ax = axes[0, 0]
    # shaded shot groups (contiguous runs in class order)
    trans = blended_transform_factory(ax.transData, ax.transAxes)
    groups = classes["group"].fillna("").tolist()
    start = 0
    for c in range(1, n_cls + 1):
        if c == n_cls or groups[c] != groups[start]:
            g = groups[start]
            if g:
                ax.axvspan(start - 0.5, c - 0.5, color=GROUP_SHADES.get(g, "#eeeeee"), zorder=0,
                           lw=0)
                ax.text((start + c - 1) / 2, 0.98, g, transform=trans, ha="center", va="top",
                        fontsize=8, style="italic", color="#444444")
            start = c
    bar_w = 0.8 / max(n_m, 1)
    x = np.arange(n_cls)
    for k, (m, color) in enumerate(zip(methods, _palette(n_m), strict=True)):
        means = [stats["mean"].get((m, c), np.nan) for c in classes["class_index"]]
        stds = [stats["std"].get((m, c), np.nan) for c in classes["class_index"]]
        ax.bar(x - 0.4 + bar_w * (k + 0.5), means, bar_w, yerr=stds, color=color,
               label=method_label(m), capsize=1.5 if n_cls <= 20 else 0,
               error_kw={"lw": 0.6}, zorder=2)
    step = max(1, int(np.ceil(n_cls / 50)))
    ax.set_xticks(x[::step])
    ax.set_xticklabels(classes["class_name"].astype(str).tolist()[::step],
                       rotation=45 if n_cls > 5 else 0, ha="right" if n_cls > 5 else "center",
                       fontsize=8 if n_cls <= 20 else 6)
    ax.set_xlim(-0.6, n_cls - 0.4)
    ax.set_ylim(0, 105)
    ax.set_ylabel("accuracy (%)")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside right upper", fontsize=8)
    distilled = sub[~sub["method"].isin(REFERENCE_METHODS)]
    d, f, p = (distilled if len(distilled) else sub)[["dataset", "imbalance_factor", "ipc"]].iloc[0]
    ax.set_title(f"{dataset_label(d, f)}, IF {f}, IPC {p}: class-wise accuracy", fontsize=10)
    return save_figure(fig, out)


# --------------------------------------------------------------------------- accuracy vs IF

def accuracy_vs_if(df: pd.DataFrame, out: str | Path, metric: str = "top1",
                   recipe: str | None = "protocol_a", model: str | None = None,
                   order: Sequence[str] | None = None) -> list[Path]:
    """Lines per method of `metric` (%) against the imbalance factor (log x), mean ± std (ddof 0)
    over evaluations as error bars; one panel per (dataset, IPC). Works with a single IF."""
    sub = df[df["status"] == "ok"]
    if recipe is not None:
        sub = sub[sub["recipe"] == recipe]
    sub = sub[sub["model"] == model] if model is not None else sub[
        sub["model"].astype(str).str.startswith("convnet")]
    sub = sub[sub[metric].notna()]
    if sub.empty:
        raise ValueError("accuracy_vs_if: no successful records to plot")
    distilled = sub[~sub["method"].isin(REFERENCE_METHODS)]
    panels = (distilled if len(distilled) else sub)[["dataset", "ipc"]].dropna().drop_duplicates()
    panels = [tuple(r) for r in panels.sort_values(["dataset", "ipc"]).itertuples(index=False)]
    if not panels:
        raise ValueError("accuracy_vs_if: no (dataset, IPC) to plot")
    methods = order_methods(sub["method"].unique(), order)
    colors = dict(zip(methods, _palette(len(methods)), strict=True))
    ncols = min(3, len(panels))
    nrows = int(np.ceil(len(panels) / ncols))
    fig, axes = _figure(4.2 * ncols, 3.3 * nrows, nrows, ncols)
    for idx, (d, p) in enumerate(panels):
        ax = axes[idx // ncols, idx % ncols]
        here = sub[(sub["dataset"] == d)
                   & ((sub["ipc"] == p).fillna(False).astype(bool)
                      | sub["method"].isin(REFERENCE_METHODS))]
        ifs = sorted(int(v) for v in here["imbalance_factor"].dropna().unique())
        for m in methods:
            rows = here[here["method"] == m]
            if rows.empty:
                continue
            xs, ys, es = [], [], []
            for f in ifs:
                mu, sd, n = mean_std(rows.loc[rows["imbalance_factor"] == f, metric]
                                     .to_numpy(dtype=float) * 100.0)
                if n:
                    xs.append(f)
                    ys.append(mu)
                    es.append(sd)
            ref = m in REFERENCE_METHODS
            ax.errorbar(xs, ys, yerr=es, marker="o", ms=4, capsize=3, lw=1.4,
                        ls="--" if ref else "-", color="black" if ref else colors[m],
                        label=method_label(m))
        ax.set_xscale("log")
        ax.set_xticks(ifs)
        ax.set_xticklabels([str(f) for f in ifs])
        ax.minorticks_off()
        if len(ifs) == 1:
            ax.set_xlim(ifs[0] / 1.6, ifs[0] * 1.6)
        elif ifs:
            ax.set_xlim(ifs[0] / 1.3, ifs[-1] * 1.3)
        ax.set_xlabel("imbalance factor")
        ax.set_ylabel(f"{metric} (%)" if metric != "top1" else "top-1 accuracy (%)")
        ax.set_title(f"{dataset_label(d, 2)}, IPC {int(p)}", fontsize=10)
    for idx in range(len(panels), nrows * ncols):
        axes[idx // ncols, idx % ncols].set_visible(False)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    for ax in axes.flat[1:len(panels)]:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="outside right upper", fontsize=8)
    return save_figure(fig, out)


# --------------------------------------------------------------------------- image grid

def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def image_grid(images01: Any, labels: Any, class_names: Sequence[str], out: str | Path,
               max_per_class: int = 10, note: str | None = None) -> list[Path]:
    """One row per class with up to `max_per_class` of its images (in the given order).

    `images01`: N × C × H × W in [0, 1] (torch tensor or array; values are clipped), C = 1 or 3;
    `labels`: N class indices. Classes without images leave an empty row."""
    imgs = _to_numpy(images01).astype(np.float32)
    labs = _to_numpy(labels).astype(np.int64).reshape(-1)
    if imgs.ndim != 4 or imgs.shape[0] != labs.shape[0]:
        raise ValueError("image_grid needs N x C x H x W images and N labels")
    n_cls = len(class_names)
    _, c, h, w = imgs.shape
    imgs = np.clip(imgs, 0.0, 1.0).transpose(0, 2, 3, 1)
    if c == 1:
        imgs = np.repeat(imgs, 3, axis=3)
    elif c != 3:
        raise ValueError(f"image_grid supports 1 or 3 channels, got {c}")
    pad = max(1, h // 16)
    cols = max(1, max_per_class)
    canvas = np.ones((n_cls * (h + pad) + pad, cols * (w + pad) + pad, 3), dtype=np.float32)
    for k in range(n_cls):
        idx = np.flatnonzero(labs == k)[:cols]
        for j, i in enumerate(idx):
            y0, x0 = pad + k * (h + pad), pad + j * (w + pad)
            canvas[y0:y0 + h, x0:x0 + w] = imgs[i]
    cell = min(0.5, 38.0 / max(cols, n_cls))          # inches per image, at most 40" overall
    width = cols * cell + 1.6                          # room for the class names
    height = max(1.2, n_cls * cell * h / w + 0.3)
    fig, axes = _figure(width, height, style="white")
    ax = axes[0, 0]
    ax.imshow(canvas, interpolation="nearest", aspect="equal")
    ax.set_xticks([])
    ax.set_yticks([pad + k * (h + pad) + h / 2 for k in range(n_cls)])
    ax.set_yticklabels([str(n) for n in class_names], fontsize=8 if n_cls <= 20 else 5)
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    ax.tick_params(length=0)
    if note:  # e.g. the reason of a failure record, which has no images to show
        ax.set_title(note, fontsize=8, color="firebrick", wrap=True)
    return save_figure(fig, out)


# --------------------------------------------------------------------------- t-SNE

def tsne_embed(features: np.ndarray, centroids: np.ndarray | None, seed: int) -> np.ndarray:
    """2-D t-SNE of the features and (flattened) centroids together; perplexity min(50, n − 1),
    PCA initialisation, fixed random_state."""
    from sklearn.manifold import TSNE

    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError("features must be n × D")
    if centroids is not None:
        cen = np.asarray(centroids, dtype=np.float64)
        x = np.concatenate([x, cen.reshape(-1, cen.shape[-1])], axis=0)
    n = x.shape[0]
    if n < 3:
        raise ValueError("t-SNE needs at least 3 points")
    tsne = TSNE(n_components=2, perplexity=float(min(50, n - 1)), init="pca",
                random_state=int(seed), learning_rate="auto", n_jobs=1)
    return tsne.fit_transform(x)


def tsne_plot(features: np.ndarray, labels: Any, centroids: np.ndarray | None,
              class_names: Sequence[str], out: str | Path, seed: int = 0) -> list[Path]:
    """t-SNE scatter of features coloured by class; centroids (C × M × D, e.g. per-class k-means
    centres) are embedded jointly with the points and drawn as black-edged stars."""
    labs = _to_numpy(labels).astype(np.int64).reshape(-1)
    feats = _to_numpy(features)
    if feats.shape[0] != labs.shape[0]:
        raise ValueError("features and labels differ in length")
    emb = tsne_embed(feats, None if centroids is None else _to_numpy(centroids), seed)
    pts, cen = emb[: len(labs)], emb[len(labs):]
    n_cls = len(class_names)
    colors = _palette(n_cls)
    fig, axes = _figure(6.5 if n_cls <= 20 else 5.5, 5.0, style="white")
    ax = axes[0, 0]
    for k in range(n_cls):
        sel = labs == k
        if sel.any():
            ax.scatter(pts[sel, 0], pts[sel, 1], s=10, color=colors[k], alpha=0.75, lw=0,
                       label=str(class_names[k]))
    if centroids is not None and len(cen):
        m = int(np.asarray(_to_numpy(centroids)).shape[1])
        for k in range(n_cls):
            part = cen[k * m:(k + 1) * m]
            ax.scatter(part[:, 0], part[:, 1], s=110, marker="*", color=colors[k],
                       edgecolors="black", linewidths=0.9, zorder=3,
                       label="centroids" if k == 0 else None)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title("t-SNE of features" + (" and class centroids" if centroids is not None else ""),
                 fontsize=10)
    if n_cls <= 20:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    return save_figure(fig, out)


# --------------------------------------------------------------------------- cost

def cost_bars(cost_df: pd.DataFrame, out: str | Path) -> list[Path]:
    """Horizontal bars of wall time (s) and peak RSS (MB) per stage (or per job when the frame has
    a `job` column), from `tables.cost_table(...).frame`."""
    if cost_df.empty:
        raise ValueError("cost_bars: empty cost table")
    if "job" in cost_df.columns:
        names = [f"{s}/{j}" if j else str(s) for s, j in zip(cost_df["stage"], cost_df["job"],
                                                              strict=True)]
    else:
        names = cost_df["stage"].astype(str).tolist()
    y = np.arange(len(names))
    fig, axes = _figure(9.0, max(2.0, 0.35 * len(names) + 1.2), 1, 2, sharey=True)
    color = _palette(2)
    for ax, col, label, c in ((axes[0, 0], "wall_time_s", "wall time (s)", color[0]),
                              (axes[0, 1], "peak_rss_mb", "peak RSS (MB)", color[1])):
        ax.barh(y, cost_df[col].to_numpy(dtype=float), color=c)
        ax.set_xlabel(label)
    axes[0, 0].set_yticks(y)
    axes[0, 0].set_yticklabels(names, fontsize=8)
    axes[0, 0].invert_yaxis()
    return save_figure(fig, out)
