"""ResNet-18 with the CIFAR stem (conv3x3/s1, no max-pool; stride-2 stem at 64 px), BatchNorm by
default or instance norm = GroupNorm(C, C), adaptive global average pooling and one Linear head."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from . import MODELS, ModelSpec
from .norms import make_norm


def _down(size: int, stride: int) -> int:
    """Spatial size after a conv3x3 with padding 1 (or conv1x1, padding 0) and this stride."""
    return (size - 1) // stride + 1


class BasicBlock(nn.Module):
    """conv3x3(s) -> norm -> ReLU -> conv3x3 -> norm, plus the shortcut, then ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, norm: str, size_out: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.norm1 = make_norm(norm, out_ch, size_out)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1, bias=False)
        self.norm2 = make_norm(norm, out_ch, size_out)
        if stride != 1 or in_ch != out_ch:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                make_norm(norm, out_ch, size_out),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: B x in_ch x H x W -> B x out_ch x H/s x W/s
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    WIDTHS = (64, 128, 256, 512)
    STRIDES = (1, 2, 2, 2)

    def __init__(self, channels: int, num_classes: int, image_size: int,
                 norm: str = "batch") -> None:
        super().__init__()
        stem_stride = 2 if image_size >= 64 else 1  # DATM ResNet18_Tiny: stride-2 stem at 64 px
        size = _down(image_size, stem_stride)
        self.stem = nn.Sequential(
            nn.Conv2d(channels, 64, 3, stride=stem_stride, padding=1, bias=False),
            make_norm(norm, 64, size),
            nn.ReLU(inplace=True),
        )
        stages: list[nn.Module] = []
        in_ch = 64
        for width, stride in zip(self.WIDTHS, self.STRIDES, strict=True):
            size = _down(size, stride)
            stages.append(nn.Sequential(BasicBlock(in_ch, width, stride, norm, size),
                                        BasicBlock(width, width, 1, norm, size)))
            in_ch = width
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = in_ch
        self.classifier = nn.Linear(in_ch, num_classes)  # registered last

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        # x: B x C x H x W -> B x 512
        return self.pool(self.layers(self.stem(x))).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


def _build(spec: ModelSpec) -> ResNet18:
    return ResNet18(spec.channels, spec.num_classes, spec.image_size, spec.norm or "batch")


MODELS.add("resnet18", _build)
