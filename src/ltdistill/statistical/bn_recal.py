"""Fair BN recalibration (RLDD, statistical_methods.md §1.4).

One forward-only pass of the frozen observer over the whole LT training set. For every BN layer l
(in `named_modules` order), class c and batch t, with B^c_t class-c samples in the batch and
N^c_{t-1} seen before:

    α = B^c_t / (N^c_{t-1} + B^c_t),   μ^c ← (1 - α) μ^c + α μ̂^c_t,   σ²^c ← (1 - α) σ²^c + α σ̂²^c_t

where μ̂, σ̂² are the per-channel mean and (biased) variance of the BN **input** over the class-c
samples of the batch, pooling samples and spatial positions; classes absent from a batch are
skipped (α = 0). The mean is the exact per-class mean whatever the batch order; the `paper`
variance is the sample-weighted average of per-batch class variances. In the same pass Σx and Σx²
give the exact `pooled` per-class variance. Global targets are unweighted class averages:
`paper` / `pooled` average the per-class variances; `mixture` adds the between-class spread
(1/C) Σ_c (μ_c - μ̄)² to the pooled average. Everything is accumulated in float64.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..io import load_tensors, save_tensors
from ..progress import Progress

BN_VARS = ("paper", "pooled", "mixture")


def bn_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every BatchNorm layer of the model, in module order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@contextmanager
def record_bn_inputs(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect the input of every BN layer on each forward (cleared by the caller)."""
    store: list[torch.Tensor] = []
    handles = [m.register_forward_pre_hook(lambda _m, args: store.append(args[0]))
               for _, m in bn_layers(model)]
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


@dataclass
class BNStats:
    """Per-layer per-class BN-input statistics: mean, the paper and pooled variances (C x ch,
    float64), and the class counts."""

    layer_names: list[str]
    counts: torch.Tensor  # (C,) int64
    mean: list[torch.Tensor]
    var_paper: list[torch.Tensor]
    var_pooled: list[torch.Tensor]

    @property
    def present(self) -> torch.Tensor:
        return self.counts > 0

    def class_targets(self, bn_var: str = "paper") -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer (μ^c, σ²^c), both C x ch float32; `mixture` uses the pooled class variance."""
        _check_var(bn_var)
        var = self.var_paper if bn_var == "paper" else self.var_pooled
        return [(m.float(), v.float()) for m, v in zip(self.mean, var, strict=True)]

    def global_targets(self, bn_var: str = "paper") -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer (μ, σ²) (ch, float32): unweighted averages over the classes seen."""
        _check_var(bn_var)
        keep = self.present
        out = []
        for i, m in enumerate(self.mean):
            mu_c = m[keep]
            var_c = (self.var_paper[i] if bn_var == "paper" else self.var_pooled[i])[keep]
            mu = mu_c.mean(0)
            var = var_c.mean(0)
            if bn_var == "mixture":
                var = var + (mu_c - mu).pow(2).mean(0)
            out.append((mu.float(), var.float()))
        return out

    def save(self, path: str | Path, meta: dict | None = None) -> None:
        tensors = {"counts": self.counts}
        for i in range(len(self.layer_names)):
            tensors[f"l{i}.mean"] = self.mean[i]
            tensors[f"l{i}.var_paper"] = self.var_paper[i]
            tensors[f"l{i}.var_pooled"] = self.var_pooled[i]
            for mode in BN_VARS:  # the global targets too, so the file is self-describing
                mu, var = self.global_targets(mode)[i]
                tensors[f"l{i}.global_var_{mode}"] = var
            tensors[f"l{i}.global_mean"] = mu
        save_tensors(path, tensors, {"layer_names": self.layer_names, **(meta or {})})

    @classmethod
    def load(cls, path: str | Path) -> tuple[BNStats, dict]:
        t, meta = load_tensors(path)
        names = list(meta["layer_names"])
        k = range(len(names))
        return cls(names, t["counts"], [t[f"l{i}.mean"] for i in k],
                   [t[f"l{i}.var_paper"] for i in k], [t[f"l{i}.var_pooled"] for i in k]), meta


def _check_var(bn_var: str) -> None:
    if bn_var not in BN_VARS:
        raise ValueError(f"bn_var must be one of {BN_VARS}, got '{bn_var}'")


@torch.no_grad()
def recalibrate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                batch_size: int = 256, device: torch.device | str = "cpu",
                order: torch.Tensor | None = None,
                augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
                label: str = "bn-recal") -> BNStats:
    """One pass of the frozen `model` (eval mode, untouched) over `images` in `order` (default:
    stored order), returning the per-class BN-input statistics."""
    device = torch.device(device)
    layers = bn_layers(model)
    if not layers:
        raise ValueError("the observer has no BatchNorm layer; train it with norm: batch")
    was_training = model.training
    model.eval()
    n = int(images.shape[0])
    order = torch.arange(n) if order is None else order
    c = num_classes
    count = torch.zeros(c, dtype=torch.float64)
    mean: list[torch.Tensor] = []
    var_p: list[torch.Tensor] = []
    s1: list[torch.Tensor] = []
    s2: list[torch.Tensor] = []
    hws: list[int] = []
    progress = Progress((n + batch_size - 1) // batch_size, label)
    try:
        with record_bn_inputs(model) as store:
            for start in range(0, n, batch_size):
                idx = order[start:start + batch_size]
                x = images[idx].to(device, torch.float32)
                y = labels[idx].to(torch.long)
                if augment is not None:
                    x = augment(x)
                store.clear()
                model(x)
                b_c = torch.bincount(y, minlength=c).to(torch.float64)  # (C,)
                alpha = torch.where(b_c > 0, b_c / (count + b_c).clamp_min(1), torch.zeros_like(b_c))
                for li, inp in enumerate(store):
                    xd = inp.detach().to("cpu", torch.float64)
                    hw = xd[0, 0].numel()
                    ps1 = xd.flatten(2).sum(2)  # B x ch
                    ps2 = xd.flatten(2).pow(2).sum(2)
                    cs1 = torch.zeros(c, ps1.shape[1], dtype=torch.float64).index_add_(0, y, ps1)
                    cs2 = torch.zeros(c, ps1.shape[1], dtype=torch.float64).index_add_(0, y, ps2)
                    denom = (b_c * hw).clamp_min(1).view(-1, 1)
                    mu_hat = cs1 / denom
                    var_hat = (cs2 / denom - mu_hat.pow(2)).clamp_min(0)
                    if li == len(mean):
                        zeros = torch.zeros_like(mu_hat)
                        mean.append(zeros.clone())
                        var_p.append(zeros.clone())
                        s1.append(zeros.clone())
                        s2.append(zeros.clone())
                        hws.append(hw)
                    a = alpha.view(-1, 1)
                    mean[li] = (1 - a) * mean[li] + a * mu_hat
                    var_p[li] = (1 - a) * var_p[li] + a * var_hat
                    s1[li] += cs1
                    s2[li] += cs2
                count += b_c
                progress.step()
    finally:
        model.train(was_training)
    var_pooled = []
    for li in range(len(mean)):
        elements = (count * hws[li]).clamp_min(1).view(-1, 1)  # N_c * HW of this layer
        mu_pooled = s1[li] / elements
        var_pooled.append((s2[li] / elements - mu_pooled.pow(2)).clamp_min(0))
    return BNStats([nm for nm, _ in layers], count.long(), mean, var_p, var_pooled)


def running_targets(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The observer's own BN buffers (SRe2L; RLDD ablation `bn_targets: running`)."""
    return [(m.running_mean.detach().float().cpu(), m.running_var.detach().float().cpu())
            for _, m in bn_layers(model)]
