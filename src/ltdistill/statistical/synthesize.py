"""The recover-and-relabel driver shared by rldd, sre2l and rded: load the experts, build the BN
targets, initialise, recover, relabel, and assemble the ImageSet."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..io import ImageSet
from ..methods.base import DistillContext
from .bn_recal import BNStats, running_targets
from .expert_io import load_expert_model
from .init import initialise
from .recover import RecoverSettings, recover, statistic_loss

log = logging.getLogger("ltdistill.statistical")

LABEL_MODES = ("online", "static")
BN_TARGETS = ("recalibrated", "running")


def load_expert(path: str | Path, ctx: DistillContext, role: str) -> tuple[nn.Module, dict]:
    """Load an observer/teacher and check it fits the data (classes, shape, class map)."""
    model, spec, meta = load_expert_model(path, str(ctx.device))
    data = ctx.data
    if (spec.num_classes, spec.channels, spec.image_size) != (data.num_classes, data.channels,
                                                             data.image_size):
        raise ValueError(f"{role} {path} was trained for {spec} but the data has "
                         f"{data.num_classes} classes of {data.channels}x{data.image_size}px")
    names = meta.get("class_names")
    if names is not None and list(names) != list(data.class_names):
        raise ValueError(f"{role} {path} has a different class map than the data "
                         "(class-index mismatches silently ruin accuracy; retrain the expert)")
    log.info("%s %s: %s loss, test top-1 %s", role, path, meta.get("loss"), meta.get("test_top1"))
    return model.eval(), meta


def pixel_bounds(ctx: DistillContext) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The [0, 1] pixel range in normalised coordinates, per channel (None for ZCA)."""
    prep = ctx.data.preprocessing
    if prep.kind != "normalise":
        return None
    mean, std = torch.tensor(prep.mean), torch.tensor(prep.std)
    return (0 - mean) / std, (1 - mean) / std


@torch.no_grad()
def relabel(teacher: nn.Module, images: torch.Tensor, device: torch.device,
            batch: int = 512) -> torch.Tensor:
    """Static soft labels: teacher logits of the un-augmented images (CPU float32)."""
    teacher = teacher.to(device).eval()
    return torch.cat([teacher(images[i:i + batch].to(device)).float().cpu()
                      for i in range(0, len(images), batch)])


def bn_targets_from(ctx: DistillContext, observer: nn.Module, bn_targets: str, bn_var: str,
                    class_wise: bool):
    """(global targets, class targets or None) for recovery."""
    if bn_targets not in BN_TARGETS:
        raise ValueError(f"bn_targets must be one of {BN_TARGETS}, got '{bn_targets}'")
    if bn_targets == "running":
        if class_wise:
            log.info("bn_targets running has no class-wise statistics: class-wise term off")
        return running_targets(observer), None
    stats, _ = BNStats.load(ctx.artifacts["bn_stats"])
    names = [n for n, m in observer.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if names != stats.layer_names:
        raise ValueError("the BN statistics were computed for a different observer "
                         f"({stats.layer_names[:3]}... vs {names[:3]}...)")
    return stats.global_targets(bn_var), (stats.class_targets(bn_var) if class_wise else None)


def synthesize(ctx: DistillContext, method: str, *, init: str, init_options: dict[str, Any],
               settings: RecoverSettings | None, bn_targets: str, bn_var: str,
               label_mode: str, meta: dict[str, Any]) -> ImageSet:
    """init -> (recover) -> relabel. `settings=None` skips recovery (RDED)."""
    if label_mode not in LABEL_MODES:
        raise ValueError(f"label_mode must be one of {LABEL_MODES}, got '{label_mode}'")
    data = ctx.data
    observer, obs_meta = load_expert(ctx.artifacts["observer"], ctx, "observer")
    teacher, tea_meta = load_expert(ctx.artifacts["teacher"], ctx, "teacher")
    scorer = teacher if init_options.pop("scorer", "teacher") == "teacher" else observer
    x0, y, sources = initialise(data.train_images, data.train_labels, data.num_classes, ctx.ipc,
                                init, ctx.seed, teacher=scorer, device=ctx.device, **init_options)
    images, final = x0, []
    extra: dict[str, Any] = {}
    if settings is not None:
        glob, cls = bn_targets_from(ctx, observer, bn_targets, bn_var, settings.class_wise)
        before = statistic_loss(observer, x0.to(ctx.device), y.to(ctx.device), glob, cls,
                                settings.first_bn_multiplier)
        ckpt = ctx.checkpointer(method, {"init": init, "init_options": init_options,
                                         "settings": settings, "bn_targets": bn_targets,
                                         "bn_var": bn_var, "artifacts": ctx.artifacts})
        images, final = recover(observer, x0, y, settings, ctx.seed, glob, cls, pixel_bounds(ctx),
                                ctx.device, label=f"{method} recover", ckpt=ckpt)
        after = statistic_loss(observer, images.to(ctx.device), y.to(ctx.device), glob, cls,
                               settings.first_bn_multiplier)
        log.info("%s: statistic loss (un-augmented) %.4g -> %.4g", method, before, after)
        extra = {"stat_loss_init": before, "stat_loss_final": after, "stat_loss_batches": final}
    soft = relabel(teacher, images, ctx.device)
    return ImageSet(
        images=images.float(), labels=y, num_classes=data.num_classes, soft_labels=soft,
        meta=ctx.base_meta(method, label_mode=label_mode, init=init, init_sources=sources,
                           observer_path=str(ctx.artifacts["observer"]),
                           teacher_path=str(ctx.artifacts["teacher"]),
                           observer_test_top1=obs_meta.get("test_top1"),
                           teacher_test_top1=tea_meta.get("test_top1"),
                           teacher_head=tea_meta.get("head"), **meta, **extra),
    )
