"""VGG-11 (DC family): conv3x3(bias) -> norm -> ReLU blocks with max-pools, instance norm
(GroupNorm(C, C)) by default, adaptive average pooling to 1x1 and one Linear(512 -> C) head."""

from __future__ import annotations

import torch
from torch import nn

from . import MODELS, ModelSpec
from .norms import make_norm

CFG_VGG11: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG(nn.Module):
    def __init__(self, channels: int, num_classes: int, image_size: int,
                 cfg: tuple[int | str, ...] = CFG_VGG11, norm: str = "instance") -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = channels
        # one-channel inputs: padding 3 in the first conv, so 28 px behaves like 32 px (DC VGG)
        size = image_size + (4 if channels == 1 else 0)
        first = True
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                size //= 2
                continue
            pad = 3 if (channels == 1 and first) else 1
            layers += [nn.Conv2d(in_ch, int(v), 3, padding=pad), make_norm(norm, int(v), size),
                       nn.ReLU(inplace=True)]
            in_ch = int(v)
            first = False
        if size < 1:
            raise ValueError(f"image size {image_size} is too small for VGG")
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)  # 1x1 at 32 px (identity), 2x2 -> 1x1 at 64 px
        self.feature_dim = in_ch
        self.classifier = nn.Linear(in_ch, num_classes)  # registered last

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        # x: B x C x H x W -> B x 512
        return self.pool(self.features(x)).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


def _build(spec: ModelSpec) -> VGG:
    return VGG(spec.channels, spec.num_classes, spec.image_size, CFG_VGG11,
               spec.norm or "instance")


MODELS.add("vgg11", _build)
