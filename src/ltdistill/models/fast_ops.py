"""2x2 average pooling that is fast on CPU and cheaply differentiable to any order.

ConvNet-D pools after every block. On CPU PyTorch's `avg_pool2d` measured 3.7 ms per call on a
32x32x32x32 tensor (1 core) where two strided adds take 0.6 ms, and its backward zero-fills and
scatters; in the width-32 evaluation training that dominates the default grid the pool and its
backward took ~24% of a step. Gradient matching (DC, DSA) and trajectory matching (MTT, DATM,
DAMED) also differentiate the backward itself. Here the forward is two strided adds, the backward
an expand of v / 4 (the adjoint), and the backward of that the forward again: a linear map and its
adjoint, to any order. Values equal the stock op's up to float summation order (1 ulp);
tests/unit/test_fast_ops.py compares values, gradients and second derivatives and runs
gradcheck/gradgradcheck in float64. Channels-last tensors keep the stock op.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _pool2x2(x: torch.Tensor) -> torch.Tensor:
    """The mean of each 2x2 block (odd trailing rows/columns dropped) as two strided adds: rows
    first, then columns. On 1 core 6x faster than `F.avg_pool2d` at 32x32x32x32 (0.6 vs 3.7 ms;
    the sum is ((a + c) + (b + d)) / 4 instead of a running sum: the same up to 1 ulp)."""
    h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    rows = x[..., 0:h:2, :w] + x[..., 1:h:2, :w]
    return (rows[..., 0::2] + rows[..., 1::2]).mul_(0.25)


def _upsample2x2(v: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The adjoint of the 2x2 mean: each value / 4 copied into its 2x2 block (columns, then rows:
    two expand copies, 2.7x faster than one 6-d expand), zero-padded to (h, w) when the pooled
    input had an odd size."""
    n, c, ph, pw = v.shape
    cols = (v * 0.25).unsqueeze(-1).expand(n, c, ph, pw, 2).reshape(n, c, ph, 2 * pw)
    out = cols.unsqueeze(3).expand(n, c, ph, 2, 2 * pw).reshape(n, c, 2 * ph, 2 * pw)
    if (2 * ph, 2 * pw) != (h, w):
        out = F.pad(out, (0, w - 2 * pw, 0, h - 2 * ph))
    return out


class _AvgPool(torch.autograd.Function):
    """P = the 2x2 mean; its backward P^T = `_upsample2x2` and the backward of that is P again: a
    linear map and its adjoint, to any order."""

    generate_vmap_rule = True  # torch.func.vmap (the multi-seed trainer) batches it

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return _pool2x2(x)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.hw = tuple(inputs[0].shape[-2:])

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        return _AvgPoolAdjoint.apply(dy, *ctx.hw)


class _AvgPoolAdjoint(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(v: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return _upsample2x2(v, h, w)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        pass

    @staticmethod
    def backward(ctx, u: torch.Tensor):
        return _AvgPool.apply(u), None, None


class AvgPool2x2(nn.AvgPool2d):
    """nn.AvgPool2d(2, 2) (same state, repr and isinstance) computed by `_pool2x2`, whose backward
    is `_upsample2x2` (v / 4 into each block, without the stock backward's zero fill and
    scatter) and differentiable again (DC/DSA and MTT differentiate through it)."""

    def __init__(self) -> None:
        super().__init__(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_contiguous():  # channels_last models (BatchNorm ConvNets): the stock kernels
            return F.avg_pool2d(x, 2, 2)
        return _AvgPool.apply(x)
