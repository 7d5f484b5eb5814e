"""`random`: a seeded random subset of real LT images per class (the IOR reference)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..io import ImageSet
from ..seeding import generator
from .base import DistillContext, register_method
from .common import class_slices, fill_class


@dataclass(frozen=True)
class RandomConfig:
    ipc_policy: str = "inherent"  # inherent | duplicate | noise (long_tail_data.md section 6)


def random_subset(ctx: DistillContext, policy: str, method: str = "random") -> ImageSet:
    data = ctx.data
    g = generator("random", ctx.seed)
    images, labels = [], []
    for c, idx in enumerate(class_slices(data.train_labels, data.num_classes)):
        order = torch.randperm(len(idx), generator=g)
        chosen = fill_class(data.train_images[idx], order, ctx.ipc, policy, g)
        images.append(chosen)
        labels.append(torch.full((len(chosen),), c, dtype=torch.long))
    labels_t = torch.cat(labels)
    return ImageSet(
        images=torch.cat(images), labels=labels_t, num_classes=data.num_classes,
        meta=ctx.base_meta(method, ipc_policy=policy,
                           per_class_counts=torch.bincount(labels_t, minlength=data.num_classes).tolist()),
    )


@register_method("random", RandomConfig)
def random(ctx: DistillContext, cfg: RandomConfig) -> ImageSet:
    return random_subset(ctx, cfg.ipc_policy)
