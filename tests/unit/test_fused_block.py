"""The fused ConvNet block (models/fused_block.py) against the stock modules: float64
gradcheck/gradgradcheck, equal values and first and second derivatives, slicing over images, the
gradients the running backward does not need left uncomputed, and the MTT matching gradient of a
whole unroll (exact and segmented) equal to the stock network's."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

from ltdistill.methods.trajectory_core import (
    FlatNet,
    MatchSpec,
    Synthetic,
    Unroll,
    exact_match,
    hard_ce,
    segmented_match,
)
from ltdistill.models import ModelSpec, fused_block
from ltdistill.models.fused_block import conv_block


def _stock(x, k, c, w, b, pad):
    z = F.conv2d(x, k, c, padding=pad)
    return F.avg_pool2d(F.relu(F.group_norm(z, k.shape[0], w, b, 1e-5)), 2, 2)


def _inputs(seed, n=3, cin=2, cout=4, size=7, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cin, size, size, generator=g, dtype=dtype)
    k = torch.randn(cout, cin, 3, 3, generator=g, dtype=dtype)
    c = torch.randn(cout, generator=g, dtype=dtype)
    w = torch.rand(cout, generator=g, dtype=dtype) + 0.5
    b = torch.randn(cout, generator=g, dtype=dtype)
    return [t.requires_grad_(True) for t in (x, k, c, w, b)]


@pytest.fixture(params=[1 << 30, 1], ids=["one-slice", "slice-per-image"])
def chunk_bytes(request, monkeypatch):
    monkeypatch.setattr(fused_block, "CHUNK_BYTES", request.param)
    return request.param


@pytest.mark.parametrize("pad,size", [(1, 6), (3, 7)])
def test_gradcheck_to_second_order(chunk_bytes, pad, size):
    args = _inputs(0, size=size)

    def fn(*a):
        return conv_block(*a, pad, 1e-5)

    torch.testing.assert_close(fn(*args), _stock(*args, pad), rtol=1e-12, atol=1e-12)
    assert gradcheck(fn, args) and gradgradcheck(fn, args)


def _first_and_second(block, args, wrt):
    """A nonlinear loss of the block, its gradient w.r.t. `wrt` with a graph, then the gradient
    of a nonlinear function of that gradient w.r.t. every input (what an MTT unroll does)."""
    y = block(*args)
    v = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
    grads = torch.autograd.grad((y * v).pow(2).sum(), wrt, create_graph=True)
    outer = sum((gr * gr.detach().sign()).sum() + gr.pow(2).sum() for gr in grads)
    need = [a for a in args if a.requires_grad]
    return (y, *grads, *torch.autograd.grad(outer, need))


@pytest.mark.parametrize("x_needs_grad", [True, False])
def test_equals_the_stock_modules_to_second_order(chunk_bytes, x_needs_grad):
    args = _inputs(1, n=5, size=8)
    args[0].requires_grad_(x_needs_grad)
    wrt = args[1:]  # the parameters, as the unroll's inner gradient
    ours = _first_and_second(lambda *a: conv_block(*a, 1, 1e-5), args, wrt)
    ref = _first_and_second(lambda *a: _stock(*a, 1), args, wrt)
    assert len(ours) == len(ref) == 1 + 4 + (5 if x_needs_grad else 4)
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_unneeded_gradients_are_not_computed(monkeypatch):
    """autograd.grad w.r.t. the conv weight only: the input gradient (the images' in an unroll's
    inner step) and the norm parameters' gradients are never formed."""
    calls = []
    real = fused_block._conv_grads

    def spy(gz, x, k, pad, need_x, need_k):
        calls.append((need_x, need_k))
        return real(gz, x, k, pad, need_x, need_k)

    monkeypatch.setattr(fused_block, "_conv_grads", spy)
    x, k, c, w, b = _inputs(2)
    (gk,) = torch.autograd.grad(conv_block(x, k, c, w, b, 1, 1e-5).sum(), k)
    assert calls == [(False, True)]
    (ref,) = torch.autograd.grad(_stock(x, k, c, w, b, 1).sum(), k)
    torch.testing.assert_close(gk, ref, rtol=1e-12, atol=1e-12)
    calls.clear()
    (gx,) = torch.autograd.grad(conv_block(x, k, c, w, b, 1, 1e-5).sum(), x)
    assert calls == [(True, False)]


