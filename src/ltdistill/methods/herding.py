"""`herding`: greedy selection whose running feature mean tracks the class mean (Welling, ICML 2009),
on penultimate features of the ConvNet trained on the full LT split."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..io import ImageSet
from ..models.io import load_model
from .base import DistillContext, register_method
from .common import class_slices, embed_images, fill_class


@dataclass(frozen=True)
class HerdingConfig:
    ipc_policy: str = "inherent"


def herding_order(features: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of k distinct rows chosen greedily so that the mean of the chosen rows stays closest
    to the mean of all rows (features: n x d)."""
    mu = features.mean(dim=0)
    chosen: list[int] = []
    total = torch.zeros_like(mu)
    available = torch.ones(len(features), dtype=torch.bool)
    for t in range(min(k, len(features))):
        # candidate running mean after adding row i: (total + f_i) / (t + 1)
        dist = ((total + features) / (t + 1) - mu).pow(2).sum(dim=1)
        dist[~available] = float("inf")
        i = int(torch.argmin(dist))
        chosen.append(i)
        available[i] = False
        total += features[i]
    return torch.tensor(chosen, dtype=torch.long)


def select_by_features(ctx: DistillContext, policy: str, method: str, order_fn) -> ImageSet:
    data = ctx.data
    model, _, _ = load_model(ctx.artifacts["feature_model"], device=str(ctx.device))
    feats = embed_images(model, data.train_images, ctx.device)
    images, labels = [], []
    for c, idx in enumerate(class_slices(data.train_labels, data.num_classes)):
        ranked = order_fn(feats[idx].double(), min(ctx.ipc, len(idx)))
        chosen = fill_class(data.train_images[idx], ranked, ctx.ipc, policy)
        images.append(chosen)
        labels.append(torch.full((len(chosen),), c, dtype=torch.long))
    labels_t = torch.cat(labels)
    return ImageSet(
        images=torch.cat(images), labels=labels_t, num_classes=data.num_classes,
        meta=ctx.base_meta(method, ipc_policy=policy,
                           per_class_counts=torch.bincount(labels_t, minlength=data.num_classes).tolist()),
    )


@register_method("herding", HerdingConfig, needs=("feature_model",))
def herding(ctx: DistillContext, cfg: HerdingConfig) -> ImageSet:
    return select_by_features(ctx, cfg.ipc_policy, "herding", herding_order)
