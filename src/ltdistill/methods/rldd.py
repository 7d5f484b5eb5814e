"""`rldd`: "Rethinking Long-tailed Dataset Distillation: A Uni-Level Framework with Unbiased
Recovery and Relabeling" (Cui, Qin, Li, Zhou, Li, Li; AAAI 2026; arXiv 2511.18858).

GLMC-debiased observer and teacher (artifacts), fair per-class BN recalibration of the observer
(artifact `bn_stats`), confidence-guided multi-round initialisation from teacher-scored crops,
recovery against the recalibrated global and class-wise BN statistics (EDC CIFAR-100 recipe), and
relabelling with the teacher. Spec: statistical_methods.md §1. The Table 8 ablations are keys:
`expert_loss`, `bn_targets`, `init`, `bn_var`, `class_wise_term`, `label_mode`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..io import ImageSet
from ..statistical.bn_recal import BN_VARS
from ..statistical.init import INITS
from ..statistical.recover import AUGMENTS, RecoverSettings
from ..statistical.synthesize import BN_TARGETS, LABEL_MODES, synthesize
from .base import DistillContext, register_method


@dataclass(frozen=True)
class RLDDConfig:
    expert_loss: str = "glmc"  # glmc | ce: which experts (observer_<loss>, teacher_<loss>)
    observer: str = ""  # expert kind; "" = observer_<expert_loss>
    teacher: str = ""  # expert kind; "" = teacher_<expert_loss>
    bn_targets: str = "recalibrated"  # recalibrated | running (the observer's own buffers)
    bn_var: str = "paper"  # paper | pooled | mixture
    class_wise_term: bool = True
    init: str = "multiround"  # multiround | rded | random_crop | noise
    num_crops: int = 5  # m crops per real image
    crop_scale: tuple[float, float] = (0.08, 1.0)
    iterations: int = 2000
    lr: float = 0.05
    betas: tuple[float, float] = (0.5, 0.9)
    r_bn: float = 0.01
    first_bn_multiplier: float = 10.0
    ce_weight: float = 1.0
    augment: str = "rrc"  # rrc | jitter | none
    rrc_scale: tuple[float, float] = (0.5, 1.0)
    images_per_class_per_batch: int = 1  # > 1: the `class_chunks` batch composition
    label_mode: str = "online"  # online | static (Protocol B teacher signal)

    def __post_init__(self) -> None:
        if self.expert_loss not in ("glmc", "ce"):
            raise ValueError(f"expert_loss must be glmc or ce, got '{self.expert_loss}'")
        if self.iterations < 0 or self.num_crops < 1 or self.images_per_class_per_batch < 1:
            raise ValueError("iterations >= 0, num_crops >= 1, images_per_class_per_batch >= 1")
        for name, allowed in (("bn_targets", BN_TARGETS), ("bn_var", BN_VARS), ("init", INITS),
                              ("augment", AUGMENTS), ("label_mode", LABEL_MODES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got '{getattr(self, name)}'")

    def expert_kinds(self) -> dict[str, str]:
        return {"observer": self.observer or f"observer_{self.expert_loss}",
                "teacher": self.teacher or f"teacher_{self.expert_loss}"}


@register_method("rldd", RLDDConfig, needs=("observer", "teacher", "bn_stats"), soft_labels=True)
def rldd(ctx: DistillContext, cfg: RLDDConfig) -> ImageSet:
    settings = RecoverSettings(
        iterations=cfg.iterations, lr=cfg.lr, betas=cfg.betas, r_bn=cfg.r_bn,
        first_bn_multiplier=cfg.first_bn_multiplier, ce_weight=cfg.ce_weight,
        class_wise=cfg.class_wise_term, augment=cfg.augment, rrc_scale=cfg.rrc_scale,
        per_class=cfg.images_per_class_per_batch)
    return synthesize(
        ctx, "rldd", init=cfg.init,
        init_options={"num_crops": cfg.num_crops, "crop_scale": cfg.crop_scale},
        settings=settings if cfg.iterations > 0 else None, bn_targets=cfg.bn_targets,
        bn_var=cfg.bn_var, label_mode=cfg.label_mode,
        meta={"ipc_policy": "augment", "config": asdict(cfg), **cfg.expert_kinds()})
