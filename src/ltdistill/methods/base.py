"""The method interface: a registry of (function, typed config) pairs and the context a method
receives. A method sees tensors and paths, never Snakemake or config files."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import Checkpointer
from ..config import from_dict
from ..data.prepared import PreparedData
from ..io import ImageSet
from ..models import ModelSpec
from ..registry import Registry

log = logging.getLogger("ltdistill.methods")


@dataclass
class DistillContext:
    """Everything a method may use. Artifacts (experts, observers, feature models) arrive as paths."""

    data: PreparedData
    ipc: int
    seed: int
    device: torch.device
    model: ModelSpec  # the distillation network (architecture, width, depth, norm)
    artifacts: dict[str, Any] = field(default_factory=dict)
    checkpoint_path: Path | None = None  # where long loops checkpoint (None = never)
    checkpoint_every_s: float = 600.0

    def __post_init__(self) -> None:
        if self.ipc < 0:
            raise ValueError(f"ipc must be a positive integer, got {self.ipc}")

    def checkpointer(self, method: str, settings: Any) -> Checkpointer:
        """The Checkpointer of this job's main loop; its fingerprint ties a checkpoint to the
        method, its settings, IPC, seed and the data split, so a stale one is never resumed."""
        fingerprint = {"method": method, "settings": settings, "ipc": self.ipc, "seed": self.seed,
                       "split": self.data.split.to_json(), "model": self.model}
        return Checkpointer(self.checkpoint_path, self.checkpoint_every_s, fingerprint)

    def base_meta(self, method: str, **extra: Any) -> dict[str, Any]:
        return {
            "method": method,
            "dataset": self.data.name,
            "imbalance_factor": self.data.split.imbalance_factor,
            "selection": self.data.split.selection,
            "ipc": self.ipc,
            "seed": self.seed,
            "preprocessing": self.data.preprocessing.describe(),
            "lt_counts": self.data.counts,
            **extra,
        }


class MethodCannotRun(RuntimeError):
    """The method cannot run on this grid point (the papers' "–" cells: e.g. too few real images
    of a class for the requested initialisation, or an expert pool without a usable snapshot).
    The workflow records the reason instead of an image set; divergence raises FloatingPointError."""


#: what the distill stage turns into a failure record (everything else is a bug and fails the job)
METHOD_FAILURES = (FloatingPointError, MethodCannotRun)


@dataclass(frozen=True)
class MethodEntry:
    name: str
    fn: Callable[[DistillContext, Any], ImageSet]
    config_cls: type
    needs: tuple[str, ...] = ()  # artifact kinds the method reads (e.g. "feature_model")
    soft_labels: bool = False  # produces soft-label logits (then HLR needs a hard-label run)
    ipc_free: bool = False  # the image set does not depend on IPC (stored once, as ipc0)


METHODS: Registry[MethodEntry] = Registry("method")


def register_method(name: str, config_cls: type, needs: tuple[str, ...] = (),
                    soft_labels: bool = False, ipc_free: bool = False):
    """Decorator: register `fn(ctx, cfg) -> ImageSet` under `name` with its config dataclass."""

    def decorator(fn):
        METHODS.add(name, MethodEntry(name, fn, config_cls, tuple(needs), soft_labels, ipc_free))
        return fn

    return decorator


def get_method(name: str) -> MethodEntry:
    from . import _load_all  # noqa: F401  (imports every method module)

    return METHODS.get(name)


def run_method(name: str, ctx: DistillContext, params: dict[str, Any] | None) -> ImageSet:
    entry = get_method(name)
    cfg = from_dict(entry.config_cls, params, where=f"methods.{name}")
    if ctx.ipc == 0 and not entry.ipc_free:
        raise ValueError(f"method '{name}' needs a positive IPC, got 0")
    missing = [k for k in entry.needs if k not in ctx.artifacts]
    if missing:
        raise ValueError(f"method '{name}' needs artifacts {missing}; the workflow provides them")
    image_set = entry.fn(ctx, cfg)
    image_set.validate()
    if not torch.isfinite(image_set.images).all():
        raise FloatingPointError(f"method '{name}' produced non-finite pixels")
    if image_set.soft_labels is not None and not torch.isfinite(image_set.soft_labels).all():
        raise FloatingPointError(f"method '{name}' produced non-finite soft labels")
    return image_set
