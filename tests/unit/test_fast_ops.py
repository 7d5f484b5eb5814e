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


# --------------------------------------------------------------------------- instance norm

def _gn(x, w, b):
    return F.group_norm(x, x.shape[1], w, b, 1e-5)


def _norm_inputs(dtype, seed=0, shape=(3, 4, 5, 6)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=dtype).requires_grad_(True)
    w = (torch.rand(shape[1], generator=g, dtype=dtype) + 0.5).requires_grad_(True)
    b = torch.randn(shape[1], generator=g, dtype=dtype).requires_grad_(True)
    return g, x, w, b


@pytest.mark.parametrize("use", ["all", "gx_only", "params_only"])
def test_instance_norm_second_derivatives_equal_groupnorm(use):
    """d/d(x, w, b) of a function of the first derivatives (what MTT and gradient matching
    differentiate), with ReLU after the norm as in the ConvNet; 'gx_only' and 'params_only' leave
    some incoming gradients undefined (None) in the closed-form backward."""
    from ltdistill.models.fast_ops import _InstanceNorm

    g, x, w, b = _norm_inputs(torch.float64)
    up = torch.randn(x.shape, generator=g, dtype=torch.float64)
    uw, ub = (torch.randn(x.shape[1], generator=g, dtype=torch.float64) for _ in range(2))

    def second(norm):
        y = torch.relu(norm(x, w, b))
        gx, gw, gb = torch.autograd.grad((y * up).pow(2).sum(), (x, w, b), create_graph=True)
        loss = {"all": (gx * up).sum() + (gw * uw).sum() + (gb * ub).sum(),
                "gx_only": (gx * up).sum(), "params_only": (gw * uw).sum() + gb.pow(2).sum()}[use]
        return (y, gx, gw, gb, *torch.autograd.grad(loss, (x, w, b), allow_unused=True))

    ours = second(lambda x, w, b: _InstanceNorm.apply(x, w, b, 1e-5))
    ref = second(_gn)
    for a, r in zip(ours, ref, strict=True):
        if r is None:
            assert a is None or not a.abs().any()
        else:
            torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-10)


def test_instance_norm_gradcheck_and_gradgradcheck():
    from ltdistill.models.fast_ops import _InstanceNorm

    _, x, w, b = _norm_inputs(torch.float64, seed=1, shape=(2, 3, 4, 4))
    fn = lambda x, w, b: _InstanceNorm.apply(x, w, b, 1e-5)  # noqa: E731
    assert gradcheck(fn, (x, w, b)) and gradgradcheck(fn, (x, w, b))


def test_instance_norm_layer_is_groupnorm_and_falls_back_to_the_stock_op():
    from ltdistill.models import fast_ops
    from ltdistill.models.fast_ops import InstanceNorm

    layer = InstanceNorm(4)
    assert isinstance(layer, torch.nn.GroupNorm) and layer.num_groups == 4
    assert set(layer.state_dict()) == {"weight", "bias"}
    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    assert type(layer(x).grad_fn).__name__ == "_InstanceNormBackward"  # the fast path
    stock = {  # every other case takes torch's GroupNorm (same values)
        "no grad needed": x.detach(),
        "channels last": x.contiguous(memory_format=torch.channels_last),
        "3-d input": x[:, :, 0].detach().requires_grad_(True),
    }
    for why, t in stock.items():
        y = layer(t)
        assert y.grad_fn is None or "NativeGroupNorm" in type(y.grad_fn).__name__, why
        torch.testing.assert_close(y, F.group_norm(t, 4, layer.weight, layer.bias), msg=why)
    fast_ops.FAST_INSTANCE_NORM = False
    try:
        assert "NativeGroupNorm" in type(layer(x).grad_fn).__name__
    finally:
        fast_ops.FAST_INSTANCE_NORM = True
    # torch.func transforms (the vmapped seeds, DC's vmapped class gradients) take the stock op
    xs = torch.randn(3, 2, 4, 5, 5)
    per_sample = torch.func.vmap(torch.func.grad(
        lambda t: torch.func.functional_call(layer, dict(layer.named_parameters()), (t,))
        .pow(3).sum()))(xs)
    expected = torch.stack([torch.autograd.grad(_gn(t.requires_grad_(True), layer.weight,
                                                    layer.bias).pow(3).sum(), t)[0]
                            for t in xs.clone()])
    torch.testing.assert_close(per_sample, expected)


def test_unrolled_student_gradient_matches_the_stock_norm():
    """An MTT-style unroll through the ConvNet: the gradient w.r.t. the synthetic images through
    two create_graph steps is the stock layer's, in float32, up to summation order."""
    from ltdistill.models import fast_ops

    spec = ModelSpec("convnet3", 1, 4, 12, width=8)
    g = torch.Generator().manual_seed(3)
    images = torch.randn(6, 1, 12, 12, generator=g)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    net = build_model(spec, seed=0)
    theta0 = {k: v.detach() for k, v in net.named_parameters()}

    def image_gradient() -> torch.Tensor:
        syn = images.clone().requires_grad_(True)
        theta = {k: v.clone().requires_grad_(True) for k, v in theta0.items()}
        for _ in range(2):
            out = torch.func.functional_call(net, theta, (syn,))
            grads = torch.autograd.grad(F.cross_entropy(out, labels), list(theta.values()),
                                        create_graph=True)
            theta = {k: v - 0.1 * gk for (k, v), gk in zip(theta.items(), grads, strict=True)}
        loss = sum((v - theta0[k]).pow(2).sum() for k, v in theta.items())
        return torch.autograd.grad(loss, syn)[0]

    fast = image_gradient()
    fast_ops.FAST_INSTANCE_NORM = False
    try:
        stock = image_gradient()
    finally:
        fast_ops.FAST_INSTANCE_NORM = True
    assert fast.abs().max() > 0
    torch.testing.assert_close(fast, stock, rtol=1e-4, atol=1e-5 * float(stock.abs().max()))
