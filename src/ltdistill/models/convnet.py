"""ConvNet-D (DC/MTT family): D blocks of conv3x3(width) -> norm -> ReLU -> avgpool2, then one
Linear. Instance norm is GroupNorm(C, C). One-channel inputs use padding 3 in the first conv so
28 px behaves like 32 px."""

from __future__ import annotations

import torch
from torch import nn
from torch._C._functorch import is_functorch_wrapped_tensor

from . import MODELS, ModelSpec, fused_block, native
from .fast_ops import AvgPool2x2, InstanceNorm
from .norms import make_norm


class ConvNet(nn.Module):
    #: Set by the exact unrolls of trajectory matching (`FlatNet.keeping_less`): every conv ->
    #: instance norm -> ReLU -> pool block runs as one node with a small saved state
    #: (`fused_block`), on CPU tensors with gradients outside torch.func transforms; elsewhere the
    #: stock modules run.
    fused_blocks = False

    def __init__(self, channels: int, num_classes: int, image_size: int, width: int = 128,
                 depth: int = 3, norm: str = "instance") -> None:
        super().__init__()
        layers: list[nn.Module] = []
        size = image_size + (4 if channels == 1 else 0)  # padding 3 on 1-channel input
        in_ch = channels
        for d in range(depth):
            pad = 3 if (channels == 1 and d == 0) else 1
            layers += [nn.Conv2d(in_ch, width, 3, padding=pad), make_norm(norm, width, size),
                       nn.ReLU(inplace=True), AvgPool2x2()]
            in_ch = width
            size //= 2
        self.features = nn.Sequential(*layers)
        self.feature_dim = width * size * size
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def _fusable(self, x: torch.Tensor) -> bool:
        if not (self.fused_blocks and fused_block.ENABLED and torch.is_grad_enabled()
                and x.device.type == "cpu" and isinstance(self.features[1], InstanceNorm)):
            return False
        conv = self.features[0]
        wrapped = is_functorch_wrapped_tensor(x) or is_functorch_wrapped_tensor(conv.weight)
        return not wrapped and (x.requires_grad or conv.weight.requires_grad)

    def native_blocks(self) -> bool:
        """Whether first-order training of this network on CPU runs the `native` kernels."""
        return isinstance(self.features[1], InstanceNorm) and native.available()

    def _native(self, x: torch.Tensor) -> bool:
        """First-order training and gradient-free passes on CPU: `native` kernels per block
        (`native.usable` checks the policy, the tensor and whether the kernels are loaded)."""
        return (not self.fused_blocks and isinstance(self.features[1], InstanceNorm)
                and native.usable(x, self.features[0].weight))

    def _native_embed(self, x: torch.Tensor) -> torch.Tensor:
        """Blocks on the native kernels; activations channels_last (`native.CHANNELS_LAST`), where
        oneDNN's convolutions run without converting to and from its blocked layout."""
        f, cl = self.features, native.CHANNELS_LAST
        for i in range(0, len(f), 4):
            conv, norm = f[i], f[i + 1]
            pad = conv.padding[0]
            if conv.in_channels <= native.DIRECT_CONV_CHANNELS and not x.requires_grad:
                x = native.conv_norm_relu_pool(x, conv.weight, conv.bias, norm.weight, norm.bias,
                                               pad, norm.eps, channels_last=cl)
            else:
                if cl and conv.in_channels > 1:
                    x = x.contiguous(memory_format=torch.channels_last)
                x = native.norm_relu_pool(conv(x), norm.weight, norm.bias, norm.eps)
        return x.flatten(1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        if self._native(x):
            return self._native_embed(x)
        if not self._fusable(x):
            return self.features(x).flatten(1)
        f = self.features
        for i in range(0, len(f), 4):
            conv, norm = f[i], f[i + 1]
            x = fused_block.conv_block(x, conv.weight, conv.bias, norm.weight, norm.bias,
                                       conv.padding[0], norm.eps)
        return x.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


def _builder(depth: int):
    def build(spec: ModelSpec) -> ConvNet:
        return ConvNet(spec.channels, spec.num_classes, spec.image_size, spec.width, depth,
                       spec.norm or "instance")

    return build


for _depth in (3, 4, 5):
    MODELS.add(f"convnet{_depth}", _builder(_depth))


def _auto_depth(spec: ModelSpec) -> ConvNet:
    """`convnet`: depth from the resolution, as the papers use it (3 up to 32 px, 4 up to 64 px,
    else 5)."""
    depth = 3 if spec.image_size <= 32 else 4 if spec.image_size <= 64 else 5
    return _builder(depth)(spec)


MODELS.add("convnet", _auto_depth)
