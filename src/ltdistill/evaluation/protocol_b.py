"""Protocol B: EDC/RLDD knowledge-distillation evaluation (evaluation_protocol.md §3), for any
image set.

Per batch (size min(50, N)): de-normalise to [0, 1] and quantise to uint8 (recipe.quantise), per-
sample RandAugment (torchvision defaults), RandomResizedCrop(size, scale (0.5, 1)) + horizontal
flip, normalise; then CutMix on every batch (λ ~ Beta(1, 1), one box, partner = a random
permutation). Loss κ2 · MSE(student logits, teacher logits) (mean over B x C) + κ1 · CE(student
logits, un-mixed hard label). Teacher logits come from the teacher run online on the same mixed
batch (`online`) or from the stored per-image logits mixed with the box's area fraction
(`static`). SGD (lr 0.1, momentum 0.875, weight decay 5e-4 from the recipe), the cos2 schedule
stepped per epoch over E epochs, and a student EMA (decay 0.99, every step) whose weights are
returned for testing.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import Checkpointer
from ..checkpoint import disabled as disabled_checkpointer
from ..data.preprocess import Preprocessing
from ..microbatch import micro_batch_size, sliced_backward
from ..models import ModelSpec, build_model, preferred_memory_format
from ..progress import Progress
from ..seeding import derive_seed, generator
from ..statistical.augment import (
    beta_sample,
    cutmix_box,
    paste_box,
    rand_augment,
    random_resized_crop,
)
from .train import TrainRecipe


def cos2_factor(epoch: int, epochs: int) -> float:
    """EDC "cos2" (st = 2) lr factor of epoch e in 0 ... E-1: ½(1 + cos(π e / 2E)) up to 5E/6,
    then ½(1 + cos(5π/12)) · (1 - e/E) (a drop by a factor of 6 at e = 5E/6)."""
    if epoch <= 5 * epochs / 6:
        return 0.5 * (1 + math.cos(math.pi * epoch / (2 * epochs)))
    return 0.5 * (1 + math.cos(5 * math.pi / 12)) * (1 - epoch / epochs)


def kd_loss(student: torch.Tensor, teacher: torch.Tensor | None, labels: torch.Tensor,
            kappa_ce: float = 0.025, kappa_mse: float = 1.0) -> torch.Tensor:
    """κ2 · mean((s - t)²) over all B x C logits + κ1 · CE(s, y); CE alone without a teacher."""
    ce = F.cross_entropy(student, labels)
    if teacher is None:
        return ce
    return kappa_mse * F.mse_loss(student, teacher.to(student.dtype)) + kappa_ce * ce


class EMA:
    """Exponential moving average of a model's floating-point state (parameters and buffers)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        src = model.state_dict()
        for k, v in self.model.state_dict().items():
            if v.dtype.is_floating_point:
                v.mul_(self.decay).add_(src[k].detach(), alpha=1 - self.decay)
            else:
                v.copy_(src[k])


def teacher_preprocessing(meta: dict[str, Any], data_prep: Preprocessing) -> Preprocessing:
    """The teacher's input space: its recorded mean/std normalisation, or the data's own
    preprocessing when the digests agree."""
    rec = meta.get("preprocessing") or {}
    if rec.get("kind", "normalise") == "normalise" and rec.get("mean") is not None:
        return Preprocessing("normalise", tuple(rec["mean"]), tuple(rec["std"]))
    if rec.get("digest") and rec["digest"] == data_prep.digest:
        return data_prep
    raise ValueError("the teacher was trained in a preprocessing space that cannot be rebuilt "
                     f"({rec}); train it with mean/std normalisation")


def resolve_label_source(recipe: TrainRecipe, meta: dict[str, Any] | None) -> str:
    if not recipe.use_soft_labels:
        return "none"
    if recipe.label_source != "auto":
        return recipe.label_source
    return (meta or {}).get("label_mode", "online")


def augment_batch(x: torch.Tensor, prep: Preprocessing, recipe: TrainRecipe,
                  g: torch.Generator) -> torch.Tensor:
    """Images in the preprocessing space -> augmented images in [0, 1] (B x C x H x W)."""
    unit = prep.to_unit(x)
    if recipe.quantise or recipe.randaugment:
        u8 = (unit * 255).round().to(torch.uint8)
        if recipe.randaugment:
            u8 = rand_augment(u8, g)
        unit = u8.float() / 255
    return random_resized_crop(unit, g, recipe.rrc_scale, flip=True)


