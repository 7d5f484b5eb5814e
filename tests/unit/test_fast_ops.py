"""The ConvNet's 2x2 average pool (models/fast_ops.py) against torch's: the same values, gradients
and second derivatives (up to summation order), float64 gradcheck/gradgradcheck, odd sizes,
channels-last inputs, and torch.func.vmap."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

from ltdistill.models import ModelSpec, build_model
from ltdistill.models.fast_ops import AvgPool2x2


@pytest.mark.parametrize("shape", [(2, 3, 6, 8), (2, 3, 7, 5)])
def test_pool_equals_torch_to_second_order(shape):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
    pool = AvgPool2x2()
    assert gradcheck(pool, (x,)) and gradgradcheck(pool, (x,))

    def first_and_second(fn):
        # a nonlinear use, so the second derivative depends on the pool's adjoint
        y = fn(x.tanh())
        w = torch.linspace(-1, 1, y.numel(), dtype=torch.float64).view_as(y)
        (gx,) = torch.autograd.grad((y * w).pow(2).sum(), x, create_graph=True)
        (hx,) = torch.autograd.grad(gx.pow(2).sum(), x)
        return y, gx, hx

    ours, ref = first_and_second(pool), first_and_second(lambda t: F.avg_pool2d(t, 2, 2))
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # odd trailing rows/columns are dropped by the forward and get zero gradient
    (grad,) = torch.autograd.grad(pool(x).sum(), x)
    assert grad[..., : shape[2] // 2 * 2, : shape[3] // 2 * 2].eq(0.25).all()
    if shape[2] % 2:
        assert grad[..., -1, :].eq(0).all()


def test_convnet_uses_it_and_matches_the_stock_pool():
    spec = ModelSpec("convnet3", 1, 10, 28, width=16)
    fast, stock = build_model(spec, seed=0), build_model(spec, seed=0)
    assert sum(isinstance(m, AvgPool2x2) for m in fast.modules()) == 3
    for i, m in enumerate(stock.features):
        if isinstance(m, AvgPool2x2):
            stock.features[i] = torch.nn.AvgPool2d(2, 2)
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 3, 5, 9])
    grads = []
    for net in (fast, stock):
        loss = F.cross_entropy(net(x), y)
        grads.append(torch.autograd.grad(loss, list(net.parameters())))
    # float summation order only (conv biases before the norm have a zero gradient up to noise,
    # so the tolerance is scaled by the largest gradient of the network)
    scale = max(float(b.abs().max()) for b in grads[1])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6 * scale)


def test_pool_under_vmap_and_grad():
    x = torch.randn(3, 2, 4, 6, 6, generator=torch.Generator().manual_seed(2))
    pool = AvgPool2x2()
    per_sample = torch.func.vmap(torch.func.grad(lambda t: pool(t).pow(2).sum()))(x)
    expected = torch.stack([torch.autograd.grad(F.avg_pool2d(t.requires_grad_(True), 2).pow(2)
                                                .sum(), t)[0] for t in x.clone()])
    torch.testing.assert_close(per_sample, expected)


def test_channels_last_input_takes_the_stock_pool():
    x = torch.randn(2, 3, 6, 6).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    y = AvgPool2x2()(x)
    assert "AvgPool2D" in type(y.grad_fn).__name__
    torch.testing.assert_close(y, F.avg_pool2d(x, 2, 2))
