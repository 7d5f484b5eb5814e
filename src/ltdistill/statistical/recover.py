"""Recovery: optimise the pixels of the synthetic set so that their BN-input statistics in the
frozen observer match targets (statistical_methods.md §1.6, §2).

Loss per batch: ce_weight · CE(observer(x̃), y) + r_bn · (L_glob + L_class), with
    L_glob  = Σ_l m_l (‖μ_l(x̃) - μ_l‖₂ + ‖σ²_l(x̃) - σ²_l‖₂)
    L_class = mean over classes c in the batch of Σ_l m_l (‖μ_l(x̃_c) - μ^c_l‖₂ + ‖σ²_l(x̃_c) - σ²^c_l‖₂)
where μ_l, σ²_l are the per-channel mean and biased variance of the input of BN layer l (forward
hooks, observer in eval mode), m_1 = first_bn_multiplier and m_l = 1 otherwise. x̃ is the batch
after a differentiable augmentation (RandomResizedCrop + flip for RLDD/EDC, random roll + flip for
SRe2L). Adam with cosine decay to 0; after every step the pixels are clamped to the valid range.
Batches hold `per_class` images of every class (one image per class by default).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import Checkpointer
from ..checkpoint import disabled as disabled_checkpointer
from ..progress import Progress
from ..seeding import generator
from .augment import random_flip, random_resized_crop, random_roll
from .bn_recal import bn_layers, record_bn_inputs

AUGMENTS = ("rrc", "jitter", "none")


@dataclass(frozen=True)
class RecoverSettings:
    iterations: int = 2000
    lr: float = 0.05
    betas: tuple[float, float] = (0.5, 0.9)
    r_bn: float = 0.01
    first_bn_multiplier: float = 10.0
    ce_weight: float = 1.0
    class_wise: bool = True
    augment: str = "rrc"  # rrc | jitter | none
    rrc_scale: tuple[float, float] = (0.5, 1.0)
    jitter: int = 4
    flip: bool = True
    per_class: int = 1  # images of every class per batch


Targets = list[tuple[torch.Tensor, torch.Tensor]]


def batch_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance over (N, H, W)."""
    var, mean = torch.var_mean(x, dim=(0, 2, 3), unbiased=False)
    return mean, var


