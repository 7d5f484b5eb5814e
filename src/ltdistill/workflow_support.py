"""Config logic the Snakemake rules call (checks beyond the schema, recipes, targets), kept in the
package so it is unit-tested; it never imports snakemake."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

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
    for i, cross in enumerate(config["evaluation"].get("cross_arch", [])):
        models |= set(cross["models"])
        for slug in cross.get("methods") or []:
            if slug not in config["method_params"]:
                raise ConfigError(f"evaluation.cross_arch[{i}].methods names unknown method "
                                  f"'{slug}'; known: {', '.join(config['method_params'])}")
    for model in sorted(models):
        MODELS.get(model)
    pb = config["evaluation"].get("protocol_b") or {}
    for key in ("methods", "skip_protocol_a"):
        for slug in pb.get(key, []):
            if slug not in config["method_params"]:
                raise ConfigError(f"evaluation.protocol_b.{key} names unknown method '{slug}'")
    unknown = set(pb) - set(PROTOCOL_B_RECIPE_KEYS) - {"methods", "skip_protocol_a", "teacher",
                                                        "method_overrides"}
    if unknown:
        raise ConfigError(f"evaluation.protocol_b has unknown keys {sorted(unknown)}; known: "
                          f"{', '.join(PROTOCOL_B_RECIPE_KEYS)}, methods, skip_protocol_a, "
                          "teacher, method_overrides")
    for name, opts in config["datasets"].items():
        for slug in opts.get("zca_methods", []):
            if slug not in config["method_params"]:
                raise ConfigError(f"datasets.{name}.zca_methods names unknown method '{slug}'")


def preprocessing_kind(config: dict, dataset: str, slug: str) -> str:
    opts = config["datasets"][dataset]
    if slug in opts.get("zca_methods", []):
        return "zca"
    return opts.get("preprocessing", "normalise")


PROTOCOL_B_DEFAULTS: dict[str, Any] = {
    "protocol": "b", "epochs": 1000, "batch_size": 50, "lr": 0.1, "momentum": 0.875,
    "weight_decay": 5e-4,
}
#: keys of `evaluation.protocol_b` that are TrainRecipe fields (the rest select methods/teacher)
PROTOCOL_B_RECIPE_KEYS = (
    "epochs", "batch_size", "lr", "momentum", "weight_decay", "kd_ce_weight", "kd_mse_weight",
    "ema_decay", "randaugment", "rrc_scale", "cutmix", "cutmix_alpha", "quantise", "label_source",
    "channels_last",
)
RECIPES = ("protocol_a", "hard", "protocol_b")


def eval_recipe(config: dict, dataset: str, slug: str, recipe: str) -> dict[str, Any]:
    """The TrainRecipe fields for evaluating `slug` on `dataset` under `recipe`.

    protocol_a: the method's own recipe (soft labels when present, learned lr when present),
        then `evaluation.method_overrides[slug]`.
    hard: the same with soft labels dropped (hard-label recovery, HLR).
    protocol_b: the KD recipe of evaluation_protocol.md §3 (PROTOCOL_B_DEFAULTS), overlaid with
        the recipe keys of `evaluation.protocol_b`, then `evaluation.protocol_b.method_overrides`."""
    if recipe not in RECIPES:
        raise ConfigError(f"unknown evaluation recipe '{recipe}'. Known recipes: {', '.join(RECIPES)}")
    ev = config["evaluation"]
    if recipe == "protocol_b":
        pb = ev.get("protocol_b") or {}
        fields = dict(PROTOCOL_B_DEFAULTS)
        fields.update({k: pb[k] for k in PROTOCOL_B_RECIPE_KEYS if k in pb})
        fields.update((pb.get("method_overrides") or {}).get(slug, {}))
        if isinstance(fields.get("rrc_scale"), list):
            fields["rrc_scale"] = tuple(fields["rrc_scale"])
        return fields
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
    return recipe_fields


def reference_recipe(config: dict, imbalance_factor: int) -> dict[str, Any]:
    """The TrainRecipe fields of the reference ConvNet at one imbalance factor:
    `reference` without its seed, with `reference.epochs_by_if[imbalance_factor]` (when given)
    replacing `epochs`. The two-stage t-SNE's balanced (IF 1) reference trains on ~4x the
    images of the IF 100 split; the default config gives it fewer epochs, so both references see
    about the same number of samples."""
    ref = config["reference"]
    fields = {k: v for k, v in ref.items() if k not in ("seed", "epochs_by_if")}
    by_if = {int(k): int(v) for k, v in (ref.get("epochs_by_if") or {}).items()}
    if int(imbalance_factor) in by_if:
        fields["epochs"] = by_if[int(imbalance_factor)]
    return fields


def method_recipes(config: dict, slug: str) -> list[str]:
    """The evaluation recipes a method gets: protocol_a (unless listed in
    `evaluation.protocol_b.skip_protocol_a`), hard for soft-label methods (always: HLR needs the
    hard-label accuracy of every image set, whatever its own recipe), protocol_b for the methods
    listed in `evaluation.protocol_b.methods`."""
    pb = config["evaluation"].get("protocol_b") or {}
    recipes = []
    if slug not in pb.get("skip_protocol_a", []):
        recipes.append("protocol_a")
    if method_soft_labels(config, slug):
        recipes.append("hard")
    if slug in pb.get("methods", []):
        recipes.append("protocol_b")
    return recipes


def stored_ipc(config: dict, slug: str, ipc: int) -> int:
    """IPC in paths: 0 for methods whose image set does not depend on IPC (stored once)."""
    return 0 if _entry(config, slug).ipc_free else ipc


def evaluation_targets(config: dict) -> list[str]:
    """Every metrics JSON the configured grid asks for."""
    ev = config["evaluation"]
    targets: set[str] = set()

    def add(point: GridPoint, slug: str, models: list[str]) -> None:
        recipes = method_recipes(config, slug)
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
        chosen = cross.get("methods")  # null = all; names outside `methods:` are not run
        for slug in config["methods"]:
            if chosen is None or slug in chosen:
                add(point, slug, cross["models"])
    return sorted(targets)


@dataclass(frozen=True, order=True)
class ImageSetKey:
    """One distilled image set; its fields are the wildcard names of the rules that use it."""

    dataset: str
    imb: int
    ipc: int
    method: str
    dseed: int

    @property
    def stem(self) -> str:
        return f"{self.dataset}/if{self.imb}/ipc{self.ipc}/{self.method}/s{self.dseed}"

    @property
    def path(self) -> str:
        return f"results/distilled/{self.stem}/image_set.pt"

    @property
    def figure(self) -> str:
        return f"results/figures/images/{self.stem}.png"


def image_sets(config: dict) -> list[ImageSetKey]:
    """Every image set the grid distills, sorted (stored IPC: see stored_ipc)."""
    return sorted({ImageSetKey(point.dataset, point.imbalance_factor,
                               stored_ipc(config, slug, point.ipc), slug, int(dseed))
                   for point in grid_points(config) for slug in config["methods"]
                   for dseed in config["distill_seeds"]})


def dataset_if_pairs(config: dict) -> list[tuple[str, int]]:
    return sorted({(p.dataset, p.imbalance_factor) for p in grid_points(config)})


#: modules whose edit must not rerun a job: logging, provenance and file writing never change a
#: number; the method table of contents only lists modules; dataset loaders only shape the
#: dataset cache, which is itself an input file of every job (so its content hash covers them)
NON_NUMERIC_MODULES = frozenset({"progress", "provenance", "atomic", "jobs", "methods._load_all",
                                 "data.loaders"})


def code_closure(package_dir: str, module: str) -> list[str]:
    """The package's source files that `module` (dotted, relative to the package, e.g.
    "methods.mtt") imports, transitively, through relative imports - the code whose edit must
    rerun a job. Files in NON_NUMERIC_MODULES are left out."""
    import ast
    from pathlib import Path

    root = Path(package_dir)

    def path_of(dotted: str) -> Path | None:
        base = root.joinpath(*dotted.split("."))
        for cand in (base.with_suffix(".py"), base / "__init__.py"):
            if cand.is_file():
                return cand
        return None

    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen or any(name == m or name.startswith(m + ".") for m in NON_NUMERIC_MODULES):
            continue
        path = path_of(name)
        if path is None:
            continue
        seen[name] = path
        pkg = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                parent = pkg[: len(pkg) - (node.level - 1)] if node.level > 1 else pkg
                target = ".".join(parent + ([node.module] if node.module else []))
                todo.append(target)
                for alias in node.names:  # `from . import x` / `from .pkg import submodule`
                    todo.append(f"{target}.{alias.name}" if target else alias.name)
    return sorted(str(p.relative_to(root.parent.parent)) for p in seen.values())
