"""The typed `two_stage:` config section (two_stage.md §8). Every nested section is a frozen
dataclass; unknown keys raise with a suggestion (ltdistill.config.from_dict)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..config import ConfigError, from_dict

DATA_SOURCES = ("original", "distilled")
#: "A_B": stage 1 (group classifier) trained on A, stage 2 (intra-group classifiers) on B
VARIANTS = tuple(f"{a}_{b}" for a in DATA_SOURCES for b in DATA_SOURCES)
SOLVERS = ("auto", "exhaustive", "spectral_localsearch", "recursive_bisection",
           "spectral_clustering")
BISECTION_SOLVERS = ("auto", "exhaustive", "spectral_localsearch")
ROUTINGS = ("hard", "soft")


def split_variant(variant: str) -> tuple[str, str]:
    """'original_distilled' -> ('original', 'distilled'); unknown names raise."""
    if variant not in VARIANTS:
        raise ConfigError(f"unknown two-stage variant '{variant}'. Known: {', '.join(VARIANTS)}")
    a, b = variant.split("_")
    return a, b


@dataclass(frozen=True)
class FeatureExtractorConfig:
    """The grouping features come from the reference ConvNet trained on the full LT split
    (`reference:` section), the only `train_data` supported. The stability check's distilled
    extractor is a fresh ConvNet trained on a distilled set with Protocol A for
    `distilled_epochs` at `lr`."""

    train_data: str = "lt_full"
    distilled_epochs: int = 1000
    lr: float = 0.01
    batch_size: int = 256

    def __post_init__(self) -> None:
        if self.train_data != "lt_full":
            raise ValueError("feature_extractor.train_data must be 'lt_full' (the reference model); "
                             f"got '{self.train_data}'")
        _positive(self, "distilled_epochs", "lr", "batch_size")


@dataclass(frozen=True)
class KMeansConfig:
    clusters_per_class: int = 5  # M (the paper's Figure 1); M_i = n_i when n_i < M
    init: str = "k-means++"  # k-means++ | random
    restarts: int = 10
    max_iter: int = 300
    l2_normalise: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        _positive(self, "clusters_per_class", "restarts", "max_iter")
        if self.init not in ("k-means++", "random"):
            raise ValueError(f"kmeans.init must be 'k-means++' or 'random', got '{self.init}'")


@dataclass(frozen=True)
class PartitionConfig:
    """solver: auto = exhaustive for C <= exhaustive_max_classes, spectral_localsearch above, and
    recursive_bisection when n_groups > 2 or max_group_size / depth is set.
    bisection_solver: the two-way solver recursive_bisection applies at every node."""

    solver: str = "auto"
    n_groups: int = 2
    min_group_size: int = 1
    max_group_size: int | None = None
    depth: int | None = None
    restarts: int = 10  # random starts of the local search (R)
    seed: int = 0
    exhaustive_max_classes: int = 20
    bisection_solver: str = "auto"

    def __post_init__(self) -> None:
        if self.solver not in SOLVERS:
            raise ValueError(f"partition.solver '{self.solver}' unknown; known: {', '.join(SOLVERS)}")
        if self.bisection_solver not in BISECTION_SOLVERS:
            raise ValueError(f"partition.bisection_solver '{self.bisection_solver}' unknown; "
                             f"known: {', '.join(BISECTION_SOLVERS)}")
        if self.n_groups < 2:
            raise ValueError(f"partition.n_groups must be >= 2, got {self.n_groups}")
        if self.min_group_size < 1:
            raise ValueError(f"partition.min_group_size must be >= 1, got {self.min_group_size}")
        if self.max_group_size is not None and self.max_group_size < 1:
            raise ValueError("partition.max_group_size must be >= 1 or null")
        if self.depth is not None and self.depth < 1:
            raise ValueError("partition.depth must be >= 1 or null")
        if self.restarts < 0:
            raise ValueError("partition.restarts must be >= 0")


@dataclass(frozen=True)
class ClassifierConfig:
    """One stage's classifiers. Epochs depend on the data source: `epochs_original` on the full
    LT data (the real-data recipe), `epochs_distilled` on a distilled set (Protocol A). SGD with
    `momentum` / `weight_decay`, lr x `decay_factor` after epoch E//2 + 1, per-sample DSA when
    `augment`. use_soft_labels: train on a distilled set's soft logits (restricted to the
    classes of the node, aggregated by log-sum-exp for a group node) when it has them.
    use_learned_lr: use a distilled set's learned lr instead of `lr`. seed: the group
    classifier's seed (it is shared across evaluation seeds); intra-group classifiers are seeded
    from the evaluation seed."""

    arch: str = "convnet"
    lr: float = 0.01
    epochs_original: int = 200
    epochs_distilled: int = 1000
    batch_size: int = 256
    soft_label_batch_size: int = 128
    momentum: float = 0.9
    weight_decay: float = 5e-4
    decay_factor: float = 0.1
    augment: bool = True
    use_soft_labels: bool = True
    use_learned_lr: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        _positive(self, "lr", "epochs_original", "epochs_distilled", "batch_size",
                  "soft_label_batch_size")

    def epochs(self, source: str) -> int:
        if source not in DATA_SOURCES:
            raise ValueError(f"unknown data source '{source}'")
        return self.epochs_original if source == "original" else self.epochs_distilled


@dataclass(frozen=True)
class StabilityConfig:
    """The grouping recomputed from extractors trained on the balanced split (IF 1 reference),
    the LT split (the reference) and one distilled set. method/ipc/distill_seed null = the first
    non-`full` two-stage method, the first grid IPC of the dataset, the first distill seed."""

    enabled: bool = True
    method: str | None = None
    ipc: int | None = None
    distill_seed: int | None = None
    datasets: tuple[str, ...] | None = None  # null = every grid dataset (needs its IF-1 reference)


@dataclass(frozen=True)
class FiguresConfig:
    tsne: bool = True  # Figure 1: t-SNE of test features (balanced / LT / distilled extractors)
    bars: bool = True  # one-stage vs two-stage class-wise bars
    table: bool = True  # results/tables/two_stage.{md,tex,csv}
    max_points: int = 1000  # test images in the t-SNE
    seed: int = 0
    datasets: tuple[str, ...] | None = None  # t-SNE and bars only for these (null = all)


@dataclass(frozen=True)
class TwoStageConfig:
    enabled: bool = True
    methods: tuple[str, ...] | None = None  # null = every method of `methods:`
    variants: tuple[str, ...] = ("original_distilled",)
    seeds: tuple[int, ...] | None = None  # null = evaluation.seeds
    routing: str = "hard"
    feature_extractor: FeatureExtractorConfig = field(default_factory=FeatureExtractorConfig)
    kmeans: KMeansConfig = field(default_factory=KMeansConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    group_classifier: ClassifierConfig = field(
        default_factory=lambda: ClassifierConfig(use_soft_labels=False))
    intra_classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    stability: StabilityConfig = field(default_factory=StabilityConfig)
    figures: FiguresConfig = field(default_factory=FiguresConfig)

    def __post_init__(self) -> None:
        if self.routing not in ROUTINGS:
            raise ValueError(f"routing must be one of {ROUTINGS}, got '{self.routing}'")
        if not self.variants:
            raise ValueError("variants must list at least one of " + ", ".join(VARIANTS))
        for v in self.variants:
            split_variant(v)


_NESTED = {"feature_extractor": FeatureExtractorConfig, "kmeans": KMeansConfig,
           "partition": PartitionConfig, "group_classifier": ClassifierConfig,
           "intra_classifier": ClassifierConfig, "stability": StabilityConfig,
           "figures": FiguresConfig}


def two_stage_config(section: dict[str, Any] | None) -> TwoStageConfig:
    """Build the typed config from the YAML `two_stage:` dict (missing keys take defaults; the
    group classifier defaults to hard group labels)."""
    data = dict(section or {})
    for key in ("methods", "variants", "seeds"):
        if isinstance(data.get(key), list):
            data[key] = tuple(data[key])
    kwargs: dict[str, Any] = {}
    for key, cls in _NESTED.items():
        if key in data:
            sub = dict(data.pop(key) or {})
            if key == "group_classifier":
                sub.setdefault("use_soft_labels", False)
            if isinstance(sub.get("datasets"), list):
                sub["datasets"] = tuple(sub["datasets"])
            kwargs[key] = from_dict(cls, sub, where=f"two_stage.{key}")
    return from_dict(TwoStageConfig, {**data, **kwargs}, where="two_stage")


def as_dict(cfg: TwoStageConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def classifier_from_dict(data: dict[str, Any]) -> ClassifierConfig:
    return from_dict(ClassifierConfig, data, where="two_stage classifier")


def _positive(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not value > 0:
            raise ValueError(f"{name} must be positive, got {value}")
