"""Expert training for trajectory matching (trajectory_methods.md §1): one trajectory = the flat
parameters after every epoch, for the kinds mtt (plain SGD), datm (FTD/GSAM), damed_rep (GSAM, weight
decay) and damed_cls (classifier fine-tuning of damed_rep expert i, class-aware, MaxNorm)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..acceleration import autocast, compiled
from ..checkpoint import Checkpointer
from ..checkpoint import disabled as disabled_checkpointer
from ..config import ConfigError, from_dict, type_hints
from ..data.augment import DSAParams, dsa
from ..data.prepared import PreparedData
from ..microbatch import inference_batch_size, micro_batch_size, sliced_backward
from ..models import ModelSpec, build_model, classifier_start, preferred_memory_format
from ..progress import Progress
from ..seeding import derive_seed, generator
from .gsam import GSAM
from .maxnorm import MaxNorm
from .sampler import ClassAwareSampler
from .storage import flatten_parameters, load_flat_parameters

log = logging.getLogger("ltdistill.experts")


def coerce_float_fields(obj: Any) -> None:
    """YAML 1.1 (PyYAML, used by Snakemake) reads `1e-5` as a string: turn numeric strings in the
    float-typed fields of a frozen dataclass into floats, and reject other strings there."""
    import typing
    from dataclasses import fields

    hints = type_hints(type(obj))
    for f in fields(obj):
        value = getattr(obj, f.name)
        if float in typing.get_args(hints[f.name]) + (hints[f.name],) and isinstance(value, str):
            try:
                object.__setattr__(obj, f.name, float(value))
            except ValueError:
                raise ValueError(f"{f.name} must be a number, got '{value}'") from None


@dataclass(frozen=True)
class ExpertConfig:
    """Settings of one expert kind (`experts: <kind>:` in the config; KIND_DEFAULTS fill the rest).

    num_experts: trajectories per (dataset, IF); epochs: E (E + 1 snapshots are stored).
    optimizer: sgd | gsam (GSAM over SGD with rho, gsam_alpha, adaptive).
    sampler: instance (uniform reshuffle, batches of batch_size) | class_aware (samples_per_class
        per drawn class; an epoch is max_c n_c * C samples).
    trainable: all | classifier (backbone frozen; the features are computed without gradients).
    init_from: another kind whose expert i (final snapshot) initialises expert i, or None (seeded
        random init). maxnorm: project classifier rows after every step (off = released code).
    seed: base seed; expert i of kind k uses seeds derived from (k, seed, i).
    test_subset: the final test accuracy recorded in the metadata uses this many test images
        (0 = all; a CPU-budget knob, the accuracy is informative only)."""

    num_experts: int = 100
    epochs: int = 100
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    batch_size: int = 256
    optimizer: str = "sgd"
    rho: float = 0.01
    gsam_alpha: float = 0.3
    adaptive: bool = True
    sampler: str = "instance"
    samples_per_class: int = 4
    trainable: str = "all"
    init_from: str | None = None
    maxnorm: bool = False
    maxnorm_thresh: float = 0.1
    dsa: bool = True
    test_subset: int = 0  # 0 = the whole balanced test split; n = a fixed seeded subset of n images
    seed: int = 0

    def __post_init__(self) -> None:
        coerce_float_fields(self)
        if isinstance(self.maxnorm, str):  # YAML 1.1 reads `off` as False already; accept words
            word = self.maxnorm.strip().lower()
            if word not in ("on", "off", "true", "false"):
                raise ValueError(f"maxnorm must be on/off, got '{self.maxnorm}'")
            object.__setattr__(self, "maxnorm", word in ("on", "true"))
        checks = [
            (self.num_experts >= 1, "num_experts must be >= 1"),
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.lr > 0, "lr must be positive"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.optimizer in ("sgd", "gsam"), "optimizer must be sgd or gsam"),
            (self.sampler in ("instance", "class_aware"), "sampler must be instance or class_aware"),
            (self.trainable in ("all", "classifier"), "trainable must be all or classifier"),
            (self.rho >= 0, "rho must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


#: the published recipe of each kind (trajectory_methods.md §1.1-1.3); config keys override them
KIND_DEFAULTS: dict[str, dict[str, Any]] = {
    "mtt": {"optimizer": "sgd"},
    "datm": {"optimizer": "gsam"},
    "damed_rep": {"optimizer": "gsam", "weight_decay": 5e-3},
    "damed_cls": {"optimizer": "gsam", "epochs": 10, "sampler": "class_aware",
                  "trainable": "classifier", "init_from": "damed_rep", "maxnorm": True},
}
KINDS = tuple(KIND_DEFAULTS)


def expert_config(kind: str, overrides: dict[str, Any] | None = None) -> ExpertConfig:
    """The typed config of `kind`: KIND_DEFAULTS[kind] updated with `overrides` (unknown keys raise)."""
    if kind not in KIND_DEFAULTS:
        raise ConfigError(f"unknown expert kind '{kind}'. Known kinds: {', '.join(KINDS)}")
    cfg = from_dict(ExpertConfig, {**KIND_DEFAULTS[kind], **(overrides or {})},
                    where=f"experts.{kind}")
    if cfg.init_from is not None and cfg.init_from not in KIND_DEFAULTS:
        raise ConfigError(f"experts.{kind}.init_from names unknown kind '{cfg.init_from}'")
    return cfg


def expert_seed(kind: str, cfg: ExpertConfig, index: int) -> int:
    return derive_seed("expert", kind, int(cfg.seed), int(index))


def _batches(cfg: ExpertConfig, n: int, sampler: ClassAwareSampler | None,
             g: torch.Generator) -> list[torch.Tensor]:
    order = sampler.epoch() if sampler is not None else torch.randperm(n, generator=g)
    return list(torch.split(order, cfg.batch_size))


def train_expert(data: PreparedData, spec: ModelSpec, cfg: ExpertConfig, kind: str, index: int,
                 device: torch.device | str, init: torch.Tensor | None = None,
                 dsa_strategy: str = "color_crop_cutout_flip_scale_rotate",
                 ckpt: Checkpointer | None = None) -> tuple[torch.Tensor, float]:
    """Train expert `index` of `kind` on the LT training split; returns ([E+1, P] float32 CPU
    snapshots, final balanced-test top-1). `init` (a flat vector) replaces the seeded init.
    `ckpt` checkpoints after epochs (model, optimiser, sampler, generators, snapshots so far); a
    killed run resumed from it ends bit-identical on CPU (tests/unit/test_resume_training.py)."""
    device = torch.device(device)
    seed = expert_seed(kind, cfg, index)
    model = build_model(spec, seed).to(device)
    fmt = preferred_memory_format(model, device)  # contiguous for instance norm (GroupNorm)
    model = model.to(memory_format=fmt)
    if init is not None:
        load_flat_parameters(model, init.to(device))
    model.train()
    slice_size = micro_batch_size(model, device)
    forward = compiled(model)  # runtime.compile (acceleration.py); `model` is what is trained
    cls_only = cfg.trainable == "classifier"
    classifier_start(model)  # asserts the last two tensors are the classifier
    if cls_only:
        for p in model.parameters():
            p.requires_grad_(False)
        for p in model.classifier.parameters():
            p.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    base = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    gsam = GSAM(params, base, cfg.rho, cfg.gsam_alpha, cfg.adaptive) if cfg.optimizer == "gsam" else None
    maxnorm = MaxNorm(cfg.maxnorm_thresh) if cfg.maxnorm else None
    if maxnorm is not None:
        maxnorm(model.classifier.weight.data)  # fixes tau on the starting classifier (§1.3)

    x_all = data.train_images.to(device)
    y_all = data.train_labels.to(device)
    g_order = generator("expert-order", kind, cfg.seed, index)
    g_aug = generator("expert-dsa", kind, cfg.seed, index)
    sampler = (ClassAwareSampler(data.train_labels, data.num_classes, cfg.samples_per_class, g_order)
               if cfg.sampler == "class_aware" else None)
    dsa_params = DSAParams(strategy=dsa_strategy)
    snapshots = [flatten_parameters(model)]
    ckpt = ckpt or disabled_checkpointer()
    ckpt.track(model=model, optimizer=base, g_order=g_order, g_aug=g_aug, snapshots=snapshots)
    if sampler is not None:
        ckpt.track(sampler=sampler)
    start = ckpt.resume()  # MaxNorm's tau was fixed above from the same starting weights
    progress = Progress(cfg.epochs, f"expert {kind} {index}").resumed(start)
    for epoch in range(start, cfg.epochs):
        loss_sum, seen = 0.0, 0
        for idx in _batches(cfg, len(y_all), sampler, g_order):
            idx = idx.to(device)
            x = x_all[idx]
            if cfg.dsa:
                x = dsa(x, dsa_params, generator=g_aug)
            x = x.contiguous(memory_format=fmt)
            y = y_all[idx]
            if cls_only:  # frozen backbone: features once, only the classifier sees gradients
                with torch.no_grad():
                    feats = model.embed(x)

                def loss_on(sl: slice, feats=feats, y=y) -> torch.Tensor:
                    return F.cross_entropy(model.classifier(feats[sl]), y[sl])
            else:

                def loss_on(sl: slice, x=x, y=y) -> torch.Tensor:
                    with autocast(device):  # runtime.amp: bfloat16 forward on CUDA only
                        out = forward(x[sl]).float()
                    return F.cross_entropy(out, y[sl])

            n_batch = len(idx)

            def backward(_fn=None, loss_on=loss_on, n=n_batch) -> torch.Tensor:
                # cache-sized slices on CPU, the same mean-loss gradient (microbatch.py)
                return sliced_backward(loss_on, n, None if cls_only else slice_size)

            if gsam is not None:
                loss = gsam.step(lambda: loss_on(slice(None)), backward=backward)
            else:
                base.zero_grad(set_to_none=True)
                loss = backward()
                base.step()
            if maxnorm is not None:
                maxnorm(model.classifier.weight.data)
            loss_sum += float(loss.detach()) * len(idx)
            seen += len(idx)
        snapshots.append(flatten_parameters(model))
        progress.step(loss=loss_sum / max(seen, 1))
        ckpt.step(epoch + 1)
    acc = test_accuracy(model, data, device, cfg.test_subset)
    log.info("expert %s %d: test top-1 %.4f", kind, index, acc)
    return torch.stack(snapshots), acc


@torch.no_grad()
def test_accuracy(model: torch.nn.Module, data: PreparedData, device: torch.device,
                  subset: int = 0, batch_size: int = 512) -> float:
    """Top-1 on the balanced test split (or a fixed seeded subset of `subset` images), eval mode."""
    images, labels = data.test_images, data.test_labels
    if 0 < subset < len(labels):
        pick = torch.randperm(len(labels), generator=generator("expert-test-subset"))[:subset]
        images, labels = images[pick], labels[pick]
    model.eval()
    batch_size = inference_batch_size(device, batch_size)
    correct = 0
    for i in range(0, len(labels), batch_size):
        out = model(images[i:i + batch_size].to(device))
        correct += int((out.argmax(1).cpu() == labels[i:i + batch_size]).sum())
    model.train()
    return correct / max(len(labels), 1)
