"""AlexNet (DC family, no normalisation by default): five convs with three max-pools and one
Linear(192*4*4 -> C); padding 4 in the first conv for one channel, stride 2 there at 64 px."""

from __future__ import annotations

import torch
from torch import nn

from . import MODELS, ModelSpec
from .norms import make_norm


class AlexNet(nn.Module):
    def __init__(self, channels: int, num_classes: int, image_size: int,
                 norm: str = "none") -> None:
        super().__init__()
        stride = 2 if image_size >= 64 else 1  # DATM res=64 variant keeps the 4x4 head
        pad = 4 if channels == 1 else 2
        s1 = (image_size + 2 * pad - 5) // stride + 1  # after conv1 (32 at 28/32/64 px)
        s2 = s1 // 2  # after pool 1 (conv2 keeps it)
        s3 = s2 // 2  # after pool 2 (conv3-5 keep it)
        s4 = s3 // 2  # after pool 3: 4
        if s4 < 1:
            raise ValueError(f"image size {image_size} is too small for AlexNet")

        def block(cin: int, cout: int, k: int, p: int, size: int, s: int = 1) -> list[nn.Module]:
            # default norm 'none' is an Identity with no parameters
            return [nn.Conv2d(cin, cout, k, stride=s, padding=p), make_norm(norm, cout, size),
                    nn.ReLU(inplace=True)]

        self.features = nn.Sequential(
            *block(channels, 128, 5, pad, s1, stride), nn.MaxPool2d(2, 2),
            *block(128, 192, 5, 2, s2), nn.MaxPool2d(2, 2),
            *block(192, 256, 3, 1, s3),
            *block(256, 192, 3, 1, s3),
            *block(192, 192, 3, 1, s3), nn.MaxPool2d(2, 2),
        )
        self.feature_dim = 192 * s4 * s4  # 192*4*4 = 3072
        self.classifier = nn.Linear(self.feature_dim, num_classes)  # registered last

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        # x: B x C x H x W -> B x 3072
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


def _build(spec: ModelSpec) -> AlexNet:
    return AlexNet(spec.channels, spec.num_classes, spec.image_size, spec.norm or "none")


MODELS.add("alexnet", _build)
