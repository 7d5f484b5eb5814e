"""Config logic the Snakemake rules call (checks beyond the schema, recipes, targets), kept in the
package so it is unit-tested; it never imports snakemake."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

from .config import ConfigError, from_dict


@dataclass(frozen=True)
class GridPoint:
    dataset: str
    imbalance_factor: int
    ipc: int


def grid_points(config: dict) -> Iterator[GridPoint]:
    for entry in config["grid"]:
        for imb in entry["imbalance_factors"]:
            for ipc in entry["ipcs"]:
                yield GridPoint(entry["dataset"], int(imb), int(ipc))


def method_slug_registered(config: dict, slug: str) -> str:
    """The registered method behind a slug (a variant names it with `method:`)."""
    params = config["method_params"].get(slug)
    if params is None:
        from .methods import METHODS, get_method

        get_method("full")  # loads every method module
        if slug not in METHODS:
            variants = sorted(set(config["method_params"]) - set(METHODS.names()))
            raise ConfigError(f"unknown method '{slug}'. Known methods: {', '.join(METHODS.names())}"
                              + (f"; configured variants: {', '.join(variants)}" if variants else ""))
        raise ConfigError(f"method '{slug}' has no method_params entry; add `method_params: {slug}: {{}}`")
    return params.get("method", slug)


def _entry(config: dict, slug: str):
    from .methods import get_method

    return get_method(method_slug_registered(config, slug))


def method_needs(config: dict, slug: str) -> tuple[str, ...]:
    return _entry(config, slug).needs


def method_soft_labels(config: dict, slug: str) -> bool:
    return _entry(config, slug).soft_labels


def check_config(config: dict) -> None:
    """Fail before any job runs: unknown datasets, methods, models or method parameters."""
    from .data import loaders  # noqa: F401  (registers every dataset)
    from .data.base import DATASETS
    from .methods import get_method
    from .models import MODELS, alexnet, convnet, resnet, vgg  # noqa: F401  (registers models)

    for entry in config["grid"]:
        name = entry["dataset"]
        DATASETS.get(name)  # raises with the known names
        if name not in config["datasets"]:
            raise ConfigError(f"grid uses dataset '{name}' but `datasets:` has no '{name}' entry")
    for slug in config["methods"]:
        entry = get_method(method_slug_registered(config, slug))
        params = {k: v for k, v in config["method_params"][slug].items() if k != "method"}
        from_dict(entry.config_cls, params, where=f"method_params.{slug}")
    models = set(config["evaluation"]["models"]) | {config["network"]["arch"]}
    for cross in config["evaluation"].get("cross_arch", []):
        models |= set(cross["models"])
    for model in sorted(models):
        MODELS.get(model)
    for name, opts in config["datasets"].items():
        for slug in opts.get("zca_methods", []):
            if slug not in config["method_params"]:
                raise ConfigError(f"datasets.{name}.zca_methods names unknown method '{slug}'")


def preprocessing_kind(config: dict, dataset: str, slug: str) -> str:
    opts = config["datasets"][dataset]
    if slug in opts.get("zca_methods", []):
        return "zca"
    return opts.get("preprocessing", "normalise")


def eval_recipe(config: dict, dataset: str, slug: str, recipe: str) -> dict[str, Any]:
    """The TrainRecipe fields for evaluating `slug` on `dataset` under `recipe`.

    protocol_a: the method's own recipe (soft labels when present, learned lr when present).
    hard: the same with soft labels dropped (hard-label recovery, HLR)."""
    ev = config["evaluation"]
    soft = method_soft_labels(config, slug)
    recipe_fields = {
        "epochs": ev["epochs"],
        "batch_size": ev["soft_label_batch_size"] if (soft and recipe == "protocol_a") else ev["batch_size"],
        "default_lr": ev["default_lr"],
        "momentum": ev.get("momentum", 0.9),
        "weight_decay": ev.get("weight_decay", 5e-4),
        "dsa_strategy": config["datasets"][dataset]["dsa_strategy"],
        "use_soft_labels": recipe != "hard",
    }
    recipe_fields.update(ev.get("method_overrides", {}).get(slug, {}))
    if recipe not in ("protocol_a", "hard"):
        raise ConfigError(f"unknown evaluation recipe '{recipe}'. Known recipes: protocol_a, hard")
    return recipe_fields


def stored_ipc(config: dict, slug: str, ipc: int) -> int:
    """IPC in paths: 0 for methods whose image set does not depend on IPC (stored once)."""
    return 0 if _entry(config, slug).ipc_free else ipc


def evaluation_targets(config: dict) -> list[str]:
    """Every metrics JSON the configured grid asks for."""
    ev = config["evaluation"]
    targets: set[str] = set()

    def add(point: GridPoint, slug: str, models: list[str]) -> None:
        recipes = ["protocol_a"] + (["hard"] if method_soft_labels(config, slug) else [])
        ipc = stored_ipc(config, slug, point.ipc)
        for dseed in config["distill_seeds"]:
            for model in models:
                for recipe in recipes:
                    for eseed in ev["seeds"]:
                        targets.add(
                            f"results/evaluation/{point.dataset}/if{point.imbalance_factor}/ipc{ipc}/"
                            f"{slug}/s{dseed}/{model}/{recipe}/seed{eseed}.json")

    for point in grid_points(config):
        for slug in config["methods"]:
            add(point, slug, ev["models"])
    for cross in ev.get("cross_arch", []):
        point = GridPoint(cross["dataset"], int(cross["imbalance_factor"]), int(cross["ipc"]))
        for slug in config["methods"]:
            add(point, slug, cross["models"])
    return sorted(targets)


def image_set_targets(config: dict) -> list[str]:
    out = set()
    for point in grid_points(config):
        for slug in config["methods"]:
            for dseed in config["distill_seeds"]:
                out.add(f"results/distilled/{point.dataset}/if{point.imbalance_factor}/"
                        f"ipc{stored_ipc(config, slug, point.ipc)}/{slug}/s{dseed}/image_set.pt")
    return sorted(out)


def dataset_if_pairs(config: dict) -> list[tuple[str, int]]:
    return sorted({(p.dataset, p.imbalance_factor) for p in grid_points(config)})