def test_the_convnet_fuses_only_when_asked_and_outside_torch_func():
    spec = ModelSpec("convnet3", 1, 10, 28, width=8)
    net = FlatNet(spec, "cpu")
    theta = torch.cat([p.reshape(-1) for p in net.module.parameters()]).requires_grad_(True)
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    assert "_BlockBackward" not in _node_names(net(theta, x))  # outside keeping_less: stock
    with net.keeping_less():
        assert net.module.fused_blocks
        out = net(theta, x)
        grad = torch.func.grad(lambda t: net(t, x).sum())(theta.detach())
    assert not net.module.fused_blocks
    assert "_BlockBackward" in _node_names(out)
    with torch.no_grad():
        torch.testing.assert_close(net(theta, x), out.detach())
    # under torch.func the stock modules run (vmap/grad see through them)
    (ref,) = torch.autograd.grad(net(theta, x).sum(), theta)
    # float32 summation order only (conv biases before a norm have a zero gradient up to noise)
    torch.testing.assert_close(grad, ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))


def _node_names(out):
    names, seen, stack = set(), set(), [out.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and node not in seen:
            seen.add(node)
            names.add(type(node).__name__)
            stack += [nxt for nxt, _ in node.next_functions]
    return names


@pytest.mark.parametrize("segment", [0, 2])
def test_mtt_matching_gradient_equals_the_stock_network(monkeypatch, segment):
    """A whole unroll (3 steps, float64): d loss / d(images, alpha) with the fused blocks equals the
    stock modules' (monkeypatching ENABLED switches the same FlatNet between them)."""
    monkeypatch.setattr(fused_block, "CHUNK_BYTES", 4096)  # several slices per block
    spec = ModelSpec("convnet3", 1, 10, 28, width=8)
    net = FlatNet(spec, "cpu")
    net.module.double()
    g = torch.Generator().manual_seed(4)
    theta0 = torch.cat([p.detach().reshape(-1) for p in net.module.parameters()])
    target = theta0 + 0.05 * torch.randn(theta0.shape, generator=g, dtype=torch.float64)
    images = torch.randn(6, 1, 28, 28, generator=g, dtype=torch.float64)
    labels = torch.arange(6) % 3
    unroll = Unroll([torch.tensor([0, 1, 2, 3]), torch.tensor([4, 5, 0, 1]),
                     torch.tensor([2, 3, 4, 5])], (0,), None)
    spec_m = MatchSpec(hard_ce)
    results, fused_calls = [], []
    real_block = fused_block.conv_block

    def counting_block(*args):
        fused_calls.append(1)
        return real_block(*args)

    monkeypatch.setattr(fused_block, "conv_block", counting_block)
    for enabled in (True, False):
        monkeypatch.setattr(fused_block, "ENABLED", enabled)
        syn = Synthetic(images.clone().requires_grad_(True), labels,
                        torch.tensor(0.05, dtype=torch.float64, requires_grad=True))
        if segment:
            loss, _ = segmented_match(net, syn, theta0, target, unroll, spec_m, segment)
        else:
            loss_t = exact_match(net, syn, theta0, target, unroll, spec_m)
            loss = float(loss_t.detach())
            loss_t.backward()
        results.append((loss, syn.images.grad, syn.alpha.grad))
        assert len(fused_calls) == (3 * 3 if enabled else 0)  # 3 blocks x 3 steps with a graph
        fused_calls.clear()
    (l1, gx1, ga1), (l2, gx2, ga2) = results
    assert l1 == pytest.approx(l2, rel=1e-12)
    assert gx1.abs().max() > 0
    torch.testing.assert_close(gx1, gx2, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(ga1, ga2, rtol=1e-9, atol=1e-12)


def test_frozen_parameters_with_an_input_that_needs_grad(chunk_bytes):
    """DAMED's classifier phase: the backbone is frozen and only the images need gradients, to
    second order."""
    x, k, c, w, b = (t.detach() for t in _inputs(5, size=8))
    x.requires_grad_(True)
    assert gradgradcheck(lambda t: conv_block(t, k, c, w, b, 1, 1e-5), (x,))
    hess = []
    for block in (lambda t: conv_block(t, k, c, w, b, 1, 1e-5), lambda t: _stock(t, k, c, w, b, 1)):
        (gx,) = torch.autograd.grad(block(x).pow(3).sum(), x, create_graph=True)
        hess.append(torch.autograd.grad(gx.pow(2).sum(), x)[0])
    torch.testing.assert_close(hess[0], hess[1], rtol=1e-10, atol=1e-10)
