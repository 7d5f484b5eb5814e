"""`dsa`: Dataset Condensation with Differentiable Siamese Augmentation (Zhao & Bilen, ICML 2021).

DC (see dc.py) where the real and the synthetic batch of a class share one DSA parameter draw per
(iteration, outer loop, class), and the inner-loop training uses per-sample DSA (spec
trajectory_methods.md §2, models_and_augmentation.md §3.4)."""

from __future__ import annotations

from dataclasses import dataclass

from ..data.augment import parse_strategy
from ..io import ImageSet
from .base import DistillContext, register_method
from .dc import DCConfig
from .gradient_matching import dsa_params_or_none, gradient_matching


@dataclass(frozen=True)
class DSAConfig(DCConfig):
    init: str = "real"  # the DSA README commands initialise from real images
    dsa_strategy: str = "color_crop_cutout_flip_scale_rotate"
    dsa_align_corners: bool = True  # affine ops (scale, rotate); spec models_and_augmentation §3.3

    def __post_init__(self) -> None:
        super().__post_init__()
        if not parse_strategy(self.dsa_strategy):
            raise ValueError("dsa needs a non-empty dsa_strategy (use method dc for no augmentation)")


@register_method("dsa", DSAConfig)
def dsa_method(ctx: DistillContext, cfg: DSAConfig) -> ImageSet:
    return gradient_matching(ctx, cfg, "dsa", dsa_params_or_none(cfg.dsa_strategy,
                                                                 cfg.dsa_align_corners))
