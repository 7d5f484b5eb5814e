"""Networks: a registry of builders and build_model(), which seeds every initialisation."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from ..registry import Registry

#: builder signature: (spec: ModelSpec) -> nn.Module with .embed(x) and a final .classifier Linear
MODELS: Registry = Registry("model")


@dataclass(frozen=True)
class ModelSpec:
    """Architecture identity. `norm=None` means the architecture's default norm."""

    arch: str
    channels: int
    num_classes: int
    image_size: int
    width: int = 128
    norm: str | None = None

    def with_classes(self, num_classes: int) -> ModelSpec:
        return replace(self, num_classes=num_classes)


def build_model(spec: ModelSpec, seed: int | None = None) -> nn.Module:
    """Build a freshly initialised network; with `seed` the initialisation is reproducible
    without touching the global RNG state seen by the caller."""
    from . import alexnet, convnet, resnet, vgg  # noqa: F401  (register builders)

    builder = MODELS.get(spec.arch)
    if seed is None:
        return builder(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return builder(spec)


def classifier_start(model: nn.Module) -> int:
    """Number of parameters before the classifier (the last two tensors must be its weight and bias)."""
    named = list(model.named_parameters())
    (wn, _w), (bn, _b) = named[-2], named[-1]
    if not (wn.startswith("classifier.") and bn.startswith("classifier.")):
        raise ValueError(f"the last two parameters must belong to the classifier, got {wn}, {bn}")
    return sum(p.numel() for _, p in named[:-2])


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def preferred_memory_format(model: nn.Module, device: torch.device | str,
                            channels_last: bool | None = None) -> torch.memory_format:
    """The faster memory format for training `model` on `device`.

    channels_last only pays on CPU, and only without GroupNorm: the instance norm of the
    distillation ConvNets is GroupNorm(C, C), whose CPU kernels run 3-4x slower on channels-last
    tensors (forward + backward of GroupNorm(32, 32) on 100x32x28x28: 26 ms contiguous, 95 ms
    channels-last here), which made whole ConvNet-3 training steps with DSA 2x slower. BatchNorm
    models (ResNet, VGG, the statistical observers) gain from it. `channels_last` True/False
    overrides the choice (still CPU only)."""
    if torch.device(device).type != "cpu":
        return torch.contiguous_format
    if channels_last is None:
        channels_last = not any(isinstance(m, nn.GroupNorm) for m in model.modules())
    return torch.channels_last if channels_last else torch.contiguous_format
