"""Protocol A ("evaluate_synset") training of a fresh classifier on an image set, plus batched
prediction; deterministic for a given seed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..acceleration import autocast, compiled
from ..checkpoint import Checkpointer
from ..checkpoint import disabled as disabled_checkpointer
from ..microbatch import inference_batch_size, micro_batch_size, sliced_backward
from ..models import ModelSpec, build_model, preferred_memory_format
from ..progress import Progress
from ..seeding import derive_seed, generator


@dataclass(frozen=True)
class TrainRecipe:
    """Protocol A settings (evaluation_protocol.md §2).

    epochs: E. The loop runs epochs 0 ... E, i.e. E + 1 passes over the data, as the reference
        evaluate_synset does; the lr is multiplied by `decay_factor` once, after epoch E//2 + 1.
    lr: None selects the image set's learned lr if it has one, else `default_lr`.
    use_soft_labels: False gives the hard-label variant (HLR), which ignores stored soft labels.
    channels_last: None picks the faster memory format for the model on CPU
        (models.preferred_memory_format: contiguous for GroupNorm/instance-norm ConvNets,
        channels-last for BatchNorm models); True/False force it.

    protocol "b" selects Protocol B (evaluation_protocol.md §3, evaluation/protocol_b.py); the
    fields after `protocol` only apply to it and their defaults leave Protocol A unchanged:
    kd_ce_weight κ1 (CE on the un-mixed hard label), kd_mse_weight κ2 (MSE to teacher logits),
    ema_decay (student EMA, tested with the EMA weights), randaugment, rrc_scale, cutmix (every
    batch, λ ~ Beta(cutmix_alpha, cutmix_alpha)), quantise (to uint8 before augmenting) and
    label_source: auto (the image set's meta label_mode, default online) | online | static.
    """

    epochs: int
    batch_size: int
    lr: float | None = None
    default_lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    decay_factor: float = 0.1
    augment: bool = True
    dsa_strategy: str = "color_crop_cutout_flip_scale_rotate"
    use_soft_labels: bool = True
    channels_last: bool | None = None
    protocol: str = "a"
    kd_ce_weight: float = 0.025
    kd_mse_weight: float = 1.0
    ema_decay: float = 0.99
    randaugment: bool = True
    rrc_scale: tuple[float, float] = (0.5, 1.0)
    cutmix: bool = True
    cutmix_alpha: float = 1.0
    quantise: bool = True
    label_source: str = "auto"

    def __post_init__(self) -> None:
        if self.protocol not in ("a", "b"):
            raise ValueError(f"TrainRecipe.protocol must be 'a' or 'b', got '{self.protocol}'")
        if self.label_source not in ("auto", "online", "static"):
            raise ValueError("TrainRecipe.label_source must be auto, online or static, "
                             f"got '{self.label_source}'")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"TrainRecipe.ema_decay must lie in [0, 1), got {self.ema_decay}")
        if int(self.epochs) != self.epochs or self.epochs < 1:
            raise ValueError(f"TrainRecipe.epochs must be an integer >= 1, got {self.epochs}")
        if int(self.batch_size) != self.batch_size or self.batch_size < 1:
            raise ValueError(
                f"TrainRecipe.batch_size must be an integer >= 1, got {self.batch_size}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"TrainRecipe.lr must be positive when given, got {self.lr}")
        if not self.default_lr > 0:
            raise ValueError(f"TrainRecipe.default_lr must be positive, got {self.default_lr}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"TrainRecipe.momentum must lie in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ValueError(f"TrainRecipe.weight_decay must be >= 0, got {self.weight_decay}")
        if not self.decay_factor > 0:
            raise ValueError(f"TrainRecipe.decay_factor must be positive, got {self.decay_factor}")


def decay_epoch(epochs: int) -> int:
    """The epoch after which the lr is decayed: E // 2 + 1 (501 for E = 1000)."""
    return epochs // 2 + 1


def lr_schedule(epochs: int, lr: float, factor: float = 0.1) -> list[float]:
    """The lr used during each of the E + 1 epochs 0 ... E: `lr` up to and including epoch
    E//2 + 1, then `lr * factor`. (For E <= 2 the decay falls after the last epoch.)"""
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    d = decay_epoch(epochs)
    return [lr if ep <= d else lr * factor for ep in range(epochs + 1)]


def soft_cross_entropy(logits: torch.Tensor, target_logits: torch.Tensor,
                       class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """-(1/B) sum_i sum_k w_k softmax(target_i)_k log softmax(logits_i)_k, no temperature;
    w_k = 1 without class weights (weights indexed by the output class k, as in DAMED's DAM)."""
    log_q = F.log_softmax(logits, dim=1)
    p = F.softmax(target_logits.to(log_q.dtype), dim=1)
    terms = p * log_q
    if class_weights is not None:
        terms = terms * class_weights.to(terms).view(1, -1)
    return -terms.sum(dim=1).mean()


def hard_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                       class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy; with class weights, the plain batch mean of w_{y_i} * CE_i (the one-hot case
    of soft_cross_entropy, not PyTorch's weight-normalised mean)."""
    if class_weights is None:
        return F.cross_entropy(logits, labels)
    per_sample = F.cross_entropy(logits, labels, reduction="none")
    return (per_sample * class_weights.to(per_sample)[labels]).mean()


def _make_optimizer(model: nn.Module, lr: float, recipe: TrainRecipe) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=recipe.momentum,
                           weight_decay=recipe.weight_decay)


def train_classifier(
    spec: ModelSpec,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    recipe: TrainRecipe,
    lr: float,
    seed: int,
    device: torch.device | str,
    soft_labels: torch.Tensor | None = None,
    class_weights: torch.Tensor | None = None,
    progress_label: str = "train",
    epoch_callback: Callable[[int, nn.Module, torch.optim.Optimizer], None] | None = None,
    ckpt: Checkpointer | None = None,
) -> nn.Module:
    """Train a fresh `build_model(spec, seed)` with Protocol A and return it (in train mode).

    E = recipe.epochs; epochs 0 ... E are run (E + 1 passes). Every epoch reshuffles with a
    generator derived from `seed`; every batch gets per-sample DSA when recipe.augment. After
    epoch E//2 + 1 the lr is multiplied by recipe.decay_factor and the momentum buffers are
    cleared (what the reference's fresh SGD optimiser amounts to). Loss: cross-entropy on `labels`, or soft
    cross-entropy on the `soft_labels` logits when given. The batch size is min(batch_size, N);
    the last batch of an epoch may be smaller (no drop_last, as the reference DataLoader).
    On CPU a batch goes through forward/backward in cache-sized slices whose gradients accumulate
    (microbatch.py: the same gradient up to float summation order, about 1.5x the throughput).
    `epoch_callback(epoch, model, optimizer)` runs at the end of every epoch, after the decay.
    `ckpt` checkpoints after epochs (model, optimiser, generators); a killed run resumed from it
    returns a bit-identical model on CPU (tests/unit/test_resume_training.py).
    """
    if not lr > 0:
        raise ValueError(f"learning rate must be positive, got {lr}")
    device = torch.device(device)
    n = int(images.shape[0])
    if n == 0:
        raise ValueError("cannot train on an empty image set")
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
    if images.shape[1] != spec.channels or images.shape[-1] != spec.image_size:
        raise ValueError(f"images of shape {tuple(images.shape[1:])} do not match the model spec "
                         f"(channels {spec.channels}, image size {spec.image_size})")
    if soft_labels is not None and soft_labels.shape != (n, spec.num_classes):
        raise ValueError(f"soft_labels must have shape ({n}, {spec.num_classes}), "
                         f"got {tuple(soft_labels.shape)}")
    if class_weights is not None and class_weights.shape != (spec.num_classes,):
        raise ValueError(f"class_weights must have shape ({spec.num_classes},)")

    augment_fn = params = None
    if recipe.augment:
        try:
            from ..data.augment import DSAParams
            from ..data.augment import dsa as augment_fn
        except ImportError as exc:  # pragma: no cover - depends on the augmentation module
            raise ImportError("recipe.augment=True needs ltdistill.data.augment (DSA)") from exc
        params = DSAParams(strategy=recipe.dsa_strategy)

    model = build_model(spec, seed).to(device)
    memory_format = preferred_memory_format(model, device, recipe.channels_last)
    model = model.to(memory_format=memory_format)
    model.train()
    slice_size = micro_batch_size(model, device)  # cache-sized slices, same gradient
    forward = compiled(model)  # runtime.compile (acceleration.py); `model` is what is trained

    x_all = images.detach().to(device, torch.float32)
    y_all = labels.detach().to(device, torch.long)
    t_all = soft_labels.detach().to(device, torch.float32) if soft_labels is not None else None
    w = class_weights.detach().to(device, torch.float32) if class_weights is not None else None

    epochs = recipe.epochs
    batch = min(recipe.batch_size, n)
    shuffle_gen = generator("eval-shuffle", seed)  # CPU: randperm indices
    aug_gen = generator("eval-dsa", seed)  # CPU: DSA draws its parameters on the CPU
    optimizer = _make_optimizer(model, float(lr), recipe)
    ckpt = (ckpt or disabled_checkpointer()).track(model=model, optimizer=optimizer,
                                                  shuffle_gen=shuffle_gen, aug_gen=aug_gen)

    # Fork the global RNG too, so that any op drawing from it (e.g. dropout) is reproducible and
    # the caller's RNG state is untouched.
    fork_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):
        global_seed = derive_seed("eval-global", seed)
        torch.default_generator.manual_seed(global_seed)  # CPU only: other devices untouched
        if device.type == "cuda":
            torch.cuda.manual_seed(global_seed)
        start = ckpt.resume()  # restores the forked global RNG too
        current_lr = float(lr) * (recipe.decay_factor if start > decay_epoch(epochs) else 1.0)
        progress = Progress(epochs + 1, progress_label).resumed(start)
        for ep in range(start, epochs + 1):
            order = torch.randperm(n, generator=shuffle_gen).to(device)
            loss_sum = torch.zeros((), device=device)
            for start in range(0, n, batch):
                idx = order[start:start + batch]
                x = x_all[idx]
                if augment_fn is not None:
                    x = augment_fn(x, params, generator=aug_gen)
                x = x.contiguous(memory_format=memory_format)
                targets = t_all[idx] if t_all is not None else y_all[idx]

                def loss_on(sl: slice, x=x, targets=targets) -> torch.Tensor:
                    with autocast(device):  # runtime.amp: bfloat16 forward on CUDA only
                        out = forward(x[sl]).float()
                    if t_all is not None:
                        return soft_cross_entropy(out, targets[sl], w)
                    return hard_cross_entropy(out, targets[sl], w)

                optimizer.zero_grad(set_to_none=True)
                loss = sliced_backward(loss_on, idx.numel(), slice_size)
                optimizer.step()
                loss_sum += loss.detach() * idx.numel()
            progress.step(loss=float(loss_sum) / n, lr=current_lr)  # this epoch's lr
            if ep == decay_epoch(epochs):
                current_lr *= recipe.decay_factor
                for group in optimizer.param_groups:  # = a fresh SGD: new lr, no momentum yet
                    group["lr"] = current_lr
                optimizer.state.clear()
            if epoch_callback is not None:
                epoch_callback(ep, model, optimizer)
            ckpt.step(ep + 1)
    return model


def _model_device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Logits (N x C, float32, on the CPU) in eval mode; the model's previous mode is restored."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = _model_device(model)
    batch_size = inference_batch_size(device, batch_size)
    was_training = model.training
    model.eval()
    try:
        outs = [model(images[i:i + batch_size].to(device, torch.float32)).float().cpu()
                for i in range(0, images.shape[0], batch_size)]
    finally:
        model.train(was_training)
    if not outs:
        return torch.empty(0, 0)
    return torch.cat(outs)


def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Predicted classes (N,) int64 on the CPU, computed in eval mode without gradients."""
    if images.shape[0] == 0:
        return torch.empty(0, dtype=torch.long)
    return predict_logits(model, images, batch_size).argmax(dim=1)