def train_protocol_b(spec: ModelSpec, images: torch.Tensor, labels: torch.Tensor, *,
                     recipe: TrainRecipe, lr: float, seed: int, device: torch.device | str,
                     preprocessing: Preprocessing, teacher: nn.Module | None = None,
                     teacher_prep: Preprocessing | None = None,
                     static_logits: torch.Tensor | None = None,
                     progress_label: str = "protocol B",
                     ckpt: Checkpointer | None = None) -> nn.Module:
    """Train a fresh `build_model(spec, seed)` for recipe.epochs epochs; returns the EMA model.
    `ckpt` checkpoints after epochs (student, EMA, optimiser, generators); a killed run resumed
    from it returns a bit-identical model on CPU."""
    device = torch.device(device)
    n = int(images.shape[0])
    if n == 0:
        raise ValueError("cannot train on an empty image set")
    if teacher is not None and static_logits is not None:
        raise ValueError("give either an online teacher or static logits, not both")
    model = build_model(spec, seed).to(device)
    fmt = preferred_memory_format(model, device, recipe.channels_last)
    model = model.to(memory_format=fmt).train()
    slice_size = micro_batch_size(model, device)  # cache-sized slices on CPU (microbatch.py)
    ema = EMA(model, recipe.ema_decay)
    if teacher is not None:
        teacher = teacher.to(device).to(memory_format=fmt).eval()
        teacher_prep = teacher_prep or preprocessing
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=recipe.momentum,
                          weight_decay=recipe.weight_decay)
    batch = min(recipe.batch_size, n)
    g_shuffle = generator("pb-shuffle", seed)
    g_aug = generator("pb-aug", seed)
    x_all = images.detach().float().cpu()
    y_all = labels.detach().long()
    ckpt = (ckpt or disabled_checkpointer()).track(model=model, ema=ema.model, optimizer=opt,
                                                  g_shuffle=g_shuffle, g_aug=g_aug)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(derive_seed("pb-global", seed))
        start = ckpt.resume()  # restores the forked global RNG too
        progress = Progress(recipe.epochs, progress_label).resumed(start)
        for ep in range(start, recipe.epochs):
            factor = cos2_factor(ep, recipe.epochs)
            for group in opt.param_groups:
                group["lr"] = lr * factor
            order = torch.randperm(n, generator=g_shuffle)
            loss_sum = 0.0
            for start in range(0, n, batch):
                idx = order[start:start + batch]
                unit = augment_batch(x_all[idx], preprocessing, recipe, g_aug)
                xs = preprocessing.apply(unit).to(device)
                xt = teacher_prep.apply(unit).to(device) if teacher is not None else None
                y = y_all[idx].to(device)
                target = static_logits[idx].to(device) if static_logits is not None else None
                if recipe.cutmix and len(idx) > 1:
                    lam = beta_sample(recipe.cutmix_alpha, g_aug)
                    perm = torch.randperm(len(idx), generator=g_aug).to(device)
                    box = cutmix_box(xs.shape[-2], xs.shape[-1], lam, g_aug)
                    xs, lam_adj = paste_box(xs, xs[perm], box)
                    if xt is not None:
                        xt, _ = paste_box(xt, xt[perm], box)
                    if target is not None:
                        target = lam_adj * target + (1 - lam_adj) * target[perm]
                if teacher is not None:
                    with torch.no_grad():
                        target = teacher(xt.contiguous(memory_format=fmt)).float()
                xs = xs.contiguous(memory_format=fmt)

                def loss_on(sl: slice, xs=xs, target=target, y=y) -> torch.Tensor:
                    return kd_loss(model(xs[sl]), None if target is None else target[sl], y[sl],
                                   recipe.kd_ce_weight, recipe.kd_mse_weight)

                opt.zero_grad(set_to_none=True)
                loss = sliced_backward(loss_on, len(idx), slice_size)  # same gradient
                opt.step()
                ema.update(model)
                loss_sum += float(loss.detach()) * len(idx)
            progress.step(loss=loss_sum / n, lr=lr * factor)
            ckpt.step(ep + 1)
    return ema.model.to(memory_format=torch.contiguous_format)
