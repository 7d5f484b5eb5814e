"""`rded`: "On the Diversity and Realism of Distilled Dataset: An Efficient Dataset Distillation
Paradigm" (Sun, Shi, Yu, Lin, CVPR 2024; LINs-lab/RDED).

No pixel optimisation: from each of up to `mipc` real images per class, `num_crops`
RandomResizedCrops (size res/factor, aspect 1, scale 0.08-1) are scored by the observer's CE; each
image keeps its best crop, the class keeps its best IPC · factor² crops, stitched factor x factor
(factor 1 at 28/32 px). A class with fewer images cycles through its ranked crops (IPC policy
`duplicate`, long_tail_data.md §6). Soft labels: the observer's logits. Spec:
statistical_methods.md §3.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..io import ImageSet
from ..statistical.synthesize import LABEL_MODES, synthesize
from .base import DistillContext, register_method


@dataclass(frozen=True)
class RDEDConfig:
    observer: str = "observer_ce"  # expert kind scoring the crops
    teacher: str = ""  # "" = the observer (relabelling model)
    mipc: int = 300  # real images sampled per class (all when fewer)
    num_crops: int = 5
    crop_scale: tuple[float, float] = (0.08, 1.0)
    factor: int = 1  # crops stitched factor x factor per image (2 for ImageNet)
    ipc_policy: str = "duplicate"  # the only policy RDED's ranking supports here
    label_mode: str = "online"  # online | static

    def __post_init__(self) -> None:
        if self.ipc_policy != "duplicate":
            raise ValueError("rded supports ipc_policy: duplicate (ranked crops are cycled)")
        if self.label_mode not in LABEL_MODES:
            raise ValueError(f"label_mode must be one of {LABEL_MODES}, got '{self.label_mode}'")

    def expert_kinds(self) -> dict[str, str]:
        return {"observer": self.observer, "teacher": self.teacher or self.observer}


@register_method("rded", RDEDConfig, needs=("observer", "teacher"), soft_labels=True)
def rded(ctx: DistillContext, cfg: RDEDConfig) -> ImageSet:
    return synthesize(
        ctx, "rded", init="rded",
        init_options={"num_crops": cfg.num_crops, "crop_scale": cfg.crop_scale,
                      "factor": cfg.factor, "max_images_per_class": cfg.mipc,
                      "scorer": "observer"},
        settings=None, bn_targets="running", bn_var="paper", label_mode=cfg.label_mode,
        meta={"ipc_policy": cfg.ipc_policy, "config": asdict(cfg), **cfg.expert_kinds()})
