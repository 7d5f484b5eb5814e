"""`sre2l`: "Squeeze, Recover and Relabel: Dataset Condensation at ImageNet Scale From A New
Perspective" (Yin, Xing, Shen, NeurIPS 2023; VILA-Lab/SRe2L).

Squeeze: a plain-CE observer trained on the LT set (artifact). Recover: Gaussian-noise images
optimised with CE + r_bn · Σ_l (‖μ_l - μ_run‖₂ + ‖σ²_l - σ²_run‖₂) against the observer's own
running BN buffers (first layer × 10), one image per class per batch, random-roll jitter + flip
(CIFAR recipe: Adam(0.5, 0.9) lr 0.25, 1000 iterations, r_bn 0.01, jitter 4). Relabel: the
observer's logits (online by default). Spec: statistical_methods.md §2.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..io import ImageSet
from ..statistical.recover import RecoverSettings
from ..statistical.synthesize import LABEL_MODES, synthesize
from .base import DistillContext, register_method


@dataclass(frozen=True)
class SRe2LConfig:
    observer: str = "observer_ce"  # expert kind (plain CE)
    teacher: str = ""  # "" = the observer (SRe2L relabels with the squeezed model)
    iterations: int = 1000
    lr: float = 0.25
    betas: tuple[float, float] = (0.5, 0.9)
    r_bn: float = 0.01
    first_bn_multiplier: float = 10.0
    ce_weight: float = 1.0
    jitter: int = 4
    flip: bool = True
    init: str = "noise"  # noise (SRe2L) | random_crop | rded | multiround
    label_mode: str = "online"  # online | static

    def __post_init__(self) -> None:
        if self.label_mode not in LABEL_MODES:
            raise ValueError(f"label_mode must be one of {LABEL_MODES}, got '{self.label_mode}'")

    def expert_kinds(self) -> dict[str, str]:
        return {"observer": self.observer, "teacher": self.teacher or self.observer}


@register_method("sre2l", SRe2LConfig, needs=("observer", "teacher"), soft_labels=True)
def sre2l(ctx: DistillContext, cfg: SRe2LConfig) -> ImageSet:
    settings = RecoverSettings(
        iterations=cfg.iterations, lr=cfg.lr, betas=cfg.betas, r_bn=cfg.r_bn,
        first_bn_multiplier=cfg.first_bn_multiplier, ce_weight=cfg.ce_weight, class_wise=False,
        augment="jitter", jitter=cfg.jitter, flip=cfg.flip, per_class=1)
    return synthesize(
        ctx, "sre2l", init=cfg.init, init_options={}, settings=settings if cfg.iterations else None,
        bn_targets="running", bn_var="paper", label_mode=cfg.label_mode,
        meta={"ipc_policy": "noise_init", "config": asdict(cfg), **cfg.expert_kinds()})
