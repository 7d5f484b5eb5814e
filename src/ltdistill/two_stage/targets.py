"""Target paths of the two-stage plugin (pure functions of the config dict; no snakemake).

Which records exist:
- every non-IPC-free method of `two_stage.methods` (default: all of `methods:`) gets every
  configured variant except `original_original`, for every grid point, distill seed, seed;
- `original_original` does not depend on the method: it is written once per (dataset, IF)
  under method `full` (ipc0) and the first distill seed, when it is among the variants;
- IPC-free methods such as `full` get no other variant (their "distilled" set is the
  original data)."""

from __future__ import annotations

from ..workflow_support import dataset_if_pairs, grid_points, stored_ipc
from .config import TwoStageConfig, two_stage_config

#: the method whose image set is the full LT split: original_original records live under it
ORIGINAL_METHOD = "full"
EVAL = "results/evaluation/{dataset}/if{imb}/ipc{ipc}/{method}/s{dseed}/{model}/{recipe}/seed{eseed}.json"


def settings(config: dict) -> TwoStageConfig | None:
    """The parsed `two_stage:` section, or None when the plugin is off (section absent or
    empty, or `enabled: false`)."""
    section = config.get("two_stage")
    if not section:
        return None
    cfg = two_stage_config(section)
    return cfg if cfg.enabled else None


def two_stage_methods(config: dict, cfg: TwoStageConfig) -> list[str]:
    methods = list(cfg.methods) if cfg.methods is not None else list(config["methods"])
    unknown = [m for m in methods if m not in config["method_params"]]
    if unknown:
        raise ValueError(f"two_stage.methods names {unknown}, which have no method_params entry")
    return methods


def ipc_free(config: dict, slug: str) -> bool:
    """The method's image set does not depend on IPC (e.g. `full`)."""
    return stored_ipc(config, slug, 1) == 0


def two_stage_seeds(config: dict, cfg: TwoStageConfig | None) -> list[int]:
    """The evaluation seeds of the two-stage evaluations: the section's own, else the config's."""
    seeds = cfg.seeds if cfg is not None and cfg.seeds is not None else None
    return [int(s) for s in (seeds if seeds is not None else config["evaluation"]["seeds"])]


def _path(dataset: str, imb: int, ipc: int, method: str, dseed: int, model: str, recipe: str,
          eseed: int) -> str:
    return EVAL.format(dataset=dataset, imb=imb, ipc=ipc, method=method, dseed=dseed,
                       model=model, recipe=recipe, eseed=eseed)


def two_stage_targets(config: dict) -> list[str]:
    """Every two-stage metrics JSON the config asks for (empty when the plugin is off)."""
    cfg = settings(config)
    if cfg is None:
        return []
    model = cfg.intra_classifier.arch
    seeds = two_stage_seeds(config, cfg)
    methods = two_stage_methods(config, cfg)
    dseeds = [int(s) for s in config["distill_seeds"]]
    out: set[str] = set()
    for point in grid_points(config):
        d, f = point.dataset, point.imbalance_factor
        if "original_original" in cfg.variants:
            for e in seeds:
                out.add(_path(d, f, stored_ipc(config, ORIGINAL_METHOD, point.ipc),
                              ORIGINAL_METHOD, dseeds[0], model, "two_stage_original_original", e))
        for m in methods:
            if ipc_free(config, m):
                continue
            for v in cfg.variants:
                if v == "original_original":
                    continue
                for s in dseeds:
                    for e in seeds:
                        out.add(_path(d, f, stored_ipc(config, m, point.ipc), m, s, model,
                                      f"two_stage_{v}", e))
    return sorted(out)


def one_stage_targets(config: dict, dataset: str, imb: int, ipc: int | None = None,
                      methods: list[str] | None = None) -> list[str]:
    """The one-stage (protocol_a) records the two-stage outputs are compared with: `full` and
    the two-stage methods (or `methods`), at one IPC (or every grid IPC of the dataset)."""
    cfg = settings(config)
    if cfg is None:
        return []
    model = cfg.intra_classifier.arch
    ipcs = sorted({p.ipc for p in grid_points(config)
                   if p.dataset == dataset and p.imbalance_factor == int(imb)})
    if ipc is not None:
        ipcs = [int(ipc)]
    chosen = methods if methods is not None else two_stage_methods(config, cfg)
    out = set()
    for m in sorted(set(chosen) | {ORIGINAL_METHOD}):
        for p in ipcs:
            for s in config["distill_seeds"]:
                for e in config["evaluation"]["seeds"]:
                    out.add(_path(dataset, int(imb), stored_ipc(config, m, p), m, int(s), model,
                                  "protocol_a", int(e)))
    return sorted(out)


def stability_view(config: dict, dataset: str, imb: int) -> tuple[int, str, int]:
    """(ipc, method, distill seed) of the distilled extractor of the stability check."""
    cfg = settings(config)
    if cfg is None:
        raise ValueError("the two-stage plugin is off")
    st = cfg.stability
    method = st.method or next((m for m in two_stage_methods(config, cfg)
                                if not ipc_free(config, m)), None)
    if method is None:
        raise ValueError("two_stage.stability needs a distilled method (set stability.method)")
    ipc = st.ipc if st.ipc is not None else min(
        p.ipc for p in grid_points(config) if p.dataset == dataset
        and p.imbalance_factor == int(imb))
    dseed = st.distill_seed if st.distill_seed is not None else int(config["distill_seeds"][0])
    return stored_ipc(config, method, int(ipc)), method, int(dseed)


def two_stage_report_targets(config: dict) -> list[str]:
    """Groupings, stability checks, Figure 1 t-SNEs, one- vs two-stage bars and the table."""
    cfg = settings(config)
    if cfg is None:
        return []
    def chosen(datasets: tuple[str, ...] | None, dataset: str) -> bool:
        return datasets is None or dataset in datasets

    out = []
    for d, f in dataset_if_pairs(config):
        out.append(f"results/two_stage/{d}/if{f}/grouping.json")
        if cfg.stability.enabled and chosen(cfg.stability.datasets, d):
            out.append(f"results/two_stage/{d}/if{f}/stability.json")
        if cfg.figures.tsne and chosen(cfg.figures.datasets, d):
            ipc, method, _ = stability_view(config, d, f)
            out.append(f"results/figures/two_stage/tsne_{d}_if{f}_ipc{ipc}_{method}.png")
    if cfg.figures.bars:
        methods = [m for m in two_stage_methods(config, cfg) if not ipc_free(config, m)]
        for p in grid_points(config):
            if not chosen(cfg.figures.datasets, p.dataset):
                continue
            for m in methods:
                out.append(f"results/figures/two_stage/classwise_{p.dataset}_"
                           f"if{p.imbalance_factor}_ipc{p.ipc}_{m}.png")
    if cfg.figures.table:
        out += [f"results/tables/two_stage.{ext}" for ext in ("md", "tex", "csv")]
    return sorted(set(out))
