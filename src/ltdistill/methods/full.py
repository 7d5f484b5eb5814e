"""`full`: the whole long-tailed training split (the "Original" reference row of the papers)."""

from __future__ import annotations

from dataclasses import dataclass

from ..io import ImageSet
from .base import DistillContext, register_method


@dataclass(frozen=True)
class FullConfig:
    """No hyperparameters: the image set is the LT training split itself."""


@register_method("full", FullConfig, ipc_free=True)
def full(ctx: DistillContext, cfg: FullConfig) -> ImageSet:
    data = ctx.data
    return ImageSet(
        images=data.train_images.clone(), labels=data.train_labels.clone(),
        num_classes=data.num_classes,
        meta=ctx.base_meta("full", ipc_policy="all", per_class_counts=list(data.counts)),
    )
