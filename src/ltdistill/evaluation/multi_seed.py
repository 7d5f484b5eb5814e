"""Protocol A for several evaluation seeds at once: the S models train as one vmapped model
(torch.func.functional_call over stacked parameters), each with its own initialisation, shuffle
and DSA generators - the same per-seed computations as S calls of train_classifier, batched.

Measured (benchmarks/harness.py, docs/performance.md): on a GPU small image sets leave the device
idle and S seeds in one vmapped step cost little more than one; on this 2-core CPU the vmapped
step runs ~3x SLOWER than S sequential cache-sized steps (grouped convolutions have no fast CPU
kernel), so `auto` vmaps on CUDA only and trains the seeds one after another on the CPU - still in
one process, which saves the per-job start-up and test-set loading of S separate jobs.

vmapping is exact only for models whose samples do not interact and that draw no random numbers
(no BatchNorm, no Dropout: microbatch.slices_safely); others always train sequentially."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..checkpoint import Checkpointer
from ..checkpoint import disabled as disabled_checkpointer
from ..microbatch import slices_safely
from ..models import ModelSpec, build_model
from ..progress import Progress
from ..seeding import derive_seed, generator
from .train import (
    TrainRecipe,
    decay_epoch,
    hard_cross_entropy,
    soft_cross_entropy,
    train_classifier,
)

MODES = ("auto", "vmap", "sequential")


def vmap_applies(spec: ModelSpec, device: torch.device | str, mode: str = "auto") -> bool:
    """Whether `mode` trains the seeds as one vmapped model on `device` for this architecture."""
    if mode not in MODES:
        raise ValueError(f"seed batching mode must be one of {', '.join(MODES)}, got '{mode}'")
    if mode == "sequential":
        return False
    if not slices_safely(build_model(spec, 0)):
        return False  # BatchNorm / Dropout: per-seed batch statistics or RNG, train one by one
    return mode == "vmap" or torch.device(device).type == "cuda"


def train_classifiers(spec: ModelSpec, images: torch.Tensor, labels: torch.Tensor, *,
                      recipe: TrainRecipe, lr: float, seeds: Sequence[int],
                      device: torch.device | str, soft_labels: torch.Tensor | None = None,
                      class_weights: torch.Tensor | None = None, mode: str = "auto",
                      ckpts: Sequence[Checkpointer | None] | None = None,
                      progress_label: str = "eval") -> list[nn.Module]:
    """One trained model per seed; model s equals train_classifier(..., seed=seeds[s]) up to
    float summation order (tests/unit/test_multi_seed.py). `ckpts` (one per seed) checkpoint the
    sequential path; the vmapped path checkpoints through ckpts[0] when given."""
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("need at least one evaluation seed")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"evaluation seeds must be distinct, got {seeds}")
    ckpts = list(ckpts) if ckpts is not None else [None] * len(seeds)
    if len(ckpts) != len(seeds):
        raise ValueError("give one checkpointer per seed")
    if not vmap_applies(spec, device, mode) or len(seeds) == 1:
        return [train_classifier(spec, images, labels, recipe=recipe, lr=lr, seed=s,
                                 device=device, soft_labels=soft_labels,
                                 class_weights=class_weights, ckpt=c,
                                 progress_label=f"{progress_label} seed {s}")
                for s, c in zip(seeds, ckpts, strict=True)]
    return _train_vmapped(spec, images, labels, recipe, lr, seeds, torch.device(device),
                          soft_labels, class_weights, ckpts[0], progress_label)


def _train_vmapped(spec: ModelSpec, images: torch.Tensor, labels: torch.Tensor,
                   recipe: TrainRecipe, lr: float, seeds: list[int], device: torch.device,
                   soft_labels: torch.Tensor | None, class_weights: torch.Tensor | None,
                   ckpt: Checkpointer | None, progress_label: str) -> list[nn.Module]:
    from torch.func import functional_call, stack_module_state, vmap

    n = int(images.shape[0])
    if n == 0:
        raise ValueError("cannot train on an empty image set")
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
    models = [build_model(spec, s).to(device).train() for s in seeds]
    params, buffers = stack_module_state(models)  # [S, ...] leaves with requires_grad
    template = build_model(spec, seeds[0]).to("meta")
    names = list(params)
    stacked = [params[k] for k in names]

    augment_fn = dsa_params = None
    if recipe.augment:
        from ..data.augment import DSAParams
        from ..data.augment import dsa as augment_fn
        dsa_params = DSAParams(strategy=recipe.dsa_strategy)
    x_all = images.detach().to(device, torch.float32)
    y_all = labels.detach().to(device, torch.long)
    t_all = soft_labels.detach().to(device, torch.float32) if soft_labels is not None else None
    w = class_weights.detach().to(device, torch.float32) if class_weights is not None else None
    shuffle_gens = [generator("eval-shuffle", s) for s in seeds]
    aug_gens = [generator("eval-dsa", s) for s in seeds]

    def loss_one(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], x: torch.Tensor,
                 target: torch.Tensor) -> torch.Tensor:
        out = functional_call(template, (p, b), (x,))
        if t_all is not None:
            return soft_cross_entropy(out, target, w)
        return hard_cross_entropy(out, target, w)

    batched_loss = vmap(loss_one)
    optimizer = torch.optim.SGD(stacked, lr=float(lr), momentum=recipe.momentum,
                                weight_decay=recipe.weight_decay)  # elementwise = per seed
    epochs, batch = recipe.epochs, min(recipe.batch_size, n)
    ckpt = (ckpt or disabled_checkpointer()).track(
        optimizer=optimizer, **{f"param_{k}": t for k, t in params.items()},
        **{f"shuffle_{i}": g for i, g in enumerate(shuffle_gens)},
        **{f"aug_{i}": g for i, g in enumerate(aug_gens)})
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(derive_seed("eval-global", seeds[0]))  # no model here draws from it
        start = ckpt.resume()
        current_lr = float(lr) * (recipe.decay_factor if start > decay_epoch(epochs) else 1.0)
        progress = Progress(epochs + 1, f"{progress_label} seeds {seeds} (vmapped)").resumed(start)
        for ep in range(start, epochs + 1):
            orders = [torch.randperm(n, generator=g).to(device) for g in shuffle_gens]
            loss_sum = torch.zeros((), device=device)
            for lo in range(0, n, batch):
                idx = [o[lo:lo + batch] for o in orders]
                xs = [x_all[i] for i in idx]
                if augment_fn is not None:
                    xs = [augment_fn(x, dsa_params, generator=g)
                          for x, g in zip(xs, aug_gens, strict=True)]
                targets = torch.stack([(t_all if t_all is not None else y_all)[i] for i in idx])
                p = dict(zip(names, stacked, strict=True))
                losses = batched_loss(p, buffers, torch.stack(xs), targets)  # [S]
                optimizer.zero_grad(set_to_none=True)
                losses.sum().backward()  # seeds are independent: d(sum)/d(theta_s) = dL_s/dtheta_s
                optimizer.step()
                loss_sum += losses.detach().mean() * idx[0].numel()
            progress.step(loss=float(loss_sum) / n, lr=current_lr)
            if ep == decay_epoch(epochs):
                current_lr *= recipe.decay_factor
                for group in optimizer.param_groups:
                    group["lr"] = current_lr
                optimizer.state.clear()
            ckpt.step(ep + 1)
    out = []
    for s_i, model in enumerate(models):
        with torch.no_grad():
            for name, param in model.named_parameters():
                param.copy_(params[name][s_i])
        out.append(model)
    return out
