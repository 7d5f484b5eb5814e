"""Normalisation layers by name: instance = GroupNorm(C, C) (affine), batch, layer, group, none."""

from __future__ import annotations

from torch import nn

from .fast_ops import InstanceNorm

NORMS = ("instance", "batch", "layer", "group", "none")


def make_norm(norm: str, channels: int, spatial: int | None = None) -> nn.Module:
    if norm == "instance":
        return InstanceNorm(channels)  # nn.GroupNorm(C, C) with a fast double backward on CPU
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "layer":
        if spatial is None:
            raise ValueError("layer norm needs the spatial size")
        return nn.LayerNorm([channels, spatial, spatial], elementwise_affine=True)
    if norm == "group":
        return nn.GroupNorm(4, channels, affine=True)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm '{norm}'. Known norms: {', '.join(NORMS)}")
