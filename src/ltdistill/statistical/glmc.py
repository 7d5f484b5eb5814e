"""Observer / teacher training for the recover-and-relabel family (statistical_methods.md §1.3).

`loss: glmc` is the GLMC form of RLDD's debiased expert loss ("Global and Local Mixture
Consistency Cumulative Learning for Long-tailed Visual Recognitions", Du et al., CVPR 2023):
- view 1 = MixUp and view 2 = CutMix of an instance-sampled batch with a class-rebalanced batch
  (sampler weight ∝ n_c^(-resample_weighting)), one λ ~ Beta(mix_alpha, mix_alpha) per step;
- two heads on the encoder features: `fc` (mixed CE) and `fc_cb` (mixed CE with class weights
  w_k ∝ n_k^(-q), Σ_k w_k = C), combined as (1 - (e/E)²)·CE(fc) + (e/E)²·CE_w(fc_cb) per view,
  summed over the two views;
- projector Linear(feat → proj_dim) and predictor Linear(proj_dim → proj_dim) with the SimSiam
  consistency -cos(p1, sg(z2)) - cos(p2, sg(z1)) (`stopgrad_on: z`; `p` gives the paper's eq. 5);
- total γ2·classification + γ1·consistency; inference head `fc_cb`.
`loss: ce` is the plain cross-entropy ablation ("w/o model debiasing", the SRe2L squeeze).

The trained expert is returned as the plain backbone whose `classifier` holds the inference head,
so every consumer loads it with `statistical.expert_io.load_expert_model`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import Checkpointer
from ..checkpoint import disabled as disabled_checkpointer
from ..config import from_dict
from ..models import ModelSpec, build_model, preferred_memory_format
from ..progress import Progress
from ..seeding import derive_seed, generator
from .augment import beta_sample, cutmix_box, paste_box, random_crop_pad, random_flip

LOSSES = ("glmc", "ce")


@dataclass(frozen=True)
class ExpertConfig:
    """One `experts:` entry of kind observer_* / teacher_* (defaults: statistical_methods.md §1.3)."""

    loss: str = "glmc"  # glmc | ce
    arch: str = "resnet18"  # resnet18 (CIFAR stem) | convnet... (with norm: batch)
    width: int = 128  # ConvNet width (ignored by ResNet-18)
    norm: str = "batch"  # the observer must contain BatchNorm
    epochs: int = 200
    batch_size: int = 64
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-3
    schedule: str = "cosine"  # cosine (per epoch) | constant
    label_weighting: float = 1.2  # q of the fc_cb class weights
    resample_weighting: float = 0.2  # exponent of the rebalanced sampler
    contrast_weight: float = 2.0  # γ1
    cls_weight: float = 1.0  # γ2
    mix_alpha: float = 1.0  # Beta(α, α) of MixUp / CutMix
    proj_dim: int = 128
    stopgrad_on: str = "z"  # z (GLMC / SimSiam) | p (paper eq. 5 literally)
    crop_padding: int = 4  # RandomCrop(size, padding) base augmentation
    flip: bool = True
    seed: int = 0  # combined with the kind name: observer and teacher are independently seeded
    bn_recal_batch_size: int = 256  # fair BN recalibration pass (observers)
    bn_recal_augment: bool = False  # crop + flip during the pass (EDC style); spec default off

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got '{self.loss}'")
        if self.norm != "batch":
            raise ValueError("observer/teacher networks must use norm: batch (BN statistics)")
        if self.stopgrad_on not in ("z", "p"):
            raise ValueError(f"stopgrad_on must be z or p, got '{self.stopgrad_on}'")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be cosine or constant, got '{self.schedule}'")
        for name in ("epochs", "batch_size", "proj_dim", "bn_recal_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.batch_size < 2:
            raise ValueError("batch_size must be >= 2 (BatchNorm in train mode)")


def expert_config(params: dict[str, Any] | None, dataset: str | None = None,
                  where: str = "experts") -> ExpertConfig:
    """Typed config from an `experts:` entry; an optional `per_dataset: {name: {...}}` block
    overrides keys for one dataset (e.g. GLMC's γ1 differs between CIFAR-10 and CIFAR-100)."""
    params = dict(params or {})
    per_dataset = params.pop("per_dataset", {}) or {}
    if dataset is not None:
        params.update(per_dataset.get(dataset, {}))
    return from_dict(ExpertConfig, params, where=where)


def expert_spec(cfg: ExpertConfig, channels: int, num_classes: int, image_size: int) -> ModelSpec:
    return ModelSpec(cfg.arch, channels, num_classes, image_size, width=cfg.width, norm=cfg.norm)


class GLMCNet(nn.Module):
    """Backbone (its `classifier` is the `fc` head) plus `fc_cb`, projector and predictor."""

    def __init__(self, backbone: nn.Module, num_classes: int, proj_dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        feat = int(backbone.feature_dim)
        self.fc_cb = nn.Linear(feat, num_classes)
        self.projector = nn.Linear(feat, proj_dim)
        self.predictor = nn.Linear(proj_dim, proj_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # x: B x C x H x W -> (fc logits, fc_cb logits, z, p)
        f = self.backbone.embed(x)
        z = self.projector(f)
        return self.backbone.classifier(f), self.fc_cb(f), z, self.predictor(z)

    def inference_backbone(self) -> nn.Module:
        """The backbone with fc_cb copied into its classifier (the inference head)."""
        with torch.no_grad():
            self.backbone.classifier.weight.copy_(self.fc_cb.weight)
            self.backbone.classifier.bias.copy_(self.fc_cb.bias)
        return self.backbone


# --- loss pieces (pure functions, unit-tested by hand) ---------------------------------------

def class_weights(counts: torch.Tensor | list[int], q: float) -> torch.Tensor:
    """w_k ∝ n_k^(-q), normalised so that Σ_k w_k = C."""
    n = torch.as_tensor(counts, dtype=torch.float64)
    w = n.pow(-q)
    return (w / w.sum() * len(n)).float()


def mixed_ce(logits: torch.Tensor, target: torch.Tensor,
             weights: torch.Tensor | None = None) -> torch.Tensor:
    """-(1/B) Σ_i Σ_k w_k y_ik log softmax(logits_i)_k for soft (mixed) targets y."""
    terms = target * F.log_softmax(logits, dim=1)
    if weights is not None:
        terms = terms * weights.to(terms).view(1, -1)
    return -terms.sum(dim=1).mean()


def consistency_loss(z1: torch.Tensor, p1: torch.Tensor, z2: torch.Tensor, p2: torch.Tensor,
                     stopgrad_on: str = "z") -> torch.Tensor:
    """-cos(p1, sg(z2)) - cos(p2, sg(z1)) (batch means); `p`: -cos(z1, sg(p2)) - cos(z2, sg(p1))."""
    if stopgrad_on == "z":
        a = F.cosine_similarity(p1, z2.detach(), dim=1).mean()
        b = F.cosine_similarity(p2, z1.detach(), dim=1).mean()
    else:
        a = F.cosine_similarity(z1, p2.detach(), dim=1).mean()
        b = F.cosine_similarity(z2, p1.detach(), dim=1).mean()
    return -(a + b)


def glmc_loss(out1: tuple[torch.Tensor, ...], out2: tuple[torch.Tensor, ...], y1: torch.Tensor,
              y2: torch.Tensor, weights: torch.Tensor, progress: float, contrast_weight: float,
              cls_weight: float = 1.0, stopgrad_on: str = "z") -> tuple[torch.Tensor, dict[str, float]]:
    """γ2·Σ_views[(1 - a)·CE(fc, y_v) + a·CE_w(fc_cb, y_v)] + γ1·consistency, a = progress²."""
    a = float(progress) ** 2
    fc1, cb1, z1, p1 = out1
    fc2, cb2, z2, p2 = out2
    cls = (1 - a) * (mixed_ce(fc1, y1) + mixed_ce(fc2, y2)) \
        + a * (mixed_ce(cb1, y1, weights) + mixed_ce(cb2, y2, weights))
    cons = consistency_loss(z1, p1, z2, p2, stopgrad_on)
    total = cls_weight * cls + contrast_weight * cons
    return total, {"cls": float(cls.detach()), "cons": float(cons.detach())}


def epoch_lr(cfg: ExpertConfig, epoch: int) -> float:
    if cfg.schedule == "constant":
        return cfg.lr
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * epoch / cfg.epochs))


# --- training ---------------------------------------------------------------------------------

def train_expert(images: torch.Tensor, labels: torch.Tensor, counts: list[int], spec: ModelSpec,
                 cfg: ExpertConfig, seed: int, device: torch.device | str = "cpu",
                 label: str = "expert", ckpt: Checkpointer | None = None) -> nn.Module:
    """Train one observer/teacher on the LT images (in their preprocessing space); returns the
    backbone (eval mode, on the CPU) whose classifier is the inference head. `ckpt` checkpoints
    after epochs (network with its heads, optimiser, generator); a killed run resumed from it
    ends bit-identical on CPU."""
    device = torch.device(device)
    n = int(images.shape[0])
    num_classes = spec.num_classes
    backbone = build_model(spec, derive_seed("expert-init", seed))
    net: nn.Module = backbone
    if cfg.loss == "glmc":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed("expert-heads", seed))
            net = GLMCNet(backbone, num_classes, cfg.proj_dim)
    net = net.to(device).train()
    fmt = preferred_memory_format(net, device)  # channels-last unless the net has GroupNorm
    net = net.to(memory_format=fmt)
    x_all = images.to(device, torch.float32)
    y_all = labels.to(device, torch.long)
    onehot = F.one_hot(y_all, num_classes).float()
    w_cls = class_weights(counts, cfg.label_weighting).to(device)
    sample_w = torch.as_tensor(counts, dtype=torch.float64).pow(-cfg.resample_weighting)[labels.cpu()]
    g = generator("expert-train", seed)
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay)
    batch = min(cfg.batch_size, n)
    ckpt = (ckpt or disabled_checkpointer()).track(net=net, optimizer=opt, g=g)

    def augment(x: torch.Tensor) -> torch.Tensor:
        x = random_crop_pad(x, g, cfg.crop_padding)
        x = random_flip(x, g) if cfg.flip else x
        return x.contiguous(memory_format=fmt)

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(derive_seed("expert-global", seed))
        start_epoch = ckpt.resume()  # restores the forked global RNG too
        progress = Progress(cfg.epochs, label).resumed(start_epoch)
        for ep in range(start_epoch, cfg.epochs):
            for group in opt.param_groups:
                group["lr"] = epoch_lr(cfg, ep)
            order = torch.randperm(n, generator=g)
            balanced = torch.multinomial(sample_w, n, replacement=True, generator=g)
            loss_sum, seen = 0.0, 0
            for start in range(0, n, batch):
                idx = order[start:start + batch]
                if len(idx) < 2:
                    continue  # BatchNorm cannot train on one sample
                idx_d = idx.to(device)
                if cfg.loss == "ce":
                    loss = F.cross_entropy(net(augment(x_all[idx_d])), y_all[idx_d])
                else:
                    jdx = balanced[start:start + len(idx)].to(device)
                    xi, xb = augment(x_all[idx_d]), augment(x_all[jdx])
                    yi, yb = onehot[idx_d], onehot[jdx]
                    lam = beta_sample(cfg.mix_alpha, g)
                    mix = (lam * xi + (1 - lam) * xb).contiguous(memory_format=fmt)
                    cut, lam_c = paste_box(xi, xb, cutmix_box(xi.shape[-2], xi.shape[-1], lam, g))
                    cut = cut.contiguous(memory_format=fmt)
                    loss, _ = glmc_loss(net(mix), net(cut), lam * yi + (1 - lam) * yb,
                                        lam_c * yi + (1 - lam_c) * yb, w_cls,
                                        ep / cfg.epochs, cfg.contrast_weight, cfg.cls_weight,
                                        cfg.stopgrad_on)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += float(loss.detach()) * len(idx)
                seen += len(idx)
            progress.step(loss=loss_sum / max(seen, 1), lr=epoch_lr(cfg, ep))
            ckpt.step(ep + 1)
    model = net.inference_backbone() if isinstance(net, GLMCNet) else net
    return model.cpu().to(memory_format=torch.contiguous_format).eval()
