"""`dm`: Dataset Condensation with Distribution Matching (Zhao & Bilen, WACV 2023).

Every iteration draws a fresh, randomly initialised, frozen network and matches, per class, the
mean embedding (`model.embed`) of a Siamese-augmented real batch and of the class's synthetic images;
one SGD step on the pixels (spec trajectory_methods.md §3). Class means are computed per class, so
a tail class with fewer images than batch_real works (the reference's BN reshape does not).

Batched path (`batched: true`, exact for networks whose norms act per sample): one forward pass
over the real batches of all classes (no gradient) and one over all synthetic images, each class
augmented with its own Siamese seed; `batched: false` (default) runs the per-class passes. On the
2-core CPU the per-class passes were faster (benchmarks/bench_matching.py: the batched pass
materialises activations of every class at once); the batched path is meant for GPUs. With
BatchNorm the batched pass normalises over all classes together, as the reference BN path."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..data.augment import DSAParams, siamese_seed_for
from ..io import ImageSet
from ..microbatch import inference_batch_size, sliced_forward, slices_safely
from ..models.native import first_order
from ..progress import Progress
from ..seeding import generator
from .base import DistillContext, register_method
from .common import POLICIES
from .gradient_matching import (
    INITS,
    RealBatches,
    check_choice,
    check_finite,
    check_positive,
    class_bounds,
    dsa_params_or_none,
    fresh_net,
    init_synthetic,
    loss_trace,
    memory_format_for,
    siamese,
)


@dataclass(frozen=True)
class DMConfig:
    iterations: int = 20000  # one pixel update per iteration, each with a fresh network
    lr_img: float = 1.0  # spec: 1 (CIFAR-10 IPC <= 50, CIFAR-100), 10 (CIFAR-10 IPC >= 100)
    momentum_img: float = 0.5
    batch_real: int = 256  # real images per class (all n_c when fewer)
    init: str = "real"  # real | noise
    ipc_policy: str = "duplicate"  # IPC > n_c: inherent | duplicate | noise (real init)
    dsa_strategy: str = "color_crop_cutout_flip_scale_rotate"  # 'none' disables augmentation
    dsa_align_corners: bool = True
    # one forward over all classes (exact) vs per-class passes; per-class measured faster on CPU
    batched: bool = False
    channels_last: bool = False  # channels-last tensors on CPU (slower at 1x28x28 width 32 here)
    log_every: float = 10.0  # seconds between progress lines

    def __post_init__(self) -> None:
        if int(self.iterations) != self.iterations or self.iterations < 0:
            raise ValueError(f"iterations must be an integer >= 0, got {self.iterations}")
        check_positive(lr_img=self.lr_img, batch_real=self.batch_real)
        if not 0 <= self.momentum_img < 1:
            raise ValueError(f"momentum_img must lie in [0, 1), got {self.momentum_img}")
        check_choice("init", self.init, INITS)
        check_choice("ipc_policy", self.ipc_policy, POLICIES)
        dsa_params_or_none(self.dsa_strategy)  # unknown ops raise here


def class_means(emb: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """C x d means of consecutive class blocks of `emb` (N x d, class-major, block sizes `sizes`)."""
    return torch.stack([block.mean(dim=0) for block in emb.split(list(sizes))])


def mean_embedding_loss(real_emb: torch.Tensor, real_sizes: Sequence[int],
                        syn_emb: torch.Tensor, syn_sizes: Sequence[int]) -> torch.Tensor:
    """sum_c || mean(real_c) - mean(syn_c) ||^2 over class-major embedding blocks."""
    diff = class_means(real_emb, real_sizes) - class_means(syn_emb, syn_sizes)
    return (diff ** 2).sum()


def dm_loss(net: nn.Module, syn: torch.Tensor, bounds: Sequence[tuple[int, int]],
            real: Sequence[torch.Tensor], seeds: Sequence[int] | None, params: DSAParams | None,
            batched: bool = True,
            memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """The DM loss for one network, differentiable w.r.t. `syn`. real[c]: class c's real batch;
    bounds[c]: its synthetic slice; seeds[c]: the Siamese seed shared by both (None: no DSA)."""
    seed = (lambda c: seeds[c]) if seeds is not None else (lambda c: None)
    with torch.no_grad():
        real_aug = [siamese(x, params, seed(c)) for c, x in enumerate(real)]
    syn_aug = [siamese(syn[s:e], params, seed(c)) for c, (s, e) in enumerate(bounds)]
    if batched:
        size = inference_batch_size(syn.device, 1 << 30) if slices_safely(net) else None
        r = sliced_forward(net.embed, torch.cat(real_aug).contiguous(memory_format=memory_format),
                           size)  # no gradients; cache-sized slices on CPU
        s = net.embed(torch.cat(syn_aug).contiguous(memory_format=memory_format))
        return mean_embedding_loss(r, [len(x) for x in real], s, [e - b for b, e in bounds])
    total = torch.zeros((), device=syn.device)
    for xr, xs in zip(real_aug, syn_aug, strict=True):
        with torch.no_grad():
            mr = net.embed(xr.contiguous(memory_format=memory_format)).mean(dim=0)
        ms = net.embed(xs.contiguous(memory_format=memory_format)).mean(dim=0)
        total = total + ((mr - ms) ** 2).sum()
    return total


@register_method("dm", DMConfig)
def dm(ctx: DistillContext, cfg: DMConfig) -> ImageSet:
    method, data, device = "dm", ctx.data, ctx.device
    C = data.num_classes
    params = dsa_params_or_none(cfg.dsa_strategy, cfg.dsa_align_corners)
    x0, labels = init_synthetic(data.train_images, data.train_labels, C, ctx.ipc, cfg.init,
                                cfg.ipc_policy, generator(method, "init", ctx.seed))
    bounds = class_bounds(labels, C)
    syn = x0.to(device).requires_grad_(True)
    opt = torch.optim.SGD([syn], lr=cfg.lr_img, momentum=cfg.momentum_img)
    real = RealBatches(data.train_images, data.train_labels, C,
                       generator(method, "real-batches", ctx.seed), device)
    mf = memory_format_for(device, cfg.channels_last)
    progress = Progress(cfg.iterations, f"{method} distill", every_s=cfg.log_every)
    losses: list[float] = []
    ckpt = ctx.checkpointer(method, cfg).track(syn=syn, opt=opt, real_rng=real.g, losses=losses)
    start = ckpt.resume()
    progress.step(start)
    for it in range(start, cfg.iterations):
        net = fresh_net(ctx, method, it, mf)
        for p in net.parameters():
            p.requires_grad_(False)
        seeds = [siamese_seed_for(ctx.seed, it, c) for c in range(C)] if params is not None else None
        opt.zero_grad(set_to_none=True)
        with first_order():  # a plain backward to the images: native block kernels on CPU
            loss = dm_loss(net, syn, bounds, real.all_classes(cfg.batch_real), seeds, params,
                           cfg.batched, mf)
            loss.backward()
        losses.append(check_finite(loss, method, it) / C)  # per class
        opt.step()
        progress.step(loss=losses[-1])
        ckpt.step(it + 1)
    ckpt.finish()
    return ImageSet(
        images=syn.detach().cpu().float(), labels=labels, num_classes=C,
        meta=ctx.base_meta(
            method, ipc_policy=cfg.ipc_policy, init=cfg.init, iterations=cfg.iterations,
            dsa_strategy=params.strategy if params is not None else "none",
            final_loss=losses[-1] if losses else None,
            first_loss=losses[0] if losses else None,
            loss_trace=loss_trace(losses),
            per_class_counts=torch.bincount(labels, minlength=C).tolist()),
    )
