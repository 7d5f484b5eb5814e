"""The native first-order ConvNet block kernels (models/native.py, csrc/block_cpu.cpp) against the
stock modules: values and gradients in float64 to 1e-12, gradcheck, whole ConvNet training steps,
thread-count independence, the first-order guard, and the build policy's errors."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch
import torch.nn.functional as F

from ltdistill.microbatch import sliced_backward
from ltdistill.models import ModelSpec, build_model, native
from ltdistill.models.fast_ops import _pool2x2

pytestmark = pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                                reason="no C++ compiler to build the native kernels")


@pytest.fixture(autouse=True)
def _native_on():
    before = native.get_native_kernels().split(":")[0]
    native.set_native_kernels("on")
    assert native.available()
    yield
    native.set_native_kernels(before)


def _stock_block(z, gamma, beta, eps=1e-5):
    return _pool2x2(F.relu(F.group_norm(z, z.shape[1], gamma, beta, eps)))


def _leaf(*shape, g):
    return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_()


# widths 8/16/32/64 take the kernels' compile-time-width paths, the others the general one
@pytest.mark.parametrize("shape", [(3, 4, 8, 8), (2, 3, 16, 16), (2, 5, 32, 32), (1, 2, 64, 64),
                                   (2, 3, 9, 7), (1, 2, 2, 2), (2, 2, 6, 10)])
def test_norm_relu_pool_equals_stock_modules(shape):
    g = torch.Generator().manual_seed(0)
    z, gamma, beta = _leaf(*shape, g=g), _leaf(shape[1], g=g), _leaf(shape[1], g=g)
    ref = _stock_block(z, gamma, beta)
    out = native.norm_relu_pool(z, gamma, beta, 1e-5)
    assert out.shape == ref.shape == (shape[0], shape[1], shape[2] // 2, shape[3] // 2)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    dp = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    want = torch.autograd.grad(ref, (z, gamma, beta), dp)
    with native.first_order():
        got = torch.autograd.grad(native.norm_relu_pool(z, gamma, beta, 1e-5), (z, gamma, beta), dp)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11)


# NCHW output: the compile-time shapes (3x3 at 28/32/64 px) and the general path; channels_last:
# channel counts 32/64/128 (compile-time) and 5/6 (general), paddings 0-3, odd planes
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("cin,cout,pad,size", [(1, 6, 3, 28), (3, 6, 1, 32), (1, 6, 1, 64),
                                               (2, 6, 2, 9), (1, 6, 0, 12), (1, 32, 3, 28),
                                               (3, 64, 1, 32), (3, 128, 1, 8), (2, 5, 2, 9),
                                               (1, 32, 0, 13)])
def test_conv_norm_relu_pool_equals_stock_modules(cin, cout, pad, size, channels_last):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, cin, size, size, generator=g, dtype=torch.float64)
    w, b = _leaf(cout, cin, 3, 3, g=g), _leaf(cout, g=g)
    gamma, beta = _leaf(cout, g=g), _leaf(cout, g=g)
    ref = _stock_block(F.conv2d(x, w, b, padding=pad), gamma, beta)
    out = native.conv_norm_relu_pool(x, w, b, gamma, beta, pad, 1e-5, channels_last=channels_last)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert out.is_contiguous(memory_format=fmt)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    dp = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    want = torch.autograd.grad(ref, (w, b, gamma, beta), dp)
    got = torch.autograd.grad(out, (w, b, gamma, beta), dp)
    for a, c in zip(got, want, strict=True):
        torch.testing.assert_close(a, c, rtol=0, atol=1e-11)


# channels_last z takes the NHWC kernels: channel counts 32/64/128 their compile-time paths, the
# others the general one; odd planes drop their last row/column
@pytest.mark.parametrize("shape", [(2, 32, 16, 16), (3, 64, 8, 8), (2, 128, 4, 4), (2, 5, 9, 7),
                                   (1, 3, 2, 2), (2, 32, 7, 10)])
def test_channels_last_norm_relu_pool_equals_stock_modules(shape):
    g = torch.Generator().manual_seed(5)
    z0 = torch.randn(*shape, generator=g, dtype=torch.float64)
    z = z0.contiguous(memory_format=torch.channels_last).requires_grad_()
    assert not z.is_contiguous()
    gamma, beta = _leaf(shape[1], g=g), _leaf(shape[1], g=g)
    ref = _stock_block(z0.requires_grad_(), gamma, beta)
    out = native.norm_relu_pool(z, gamma, beta, 1e-5)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    dp = torch.randn(ref.shape, generator=g, dtype=torch.float64)  # NCHW: converted by the kernel
    want = torch.autograd.grad(ref, (z0, gamma, beta), dp)
    with native.first_order():
        got = torch.autograd.grad(native.norm_relu_pool(z, gamma, beta, 1e-5), (z, gamma, beta), dp)
    assert got[0].is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11)


def test_gradcheck():
    g = torch.Generator().manual_seed(2)
    z, gamma, beta = _leaf(2, 3, 6, 5, g=g), _leaf(3, g=g), _leaf(3, g=g)
    assert torch.autograd.gradcheck(lambda *t: native.norm_relu_pool(*t, 1e-5), (z, gamma, beta))
    x = torch.randn(2, 1, 6, 6, generator=g, dtype=torch.float64)
    w, b = _leaf(3, 1, 3, 3, g=g), _leaf(3, g=g)
    assert torch.autograd.gradcheck(
        lambda *t: native.conv_norm_relu_pool(x, *t, 1, 1e-5), (w, b, gamma, beta))
    # the channels_last kernels
    zc = z.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    assert torch.autograd.gradcheck(lambda *t: native.norm_relu_pool(*t, 1e-5), (zc, gamma, beta))
    assert torch.autograd.gradcheck(
        lambda *t: native.conv_norm_relu_pool(x, *t, 1, 1e-5, channels_last=True),
        (w, b, gamma, beta))


def _nodes(t):
    """Names of every autograd node behind t."""
    seen, todo = set(), [t.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        todo += [n for n, _ in node.next_functions]
    return {type(n).__name__ for n in seen}


def _convnet(dtype=torch.float64, channels=1, size=28, width=16):
    return build_model(ModelSpec("convnet3", channels, 10, size, width=width), seed=0).to(dtype)


def _train_grads(model, x, y, native_policy):
    native.set_native_kernels(native_policy)
    model.zero_grad(set_to_none=True)
    sliced_backward(lambda sl: F.cross_entropy(model(x[sl]), y[sl]), len(x), None)
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
def test_convnet_training_step_equals_stock(channels, size, channels_last, monkeypatch):
    monkeypatch.setattr(native, "CHANNELS_LAST", channels_last)
    model = _convnet(channels=channels, size=size)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, channels, size, size, generator=g, dtype=torch.float64)
    y = torch.arange(6) % 10
    with native.first_order():
        emb = model.embed(x)
    assert {"_ConvNormReluPoolBackward", "_NormReluPoolBackward"} <= _nodes(emb)
    got = _train_grads(model, x, y, "on")
    want = _train_grads(model, x, y, "off")
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11)
    native.set_native_kernels("on")
    with torch.no_grad():
        torch.testing.assert_close(model(x), _stock_forward(model, x), rtol=0, atol=1e-12)


def _stock_forward(model, x):
    before = native.get_native_kernels().split(":")[0]
    native.set_native_kernels("off")
    try:
        return model(x)
    finally:
        native.set_native_kernels(before)


def test_input_that_needs_a_gradient_uses_stock_conv_then_the_norm_kernel():
    model = _convnet()
    x = torch.randn(2, 1, 28, 28, dtype=torch.float64, requires_grad=True)
    with native.first_order():
        out = model(x).sum()
        (gx,) = torch.autograd.grad(out, x)
    (want,) = torch.autograd.grad(_stock_forward(model, x).sum(), x)
    torch.testing.assert_close(gx, want, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="no input gradient"):
        native.conv_norm_relu_pool(x, model.features[0].weight, model.features[0].bias,
                                   model.features[1].weight, model.features[1].bias, 3, 1e-5)


def test_only_first_order_or_gradient_free_passes_use_the_kernels():
    model = _convnet()
    x = torch.randn(2, 1, 28, 28, dtype=torch.float64)
    # with gradients outside first_order(): stock modules (a graph that can be differentiated)
    assert not {"_ConvNormReluPoolBackward", "_NormReluPoolBackward"} & _nodes(model.embed(x))
    with native.first_order():
        loss = model(x).square().sum()
        with pytest.raises(RuntimeError, match="first-order only"):
            torch.autograd.grad(loss, list(model.parameters()), create_graph=True)


@pytest.mark.parametrize("width", [16, 32])  # the general and a compile-time channel count
def test_results_do_not_depend_on_the_thread_count(width):
    model = _convnet(torch.float32, width=width)
    x = torch.randn(32, 1, 28, 28, generator=torch.Generator().manual_seed(4))
    y = torch.arange(32) % 10
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _train_grads(model, x, y, "on")[:4]  # block 1: conv weight/bias, gamma/beta
        torch.set_num_threads(2)
        two = _train_grads(model, x, y, "on")[:4]
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, two, strict=True):
        assert torch.equal(a, b)


def test_policy_errors_name_the_choices_and_the_fix(tmp_path, monkeypatch, caplog):
    with pytest.raises(ValueError, match="auto, on, off"):
        native.set_native_kernels("fast")
    saved = dict(native._state)
    monkeypatch.setenv("LTDISTILL_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", "no-such-compiler")
    try:
        native._state.clear()
        native.set_native_kernels("on")
        with pytest.raises(native.NativeBuildError, match="apt-get install g\\+\\+"):
            native.available()
        native._state.clear()
        native.set_native_kernels("auto")
        with caplog.at_level(logging.WARNING, logger="ltdistill.native"):
            assert native.available() is False
        assert "using the stock modules" in caplog.text
        assert native.get_native_kernels() == "auto:unavailable"
        native.set_native_kernels("off")
        assert not native.usable(torch.zeros(1, 1, 4, 4))
    finally:
        native._state.clear()
        native._state.update(saved)
    assert not list(tmp_path.rglob("*.so"))  # a failed build leaves nothing behind


def test_non_finite_values_propagate_like_the_stock_modules():
    """Divergence checks (a DM run whose pixels overflow) rely on NaN reaching the loss: the
    kernels' ReLU must not turn NaN into 0."""
    z = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    z[0, 1, 2, 3] = float("inf")
    gamma, beta = torch.ones(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    out, ref = native.norm_relu_pool(z, gamma, beta, 1e-5), _stock_block(z, gamma, beta)
    assert torch.equal(out.isnan(), ref.isnan()) and out[0, 1].isnan().all()
    assert torch.isfinite(out[1]).all() and torch.isfinite(out[0, 0]).all()
    # values whose squares overflow float32: NaN (torch's norm), not a silently finite output
    big = torch.randn(2, 3, 8, 8) * 1e30
    out = native.norm_relu_pool(big, gamma.float(), beta.float(), 1e-5)
    assert torch.equal(out.isnan(), _stock_block(big, gamma.float(), beta.float()).isnan())
    assert out.isnan().all()


def test_environment_sets_the_starting_policy():
    """LTDISTILL_NATIVE_KERNELS sets a fresh process's policy (benchmarks' before/after runs); a
    bad value fails at the first use with the choices."""
    import subprocess
    import sys

    code = ("from ltdistill.models import native; import torch; print(native.get_native_kernels());"
            "native.usable(torch.zeros(1, 1, 4, 4))")
    env = {**__import__("os").environ, "LTDISTILL_NATIVE_KERNELS": "off"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "off"
    env["LTDISTILL_NATIVE_KERNELS"] = "fast"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "must be one of auto, on, off" in out.stderr
