"""Publication tables (main, class-wise, shot-group, cross-architecture, HLR/IOR/LRS, cost) as DataFrame, Markdown and LaTeX."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from ..atomic import write_text
from .aggregate import SHOT_GROUPS, classwise, mean_std
from .published import load_published, published_top1

DEFAULT_ORDER = ["full", "random", "herding", "k_center", "dc", "dsa", "dm", "mtt", "datm",
                 "damed", "sre2l", "rded", "rldd"]
#: Rows that are references, not distilled sets: never bold, and shown in every IPC column.
REFERENCE_METHODS = ("full",)

METHOD_LABELS = {
    "full": "Full LT data", "random": "Random", "herding": "Herding", "k_center": "K-Center",
    "graph_cut": "Graph-Cut", "dc": "DC", "dsa": "DSA", "dm": "DM", "mtt": "MTT",
    "dream": "DREAM", "idm": "IDM", "minimax": "Minimax", "datm": "DATM", "rded": "RDED",
    "edc": "EDC", "damed": "DAMED", "rldd": "RLDD", "sre2l": "SRe2L", "tesla": "TESLA",
    "g_vbsm": "G-VBSM", "cafe": "CAFE", "ftd": "FTD", "two_stage": "Two-stage",
}
DATASET_LABELS = {
    "cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "tiny_imagenet": "Tiny-ImageNet",
    "fashion_mnist": "Fashion-MNIST", "imagenet_lt_exp": "ImageNet-LT (exp)",
    "imagenet_lt_oltr": "ImageNet-LT (OLTR)",
}
MODEL_LABELS = {"convnet3": "ConvNet-3", "convnet4": "ConvNet-4", "convnet5": "ConvNet-5",
                "vgg11": "VGG-11", "resnet18": "ResNet-18", "resnet50": "ResNet-50",
                "alexnet": "AlexNet"}
DASH = "–"
UNCERTAIN = "†"
SETTING = ["dataset", "imbalance_factor", "ipc"]


class Table(NamedTuple):
    """A rendered table: the frame written as CSV plus its Markdown and LaTeX renderings."""

    frame: pd.DataFrame
    markdown: str
    latex: str


# --------------------------------------------------------------------------- labels, ordering

def method_label(slug: str) -> str:
    """'damed' -> 'DAMED'; 'rldd[w/o x]' -> 'RLDD [w/o x]'."""
    base, _, rest = str(slug).partition("[")
    label = METHOD_LABELS.get(base, base)
    return f"{label} [{rest}" if rest else label


def dataset_label(dataset: str, imbalance_factor: int | None = None) -> str:
    label = DATASET_LABELS.get(dataset, dataset)
    lt = imbalance_factor is not None and not pd.isna(imbalance_factor) and int(imbalance_factor) > 1
    if lt and not dataset.startswith("imagenet_lt"):
        label += "-LT"
    return label


def order_methods(methods: Iterable[str], order: Sequence[str] | None = None) -> list[str]:
    """Methods in `order` first (in that order), then the rest alphabetically."""
    order = list(DEFAULT_ORDER if order is None else order)
    methods = list(dict.fromkeys(methods))
    first = [m for m in order if m in methods]
    return first + sorted(m for m in methods if m not in first)


def _default_model(dataset: str) -> str:
    return "convnet4" if dataset in ("tiny_imagenet", "imagenet_lt_exp") else "convnet3"


# --------------------------------------------------------------------------- grid + renderers

@dataclass
class _Grid:
    """Display cells plus markup (bold, footnote markers), independent of the output format."""

    row_ids: list[str]
    row_labels: list[str]
    col_ids: list
    col_levels: list[list[str]]          # one list of labels per header level
    cells: list[list[str]]
    row_header: str = "Method"
    bold: set = field(default_factory=set)
    markers: dict = field(default_factory=dict)      # (i, j) -> [marker, ...]
    footnotes: list = field(default_factory=list)    # [(marker, text)]
    col_names: list | None = None                    # names of the column index levels

    def mark(self, i: int, j: int, marker: str) -> None:
        lst = self.markers.setdefault((i, j), [])
        if marker not in lst:
            lst.append(marker)

    def frame(self) -> pd.DataFrame:
        if self.col_ids and isinstance(self.col_ids[0], tuple):
            columns = pd.MultiIndex.from_tuples(self.col_ids, names=self.col_names)
        else:
            columns = pd.Index(self.col_ids, name=(self.col_names or [None])[0])
        return pd.DataFrame(self.cells, index=pd.Index(self.row_ids, name=self.row_header.lower()),
                            columns=columns, dtype=object)


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|")


_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                "^": r"\textasciicircum{}"}


def _tex_escape(text: str) -> str:
    out = "".join(_TEX_ESCAPES.get(ch, ch) for ch in str(text))
    return (out.replace("±", r"$\pm$").replace(DASH, "--").replace(UNCERTAIN, r"$^\dagger$")
            .replace("→", r"$\rightarrow$").replace("−", "$-$"))


def _md_marker(marker: str) -> str:
    if not marker:
        return ""
    return marker if marker == UNCERTAIN else f"[{marker}]"


def _tex_marker(marker: str) -> str:
    if not marker:
        return ""
    return r"$^\dagger$" if marker == UNCERTAIN else rf"\textsuperscript{{{marker}}}"


def render_markdown(grid: _Grid) -> str:
    header = [grid.row_header] + [
        " ".join(lv[j] for lv in grid.col_levels if lv[j]) for j in range(len(grid.col_ids))]
    lines = ["| " + " | ".join(_md_escape(h) for h in header) + " |",
             "|" + "---|" + "---:|" * len(grid.col_ids)]
    for i, label in enumerate(grid.row_labels):
        cells = []
        for j, text in enumerate(grid.cells[i]):
            text = _md_escape(text)
            if (i, j) in grid.bold and text:
                text = f"**{text}**"
            text += "".join(_md_marker(m) for m in grid.markers.get((i, j), []))
            cells.append(text)
        lines.append("| " + " | ".join([_md_escape(label)] + cells) + " |")
    if grid.footnotes:
        lines.append("")
        lines.extend(f"{_md_marker(m)} {_md_escape(t)}  ".lstrip() for m, t in grid.footnotes)
        lines[-1] = lines[-1].rstrip()
    return "\n".join(lines) + "\n"


def _spans(levels: list[list[str]], k: int) -> list[tuple[int, int, str]]:
    """Runs of equal header labels at level k (and equal parents), as (start, stop, label)."""
    spans: list[tuple[int, int, str]] = []
    n = len(levels[k])
    start = 0
    for j in range(1, n + 1):
        if j == n or any(levels[q][j] != levels[q][start] for q in range(k + 1)):
            spans.append((start, j, levels[k][start]))
            start = j
    return spans


def render_latex(grid: _Grid, caption: str | None = None) -> str:
    ncols = len(grid.col_ids)
    lines = ["% generated by ltdistill.reporting.tables; needs \\usepackage{booktabs}",
             "\\begin{tabular}{l" + "c" * ncols + "}", "\\toprule"]
    nlev = len(grid.col_levels)
    for k in range(nlev):
        first = _tex_escape(grid.row_header) if k == nlev - 1 else ""
        parts, rules = [first], []
        for start, stop, label in _spans(grid.col_levels, k):
            width = stop - start
            text = _tex_escape(label)
            parts.append(text if width == 1 else f"\\multicolumn{{{width}}}{{c}}{{{text}}}")
            if k < nlev - 1 and label:
                rules.append(f"\\cmidrule(lr){{{start + 2}-{stop + 1}}}")
        lines.append(" & ".join(parts) + " \\\\")
        if rules:
            lines.append(" ".join(rules))
    lines.append("\\midrule")
    for i, label in enumerate(grid.row_labels):
        cells = []
        for j, text in enumerate(grid.cells[i]):
            text = _tex_escape(text)
            if (i, j) in grid.bold and text:
                text = f"\\textbf{{{text}}}"
            text += "".join(_tex_marker(m) for m in grid.markers.get((i, j), []))
            cells.append(text)
        lines.append(" & ".join([_tex_escape(label)] + cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    if grid.footnotes:
        lines.append("\\par\\smallskip")
        notes = [f"{_tex_marker(m)} {_tex_escape(t)}".lstrip() for m, t in grid.footnotes]
        lines.append("{\\footnotesize " + "\\par\n".join(notes) + "\\par}")
    if caption:
        lines.insert(1, f"% {caption}")
    return "\n".join(lines) + "\n"


def _table(grid: _Grid) -> Table:
    return Table(grid.frame(), render_markdown(grid), render_latex(grid))


def _fmt(v: float, decimals: int = 1) -> str:
    if v is None or not np.isfinite(v):
        return DASH
    text = f"{v:.{decimals}f}"
    return "0." + "0" * decimals if text == "-0." + "0" * decimals else text


def _pm(m: float, s: float, decimals: int = 1) -> str:
    if not np.isfinite(m):
        return DASH
    if not np.isfinite(s):
        return _fmt(m, decimals)
    return f"{_fmt(m, decimals)} ± {_fmt(s, decimals)}"


def frame_grid(frame: pd.DataFrame, decimals: int = 4) -> _Grid:
    """A plain grid from any DataFrame (floats with `decimals` significant digits, NaN as '–')."""
    def fmt(v: object) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
            return DASH
        if isinstance(v, (float, np.floating)):
            return f"{v:.{decimals}g}"
        return str(v)

    named_index = not isinstance(frame.index, pd.RangeIndex)
    cols = list(frame.columns)
    if isinstance(frame.columns, pd.MultiIndex):
        levels = [[str(c[k]) for c in cols] for k in range(frame.columns.nlevels)]
    else:
        levels = [[str(c) for c in cols]]
    if named_index:
        row_ids = [str(i) for i in frame.index]
        header = str(frame.index.name or "")
        body_cols = cols
    else:
        # the first column becomes the row label
        row_ids = [fmt(v) for v in frame.iloc[:, 0]] if cols else []
        header = str(cols[0]) if cols else ""
        body_cols = cols[1:]
        levels = [lv[1:] for lv in levels]
    cells = [[fmt(frame.iloc[i][c]) for c in body_cols] for i in range(len(frame))]
    return _Grid(row_ids=row_ids, row_labels=row_ids, col_ids=list(body_cols), col_levels=levels,
                 cells=cells, row_header=header)


def write_table(table: Table | tuple | pd.DataFrame, stem: str | Path) -> list[Path]:
    """Write stem.md, stem.tex and stem.csv atomically; returns the three paths.

    `table` is a `Table` (its own Markdown/LaTeX are used) or a bare DataFrame (rendered
    generically)."""
    if isinstance(table, pd.DataFrame):
        grid = frame_grid(table)
        frame, md, tex = table, render_markdown(grid), render_latex(grid)
    else:
        frame, md, tex = table
    stem = Path(stem)
    if stem.suffix in (".md", ".tex", ".csv"):
        stem = stem.with_suffix("")
    paths = [stem.with_name(stem.name + ext) for ext in (".md", ".tex", ".csv")]
    write_text(paths[0], md)
    write_text(paths[1], tex)
    write_text(paths[2], frame.to_csv())
    return paths


# --------------------------------------------------------------------------- cell statistics

def _select(df: pd.DataFrame, recipe: str | None, model: str | None) -> pd.DataFrame:
    sub = df
    if recipe is not None:
        sub = sub[sub["recipe"] == recipe]
    if model is not None:
        sub = sub[sub["model"] == model]
    return sub


def _settings(sub: pd.DataFrame) -> list[tuple]:
    keys = sub[SETTING].dropna().drop_duplicates()
    keys = keys.sort_values(SETTING, kind="mergesort")
    return [tuple(int(v) if k != "dataset" else v for k, v in zip(SETTING, row, strict=True))
            for row in keys.itertuples(index=False)]


def _rows_for(sub: pd.DataFrame, method: str, setting: Mapping[str, object]) -> pd.DataFrame:
    mask = sub["method"] == method
    for k, v in setting.items():
        if k == "ipc" and method in REFERENCE_METHODS:
            continue  # the full-data reference has no IPC: shown in every IPC column
        mask &= sub[k] == v
    return sub[mask.fillna(False).astype(bool)]


class _Footnotes:
    """Numbered failure footnotes, one per distinct reason, listing the affected cells."""

    def __init__(self) -> None:
        self.reasons: dict[str, list[str]] = {}

    def add(self, reason: str, where: str) -> str:
        cells = self.reasons.setdefault(reason, [])
        if where not in cells:
            cells.append(where)
        return str(list(self.reasons).index(reason) + 1)

    def items(self) -> list[tuple[str, str]]:
        return [(str(k + 1), f"failed: {reason} ({'; '.join(cells)})")
                for k, (reason, cells) in enumerate(self.reasons.items())]


def _fill_cell(grid: _Grid, i: int, j: int, rows: pd.DataFrame, metric: str, where: str,
               notes: _Footnotes, scale: float = 100.0, decimals: int = 1) -> float:
    """Write the 'mean ± std' text of one cell; return its mean (NaN if none)."""
    ok = rows[rows["status"] == "ok"]
    bad = rows[rows["status"] != "ok"]
    m, s, n = mean_std(ok[metric].to_numpy(dtype=float) * scale)
    if n:
        grid.cells[i][j] = _pm(m, s, decimals)
    elif len(ok):
        grid.cells[i][j] = "n/a"   # e.g. an empty shot group (NaN, never 0)
    else:
        grid.cells[i][j] = DASH
    for reason in bad["reason"].fillna("no reason recorded").astype(str).unique():
        k_bad = int((bad["reason"].fillna("no reason recorded").astype(str) == reason).sum())
        text = reason if not len(ok) else f"{reason} [{k_bad} of {len(rows)} evaluations]"
        grid.mark(i, j, notes.add(text, where))
    return m if n else math.nan


def _bold_best(grid: _Grid, means: dict, rows: Sequence[int], cols: Iterable[int],
               higher: bool = True, decimals: int = 1) -> None:
    for j in cols:
        vals = {i: round(means[(i, j)], decimals) for i in rows
                if (i, j) in means and np.isfinite(means[(i, j)])}
        if not vals:
            continue
        best = max(vals.values()) if higher else min(vals.values())
        for i, v in vals.items():
            if v == best:
                grid.bold.add((i, j))


def _setting_levels(settings: Sequence[tuple]) -> list[list[str]]:
    return [[dataset_label(d, f) for d, f, _ in settings],
            [f"IF{f}" for _, f, _ in settings],
            [f"IPC{p}" for _, _, p in settings]]


def _where(method: str, *parts: str) -> str:
    return f"{method_label(method)}: " + " ".join(p for p in parts if p)


# --------------------------------------------------------------------------- main table

def main_table(df: pd.DataFrame, published: pd.DataFrame | bool | None = None,
               order: Sequence[str] | None = None, metric: str = "top1",
               recipe: str | None = "protocol_a", model: str | None = None) -> Table:
    """Methods × (dataset, IF, IPC) table of `metric` as "mean ± std" in percent.

    `df` is the output of `aggregate.collect`. Only `recipe` is shown (default protocol_a, the
    method's own recipe); `model=None` keeps the distillation ConvNets (model names starting with
    "convnet"), otherwise exactly `model`. `published` is a `load_published()` frame or True.

    Design:
    * one row per method, in a fixed order (`DEFAULT_ORDER`, then other methods alphabetically);
      columns are (dataset, IF, IPC) settings: a three-level header in LaTeX, one header cell
      such as "CIFAR-10-LT IF100 IPC10" in Markdown;
    * a cell is "mean ± std" (1 decimal) over every successful evaluation record of the cell
      (all evaluation models of all distillation seeds; std with ddof 0);
    * the best mean per column is bold (compared after rounding, so ties are all bold); reference
      rows (`full`, shown in every IPC column of its dataset and IF) never compete;
    * "–" marks a cell with no successful record. If records of the cell failed, the dash carries
      a numbered marker ([1] in Markdown, a superscript in LaTeX) whose footnote gives the failure
      reason and the affected cells. A cell where only some evaluations failed keeps its number
      and also gets a marker;
    * with `published`, a row "<Method> (published)" follows each of our methods that has a
      published number in any shown column (matched on dataset, IF, IPC, method and the model
      used in that column): "mean ± std" as printed, the mean alone when no std was published,
      "–" where the paper could not run the method, empty where nothing is published, and "†"
      for values flagged uncertain in published_results.md. Published rows are never bold.

    Returns `Table(frame, markdown, latex)`; `frame` holds the display strings (no markup), with
    row ids = method slugs (and "<slug> (published)") and (dataset, imbalance_factor, ipc)
    columns."""
    sub = _select(df, recipe, model)
    if model is None:
        sub = sub[sub["model"].astype(str).str.startswith("convnet")]
    settings = _settings(sub[~sub["method"].isin(REFERENCE_METHODS)]) or _settings(sub)
    methods = order_methods(sub["method"].unique(), order)
    pub = None
    if published is not None and published is not False:
        pub = published_top1(load_published() if published is True else published)

    row_ids: list[str] = []
    kinds: list[tuple[str, str]] = []
    for m in methods:
        row_ids.append(m)
        kinds.append(("ours", m))
        if pub is not None:
            pub_m = pub[pub["method"] == m]
            if any(len(_pub_rows(pub_m, s, sub)) for s in settings):
                row_ids.append(f"{m} (published)")
                kinds.append(("published", m))
    grid = _Grid(row_ids=row_ids,
                 row_labels=[method_label(m) + (" (published)" if k == "published" else "")
                             for k, m in kinds],
                 col_ids=list(settings), col_levels=_setting_levels(settings),
                 cells=[["" for _ in settings] for _ in row_ids], col_names=SETTING)
    notes = _Footnotes()
    means: dict = {}
    uncertain_used = False
    for i, (kind, m) in enumerate(kinds):
        for j, s in enumerate(settings):
            if kind == "ours":
                rows = _rows_for(sub, m, dict(zip(SETTING, s, strict=True)))
                where = _where(m, dataset_label(s[0], s[1]), f"IF{s[1]}", f"IPC{s[2]}")
                means[(i, j)] = _fill_cell(grid, i, j, rows, metric, where, notes)
            else:
                prow = _pub_rows(pub[pub["method"] == m], s, sub)
                if len(prow):
                    r = prow.iloc[0]
                    grid.cells[i][j] = _pm(r["mean"], r["std"])
                    if bool(r["uncertain"]):
                        grid.mark(i, j, UNCERTAIN)
                        uncertain_used = True
    competing = [i for i, (k, m) in enumerate(kinds) if k == "ours" and m not in REFERENCE_METHODS]
    _bold_best(grid, means, competing, range(len(settings)))
    grid.footnotes = notes.items()
    if pub is not None:
        grid.footnotes.append(("", "published: values as printed in the source papers "
                                   "(published_results.md); empty = no published number"))
        if uncertain_used:
            grid.footnotes.append((UNCERTAIN, "uncertain published value (conflicting or "
                                              "unverified origin; see published_results.md)"))
    return _table(grid)


def _pub_rows(pub_m: pd.DataFrame, setting: tuple, sub: pd.DataFrame) -> pd.DataFrame:
    d, f, p = setting
    used = sub[(sub["dataset"] == d) & (sub["imbalance_factor"] == f)]["model"].dropna()
    model = used.mode().iloc[0] if len(used) else _default_model(d)
    mask = (pub_m["dataset"] == d) & (pub_m["imbalance_factor"] == f) & (pub_m["model"] == model)
    if not pub_m["method"].isin(REFERENCE_METHODS).all():
        mask &= pub_m["ipc"] == p
    return pub_m[mask.fillna(False).astype(bool)]


# --------------------------------------------------------------------------- class-wise / shot

def require_one_setting(long: pd.DataFrame, what: str) -> tuple:
    """The single (dataset, IF, IPC, model, recipe) of `long`, or a ValueError listing those found."""
    keys = long[SETTING + ["model", "recipe"]].drop_duplicates()
    if len(keys) != 1:
        found = "; ".join(" ".join(map(str, r)) for r in keys.itertuples(index=False))
        raise ValueError(f"{what} needs exactly one (dataset, IF, IPC, model, recipe); "
                         f"found {len(keys)}: {found or 'none'}. Pass filters to select one.")
    return tuple(keys.iloc[0])


def select_setting(df: pd.DataFrame, what: str = "this view", **filters: object) -> pd.DataFrame:
    """Rows of one (dataset, IF, IPC, model, recipe) setting, plus the reference rows (`full`) of
    the same dataset, IF, model and recipe whatever their IPC. `filters` (dataset=...,
    imbalance_factor=..., ipc=..., model=..., recipe=...; None = any) must leave exactly one
    setting among the non-reference rows."""
    sub = df
    for k, v in filters.items():
        if v is None:
            continue
        mask = sub[k] == v
        if k == "ipc":
            mask = mask.fillna(False).astype(bool) | sub["method"].isin(REFERENCE_METHODS)
        sub = sub[mask.fillna(False).astype(bool)]
    ref = sub["method"].isin(REFERENCE_METHODS)
    d, f, p, mo, rc = require_one_setting(sub[~ref] if (~ref).any() else sub, what)
    keep = ((sub["dataset"] == d) & (sub["imbalance_factor"] == f) & (sub["model"] == mo)
            & (sub["recipe"] == rc)).fillna(False).astype(bool)
    keep &= ((sub["ipc"] == p).fillna(False).astype(bool) | ref)
    return sub[keep]


def classwise_table(df: pd.DataFrame, dataset: str | None = None,
                    imbalance_factor: int | None = None, ipc: int | None = None,
                    model: str | None = None, recipe: str | None = "protocol_a",
                    order: Sequence[str] | None = None) -> Table:
    """Per-class accuracy (%), methods side by side, for one setting.

    Rows: every class (with its shot group and LT training count), then many / medium / few
    (unweighted means over the group's classes; "n/a" for an empty group), "mean" (mean over
    classes) and "std across classes" (ddof 0, per evaluation, then averaged). Values are means over
    evaluations. Per row, the best method is bold (lowest for the std row). `df` is either the
    `collect` frame or its `classwise` long form."""
    long = df if "class_index" in df.columns else classwise(df)
    sub = select_setting(long, "classwise_table", dataset=dataset,
                         imbalance_factor=imbalance_factor, ipc=ipc, model=model, recipe=recipe)
    methods = order_methods(sub["method"].unique(), order)
    classes = (sub[["class_index", "class_name", "group", "lt_count"]]
               .drop_duplicates("class_index").sort_values("class_index"))
    # mean over evaluations of each class's accuracy, per method
    per_class = sub.groupby(["method", "class_index"])["acc"].mean().mul(100.0)
    run_keys = ["method", "distill_seed", "eval_seed"]
    class_std = (sub.groupby(run_keys)["acc"].agg(lambda a: float(np.std(a, ddof=0)))
                 .groupby("method").mean().mul(100.0))
    row_ids, labels, values = [], [], []
    for r in classes.itertuples(index=False):
        row_ids.append(str(r.class_name))
        labels.append(str(r.class_name))
        values.append([r.group or "", "" if pd.isna(r.lt_count) else str(int(r.lt_count))]
                      + [per_class.get((m, r.class_index), math.nan) for m in methods])
    group_of = dict(zip(classes["class_index"], classes["group"], strict=True))
    for g in SHOT_GROUPS:
        idx = [c for c, gg in group_of.items() if gg == g]
        vals = []
        for m in methods:
            accs = [per_class.get((m, c), math.nan) for c in idx]
            vals.append(float(np.nanmean(accs)) if idx and np.isfinite(accs).any() else math.nan)
        row_ids.append(g)
        labels.append(g)
        values.append(["", f"{len(idx)} classes"] + vals)
    row_ids += ["mean", "std across classes"]
    labels += ["mean", "std across classes"]
    values.append(["", ""] + [float(per_class.loc[m].mean()) if m in per_class.index.get_level_values(0)
                              else math.nan for m in methods])
    values.append(["", ""] + [class_std.get(m, math.nan) for m in methods])

    col_ids = ["group", "n_train"] + methods
    grid = _Grid(row_ids=row_ids, row_labels=labels, col_ids=col_ids,
                 col_levels=[["group", "n_train"] + [method_label(m) for m in methods]],
                 cells=[["" for _ in col_ids] for _ in row_ids], row_header="Class")
    means: dict = {}
    for i, vals in enumerate(values):
        for j, v in enumerate(vals):
            if j < 2:
                grid.cells[i][j] = v
                continue
            if row_ids[i] in SHOT_GROUPS and grid.cells[i][1] == "0 classes":
                grid.cells[i][j] = "n/a"
                continue
            grid.cells[i][j] = _fmt(v)
            means[(i, j)] = v
    method_cols = [j for j in range(2, len(col_ids)) if col_ids[j] not in REFERENCE_METHODS]
    n = len(row_ids)
    for i in range(n):
        vals = {j: round(means[(i, j)], 1) for j in method_cols
                if (i, j) in means and np.isfinite(means[(i, j)])}
        if len(vals) > 1:
            best = (min if row_ids[i] == "std across classes" else max)(vals.values())
            grid.bold.update((i, j) for j, v in vals.items() if v == best)
    if any(c == "n/a" for row in grid.cells for c in row):
        grid.footnotes.append(("", "n/a: empty shot group (reported as NaN, never 0)"))
    return _table(grid)


def shot_table(df: pd.DataFrame, order: Sequence[str] | None = None,
               recipe: str | None = "protocol_a", model: str | None = None) -> Table:
    """Methods × (setting, {all, many, medium, few, class std}) as "mean ± std" (%) over
    evaluations; best per column bold (lowest for class std); "n/a" for an empty group."""
    sub = _select(df, recipe, model)
    if model is None:
        sub = sub[sub["model"].astype(str).str.startswith("convnet")]
    settings = _settings(sub[~sub["method"].isin(REFERENCE_METHODS)]) or _settings(sub)
    metrics = [("top1", "all"), ("many", "many"), ("medium", "medium"), ("few", "few"),
               ("class_std", "class std")]
    col_ids = [(*s, name) for s in settings for _, name in metrics]
    levels = [lv for lv in _setting_levels([s for s in settings for _ in metrics])]
    levels.append([name for _ in settings for _, name in metrics])
    methods = order_methods(sub["method"].unique(), order)
    grid = _Grid(row_ids=methods, row_labels=[method_label(m) for m in methods], col_ids=col_ids,
                 col_levels=levels, cells=[["" for _ in col_ids] for _ in methods],
                 col_names=SETTING + ["metric"])
    notes = _Footnotes()
    means: dict = {}
    for i, m in enumerate(methods):
        for j, (d, f, p, name) in enumerate(col_ids):
            metric = dict((n, k) for k, n in metrics)[name]
            rows = _rows_for(sub, m, {"dataset": d, "imbalance_factor": f, "ipc": p})
            where = _where(m, dataset_label(d, f), f"IF{f}", f"IPC{p}")
            means[(i, j)] = _fill_cell(grid, i, j, rows, metric, where, notes)
    competing = [i for i, m in enumerate(methods) if m not in REFERENCE_METHODS]
    _bold_best(grid, means, competing, [j for j, c in enumerate(col_ids) if c[3] != "class std"])
    _bold_best(grid, means, competing, [j for j, c in enumerate(col_ids) if c[3] == "class std"],
               higher=False)
    grid.footnotes = notes.items()
    if any(c == "n/a" for row in grid.cells for c in row):
        grid.footnotes.append(("", "n/a: empty shot group (reported as NaN, never 0)"))
    return _table(grid)


# --------------------------------------------------------------------------- cross-architecture

def cross_arch_table(df: pd.DataFrame, order: Sequence[str] | None = None,
                     recipe: str | None = "protocol_a",
                     models: Sequence[str] | None = None) -> Table:
    """Methods × models top-1 "mean ± std" (%), per (dataset, IF, IPC) setting present; best per
    column bold. Columns are (setting, model); the setting levels collapse when there is one."""
    sub = _select(df, recipe, None)
    if models is not None:
        sub = sub[sub["model"].isin(models)]
    model_order = list(models) if models is not None else sorted(
        sub["model"].dropna().unique(), key=lambda m: (not str(m).startswith("convnet"), m))
    settings = _settings(sub[~sub["method"].isin(REFERENCE_METHODS)]) or _settings(sub)
    col_ids = [(*s, mo) for s in settings for mo in model_order
               if ((sub["dataset"] == s[0]) & (sub["imbalance_factor"] == s[1])
                   & (sub["model"] == mo)).any()]
    levels = _setting_levels([c[:3] for c in col_ids]) + [
        [MODEL_LABELS.get(c[3], c[3]) for c in col_ids]]
    methods = order_methods(sub["method"].unique(), order)
    grid = _Grid(row_ids=methods, row_labels=[method_label(m) for m in methods], col_ids=col_ids,
                 col_levels=levels, cells=[["" for _ in col_ids] for _ in methods],
                 col_names=SETTING + ["model"])
    notes = _Footnotes()
    means: dict = {}
    for i, m in enumerate(methods):
        for j, (d, f, p, mo) in enumerate(col_ids):
            rows = _rows_for(sub, m, {"dataset": d, "imbalance_factor": f, "ipc": p, "model": mo})
            where = _where(m, dataset_label(d, f), f"IF{f}", f"IPC{p}", MODEL_LABELS.get(mo, mo))
            means[(i, j)] = _fill_cell(grid, i, j, rows, "top1", where, notes)
    competing = [i for i, m in enumerate(methods) if m not in REFERENCE_METHODS]
    _bold_best(grid, means, competing, range(len(col_ids)))
    grid.footnotes = notes.items()
    return _table(grid)


# --------------------------------------------------------------------------- HLR / IOR / LRS

def lrs(hlr: float, ior: float, w: float = 0.5) -> float:
    """Label-robust score from fractions: α = w·IOR − (1−w)·HLR; (e^α − e^−1)/(e − e^−1)."""
    alpha = w * ior - (1.0 - w) * hlr
    return (math.exp(alpha) - math.exp(-1.0)) / (math.e - math.exp(-1.0))


def _mean_metric(df: pd.DataFrame, mask: pd.Series, metric: str) -> float:
    rows = df[mask.fillna(False).astype(bool) & (df["status"] == "ok")]
    return mean_std(rows[metric].to_numpy(dtype=float))[0]


def hlr_ior_table(df: pd.DataFrame, order: Sequence[str] | None = None,
                  own_recipe: str = "protocol_a", hard_recipe: str = "hard",
                  full_method: str = "full", random_method: str = "random",
                  w: float = 0.5, fallback_recipe: str = "protocol_b") -> Table:
    """DD-Ranking-style scores per (dataset, IF, IPC, model, method), all as fractions.

    HLR = acc(full, own recipe) − acc(method, hard); IOR = acc(method, own recipe) −
    acc(random, own recipe); α = w·IOR − (1−w)·HLR; LRS = (e^α − e^−1)/(e − e^−1); IOR per shot
    group from the group accuracies. A method with no `own_recipe` runs but `fallback_recipe`
    runs (evaluated with Protocol B only) is scored under the fallback, against random under the
    fallback. Accuracies are means over evaluations; a missing input gives NaN. The frame holds
    fractions; Markdown/LaTeX show accuracies, HLR and IOR in percent (percentage points) and LRS
    as a fraction."""
    ok = df
    rows: list[dict] = []
    keys = ok[SETTING + ["model"]].dropna().drop_duplicates().sort_values(SETTING + ["model"])
    for d, f, p, mo in keys.itertuples(index=False):
        base = (ok["dataset"] == d) & (ok["imbalance_factor"] == f) & (ok["model"] == mo)
        at_ipc = base & (ok["ipc"] == p)
        full_mask = base & (ok["method"] == full_method) & (ok["recipe"] == own_recipe)
        acc_full = _mean_metric(ok, full_mask, "top1")
        methods = [m for m in ok.loc[at_ipc.fillna(False).astype(bool), "method"].unique()
                   if m not in (full_method, random_method)]
        for m in order_methods(methods, order):
            of_m = at_ipc & (ok["method"] == m)
            recipe = own_recipe
            if not (of_m & (ok["recipe"] == own_recipe)).any() and \
                    (of_m & (ok["recipe"] == fallback_recipe)).any():
                recipe = fallback_recipe
            own = of_m & (ok["recipe"] == recipe)
            hard = of_m & (ok["recipe"] == hard_recipe)
            rnd = at_ipc & (ok["method"] == random_method) & (ok["recipe"] == recipe)
            acc_rnd = _mean_metric(ok, rnd, "top1")
            acc_syn = _mean_metric(ok, own, "top1")
            acc_hard = _mean_metric(ok, hard, "top1")
            hlr = acc_full - acc_hard
            ior = acc_syn - acc_rnd
            alpha = w * ior - (1 - w) * hlr
            row = dict(dataset=d, imbalance_factor=int(f), ipc=int(p), model=mo, method=m,
                       own_recipe=recipe, acc_full=acc_full, acc_hard=acc_hard, acc_own=acc_syn,
                       acc_random=acc_rnd, hlr=hlr, ior=ior)
            for g in SHOT_GROUPS:
                row[f"ior_{g}"] = _mean_metric(ok, own, g) - _mean_metric(ok, rnd, g)
            row["alpha"] = alpha
            row["lrs"] = lrs(hlr, ior, w) if np.isfinite(alpha) else math.nan
            rows.append(row)
    cols = (["dataset", "imbalance_factor", "ipc", "model", "method", "own_recipe", "acc_full",
             "acc_hard",
             "acc_own", "acc_random", "hlr", "ior"] + [f"ior_{g}" for g in SHOT_GROUPS]
            + ["alpha", "lrs"])
    frame = pd.DataFrame(rows, columns=cols)
    pct = ["acc_full", "acc_hard", "acc_own", "acc_random", "hlr", "ior"] + [
        f"ior_{g}" for g in SHOT_GROUPS]
    heads = ["Full", "Hard", "Own recipe", "Random", "HLR (pp) ↓", "IOR (pp) ↑", "IOR many",
             "IOR medium", "IOR few", "LRS ↑"]
    row_ids, labels, cells = [], [], []
    for r in frame.itertuples(index=False):
        row_ids.append(f"{r.method} {r.dataset} if{r.imbalance_factor} ipc{r.ipc} {r.model}")
        labels.append(method_label(r.method) + (" (B)" if r.own_recipe == fallback_recipe else ""))
        setting = (f"{dataset_label(r.dataset, r.imbalance_factor)} IF{r.imbalance_factor} "
                   f"IPC{r.ipc} {MODEL_LABELS.get(r.model, r.model)}")
        cells.append([setting] + [_fmt(getattr(r, c) * 100.0) for c in pct] + [_fmt(r.lrs, 3)])
    grid = _Grid(row_ids=row_ids, row_labels=labels, col_ids=["setting"] + heads,
                 col_levels=[["Setting"] + heads], cells=cells)
    grid.footnotes = [("", "HLR = Acc(full LT data, hard labels) − Acc(synthetic, hard labels); "
                           "IOR = Acc(synthetic, own recipe) − Acc(random subset, own recipe); "
                           f"LRS = (e^α − e^−1)/(e − e^−1), α = {w}·IOR − {1 - w}·HLR on fractions; "
                           "(B): own recipe is Protocol B, against random under Protocol B")]
    _, md, tex = _table(grid)
    return Table(frame, md, tex)


# --------------------------------------------------------------------------- cost

def read_benchmark(path: str | Path) -> dict:
    """One Snakemake benchmark TSV -> mean wall time (s), peak RSS (MB, max over repeats), CPU time."""
    tsv = pd.read_csv(path, sep="\t", na_values=["NA", "-", ""])
    if "s" not in tsv.columns:
        raise ValueError(f"{path}: not a Snakemake benchmark file (no 's' column)")
    num = lambda c: pd.to_numeric(tsv[c], errors="coerce") if c in tsv else pd.Series(dtype=float)  # noqa: E731
    return dict(wall_time_s=float(num("s").mean()), peak_rss_mb=float(num("max_rss").max()),
                cpu_time_s=float(num("cpu_time").mean()), repeats=int(len(tsv)))


def _split_key(key: str) -> tuple[str, str]:
    for sep in ("/", ":"):
        if sep in key:
            stage, job = key.split(sep, 1)
            return stage, job
    return key, ""


def cost_table(benchmark_tsvs: Mapping[str, str | Path]) -> Table:
    """Wall time and peak RSS per stage from Snakemake benchmark TSVs.

    Keys are "stage/job" (or "stage:job", or just "stage"); per stage: number of jobs, total and
    largest wall time (s), total CPU time (s) and peak RSS (MB, the max over jobs)."""
    jobs = []
    for key in sorted(benchmark_tsvs):
        stage, job = _split_key(key)
        jobs.append(dict(stage=stage, job=job, **read_benchmark(benchmark_tsvs[key])))
    per_job = pd.DataFrame(jobs, columns=["stage", "job", "wall_time_s", "peak_rss_mb",
                                          "cpu_time_s", "repeats"])
    frame = (per_job.groupby("stage", sort=True)
             .agg(n_jobs=("job", "size"), wall_time_s=("wall_time_s", "sum"),
                  max_job_wall_time_s=("wall_time_s", "max"), cpu_time_s=("cpu_time_s", "sum"),
                  peak_rss_mb=("peak_rss_mb", "max"))
             .reset_index())
    heads = ["jobs", "wall time (s)", "longest job (s)", "CPU time (s)", "peak RSS (MB)"]
    cells = [[str(r.n_jobs), _fmt(r.wall_time_s), _fmt(r.max_job_wall_time_s),
              _fmt(r.cpu_time_s), _fmt(r.peak_rss_mb)] for r in frame.itertuples(index=False)]
    grid = _Grid(row_ids=list(frame["stage"]), row_labels=list(frame["stage"]),
                 col_ids=heads, col_levels=[heads], cells=cells, row_header="Stage")
    _, md, tex = _table(grid)
    return Table(frame, md, tex)
