"""`k_center`: greedy farthest-first coreset (Sener & Savarese, ICLR 2018) per class on penultimate
features, seeded by the image nearest to the class mean."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..io import ImageSet
from .base import DistillContext, register_method
from .herding import select_by_features


@dataclass(frozen=True)
class KCenterConfig:
    ipc_policy: str = "inherent"


def k_center_order(features: torch.Tensor, k: int) -> torch.Tensor:
    """k distinct row indices: start at the row nearest the mean, then repeatedly add the row whose
    distance to its nearest chosen row is largest (ties: lowest index)."""
    n = len(features)
    k = min(k, n)
    first = int(torch.argmin((features - features.mean(dim=0)).pow(2).sum(dim=1)))
    chosen = [first]
    nearest = (features - features[first]).pow(2).sum(dim=1)
    for _ in range(k - 1):
        nearest[chosen] = -1.0
        i = int(torch.argmax(nearest))
        chosen.append(i)
        nearest = torch.minimum(nearest, (features - features[i]).pow(2).sum(dim=1))
    return torch.tensor(chosen, dtype=torch.long)


@register_method("k_center", KCenterConfig, needs=("feature_model",))
def k_center(ctx: DistillContext, cfg: KCenterConfig) -> ImageSet:
    return select_by_features(ctx, cfg.ipc_policy, "k_center", k_center_order)