def class_stats(x: torch.Tensor, labels: torch.Tensor, num_classes: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-class per-channel mean and biased variance (C x ch) and the classes present."""
    b, ch = x.shape[:2]
    m1 = x.mean(dim=(2, 3))  # B x ch
    m2 = x.pow(2).mean(dim=(2, 3))
    cnt = torch.bincount(labels, minlength=num_classes).to(x.dtype)
    s1 = torch.zeros(num_classes, ch, dtype=x.dtype, device=x.device).index_add(0, labels, m1)
    s2 = torch.zeros(num_classes, ch, dtype=x.dtype, device=x.device).index_add(0, labels, m2)
    present = cnt > 0
    mean = s1 / cnt.clamp_min(1).view(-1, 1)
    var = (s2 / cnt.clamp_min(1).view(-1, 1) - mean.pow(2)).clamp_min(0)
    return mean, var, present


def bn_matching_loss(inputs: list[torch.Tensor], labels: torch.Tensor,
                     global_targets: Targets | None, class_targets: Targets | None,
                     first_multiplier: float = 10.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_glob, L_class) for the recorded BN inputs of one forward pass."""
    dev = inputs[0].device
    glob = torch.zeros((), device=dev)
    cls = torch.zeros((), device=dev)
    for li, x in enumerate(inputs):
        mult = first_multiplier if li == 0 else 1.0
        if global_targets is not None:
            mu_t, var_t = (t.to(dev) for t in global_targets[li])
            mu, var = batch_stats(x)
            glob = glob + mult * (torch.linalg.vector_norm(mu - mu_t)
                                  + torch.linalg.vector_norm(var - var_t))
        if class_targets is not None:
            mu_ct, var_ct = (t.to(dev) for t in class_targets[li])
            mu_c, var_c, present = class_stats(x, labels, mu_ct.shape[0])
            per = (torch.linalg.vector_norm(mu_c - mu_ct, dim=1)
                   + torch.linalg.vector_norm(var_c - var_ct, dim=1))
            cls = cls + mult * per[present].mean()
    return glob, cls


def batches_by_slot(labels: torch.Tensor, per_class: int) -> list[torch.Tensor]:
    """Index batches: batch k holds slots [k·per_class, (k+1)·per_class) of every class."""
    num_classes = int(labels.max()) + 1
    slots = [torch.nonzero(labels == c).flatten() for c in range(num_classes)]
    longest = max(len(s) for s in slots)
    out = []
    for k in range(0, longest, per_class):
        parts = [s[k:k + per_class] for s in slots if len(s) > k]
        out.append(torch.cat(parts))
    return out


def _augment(x: torch.Tensor, s: RecoverSettings, g: torch.Generator) -> torch.Tensor:
    if s.augment == "rrc":
        return random_resized_crop(x, g, s.rrc_scale, flip=s.flip)
    if s.augment == "jitter":
        x = random_roll(x, g, s.jitter)
    return random_flip(x, g) if s.flip else x


def recover(observer: nn.Module, init: torch.Tensor, labels: torch.Tensor, settings: RecoverSettings,
            seed: int, global_targets: Targets | None = None, class_targets: Targets | None = None,
            bounds: tuple[torch.Tensor, torch.Tensor] | None = None,
            device: torch.device | str = "cpu", label: str = "recover",
            ckpt: Checkpointer | None = None) -> tuple[torch.Tensor, list[float]]:
    """Optimised copies of `init` (CPU float32) and the per-batch final statistic losses.
    `ckpt` saves the finished batches, so a killed job resumes with the next batch (each batch
    draws from its own generator, so the result does not depend on where the job stopped)."""
    if settings.augment not in AUGMENTS:
        raise ValueError(f"augment must be one of {AUGMENTS}, got '{settings.augment}'")
    device = torch.device(device)
    observer = observer.to(device).eval()
    for p in observer.parameters():
        p.requires_grad_(False)
    if not bn_layers(observer):
        raise ValueError("the observer has no BatchNorm layer")
    out = init.detach().clone().float()
    lo = hi = None
    if bounds is not None:
        lo, hi = (b.to(device).view(1, -1, 1, 1) for b in bounds)
    batches = batches_by_slot(labels, settings.per_class)
    progress = Progress(len(batches) * settings.iterations, label)
    final_losses: list[float] = []
    ckpt = ckpt or disabled_checkpointer()
    ckpt.track(images=out, final_losses=final_losses)
    first = ckpt.resume()
    progress.step(first * settings.iterations)
    for bi, idx in enumerate(batches):
        if bi < first:
            continue
        g = generator("recover", seed, bi)
        x = out[idx].to(device).requires_grad_(True)
        y = labels[idx].to(device)
        opt = torch.optim.Adam([x], lr=settings.lr, betas=settings.betas)
        stat = torch.zeros(())
        for it in range(settings.iterations):
            lr = settings.lr * 0.5 * (1 + math.cos(math.pi * it / settings.iterations))
            for group in opt.param_groups:
                group["lr"] = lr
            with record_bn_inputs(observer) as store:
                logits = observer(_augment(x, settings, g))
            glob, cls = bn_matching_loss(store, y, global_targets,
                                         class_targets if settings.class_wise else None,
                                         settings.first_bn_multiplier)
            stat = glob + cls
            loss = settings.r_bn * stat
            if settings.ce_weight:
                loss = loss + settings.ce_weight * F.cross_entropy(logits, y)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite recovery loss ({float(loss)}) at batch {bi} "
                                         f"iteration {it}; lower lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if lo is not None:
                with torch.no_grad():
                    x.data = torch.maximum(torch.minimum(x.data, hi), lo)
            progress.step(loss=float(loss.detach()), stat=float(stat.detach()))
        out[idx] = x.detach().cpu()
        final_losses.append(float(stat.detach()))
        ckpt.step(bi + 1)
    ckpt.finish()
    return out, final_losses


def statistic_loss(observer: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                   global_targets: Targets | None, class_targets: Targets | None,
                   first_multiplier: float = 10.0) -> float:
    """L_glob + L_class of un-augmented images (diagnostics and tests)."""
    observer = observer.eval()
    with torch.no_grad(), record_bn_inputs(observer) as store:
        observer(images)
        glob, cls = bn_matching_loss(store, labels, global_targets, class_targets, first_multiplier)
    return float(glob + cls)
