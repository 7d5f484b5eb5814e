"""Sliced (micro-batch) training computes the same gradient as whole batches: by hand on a linear
model, and end to end for evaluation training and GSAM/SGD experts (fast path vs straightforward
path, tight tolerances). Run: pytest tests/unit/test_microbatch.py -q"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ltdistill import microbatch
from ltdistill.microbatch import micro_batch_size, set_micro_batch, sliced_backward
from ltdistill.models import ModelSpec, build_model, native


@pytest.fixture
def policy():
    before = microbatch.get_micro_batch()
    yield set_micro_batch
    set_micro_batch(before)


def test_sliced_backward_matches_the_hand_gradient():
    # L = mean_i 0.5 (w . x_i - y_i)^2  ->  dL/dw = (1/n) sum_i (w . x_i - y_i) x_i
    x = torch.tensor([[1.0, 2.0], [0.0, 1.0], [3.0, -1.0], [2.0, 2.0], [-1.0, 0.5]])
    y = torch.tensor([1.0, 0.0, 2.0, -1.0, 0.5])
    w0 = torch.tensor([0.5, -0.25])
    r = x @ w0 - y
    expected_grad = (r[:, None] * x).mean(0)
    expected_loss = 0.5 * (r ** 2).mean()
    for size in (None, 1, 2, 3, 5, 8):
        w = w0.clone().requires_grad_(True)
        loss = sliced_backward(lambda sl, w=w: 0.5 * ((x[sl] @ w - y[sl]) ** 2).mean(), 5, size)
        assert torch.allclose(w.grad, expected_grad, atol=1e-6), size
        assert torch.isclose(loss, expected_loss, atol=1e-6) and not loss.requires_grad
    with pytest.raises(ValueError, match="at least one sample"):
        sliced_backward(lambda sl: torch.zeros(()), 0, 4)


def test_slicing_policy(policy):
    conv = build_model(ModelSpec("convnet3", 1, 4, 28, width=4), 0)  # instance norm: per sample
    bn = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    drop = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    native.set_native_kernels("off")
    try:
        assert micro_batch_size(conv, "cpu") == microbatch.AUTO_CPU_SLICE
    finally:
        native.set_native_kernels("auto")
    # native block kernels keep a block's intermediates in cache themselves: no slicing
    assert micro_batch_size(conv, "cpu") == (None if native.available() else microbatch.AUTO_CPU_SLICE)
    assert micro_batch_size(conv, "cuda") is None  # auto never slices on GPU
    assert micro_batch_size(bn, "cpu") is None and micro_batch_size(drop, "cpu") is None
    policy(0)
    assert micro_batch_size(conv, "cpu") is None
    policy(16)
    assert micro_batch_size(conv, "cpu") == 16 and micro_batch_size(conv, "cuda") == 16
    assert micro_batch_size(bn, "cpu") is None  # batch statistics never slice
    for bad in ("fast", -1, 2.5, True):
        with pytest.raises(ValueError, match="runtime.micro_batch"):
            set_micro_batch(bad)


def _params(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("soft", [False, True])
def test_sliced_evaluation_training_equals_whole_batches(policy, soft):
    from ltdistill.evaluation.train import TrainRecipe, train_classifier

    g = torch.Generator().manual_seed(3)
    images = torch.randn(40, 1, 28, 28, generator=g)
    labels = torch.arange(40) % 4
    soft_labels = torch.randn(40, 4, generator=g) if soft else None
    weights = torch.tensor([0.5, 1.0, 1.5, 2.0])
    spec = ModelSpec("convnet3", 1, 4, 28, width=4)
    recipe = TrainRecipe(epochs=2, batch_size=32)
    runs = {}
    for setting in (0, 8):
        policy(setting)
        model = train_classifier(spec, images, labels, recipe=recipe, lr=0.05, seed=1,
                                 device="cpu", soft_labels=soft_labels, class_weights=weights)
        runs[setting] = _params(model)
    assert not torch.equal(runs[0], _params(build_model(spec, 1)))  # it trained
    assert torch.allclose(runs[0], runs[8], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["mtt", "datm"])
def test_sliced_expert_training_equals_whole_batches(policy, toy_data, kind):
    from ltdistill.experts import expert_config, train_expert

    cfg = expert_config(kind, {"epochs": 2, "batch_size": 16, "lr": 0.05})
    spec = ModelSpec("convnet3", toy_data.channels, toy_data.num_classes, toy_data.image_size,
                     width=4)
    runs = {}
    for setting in (0, 4):
        policy(setting)
        runs[setting], _ = train_expert(toy_data, spec, cfg, kind, 0, "cpu")
    assert not torch.equal(runs[0][0], runs[0][-1])
    assert torch.allclose(runs[0], runs[4], rtol=1e-4, atol=1e-5)


def test_sliced_protocol_b_equals_whole_batches(policy, toy_data):
    from ltdistill.evaluation.protocol_b import train_protocol_b
    from ltdistill.evaluation.train import TrainRecipe

    spec = ModelSpec("convnet3", 1, 4, 8, width=4)
    teacher = build_model(ModelSpec("convnet3", 1, 4, 8, width=4, norm="batch"), 3).eval()
    x, y = toy_data.train_images[:12], toy_data.train_labels[:12]
    recipe = TrainRecipe(epochs=2, batch_size=12, protocol="b")
    runs = {}
    for setting in (0, 5):
        policy(setting)
        model = train_protocol_b(spec, x, y, recipe=recipe, lr=0.1, seed=0, device="cpu",
                                 preprocessing=toy_data.preprocessing, teacher=teacher)
        runs[setting] = _params(model)
    assert not torch.equal(runs[0], _params(build_model(spec, 0)))
    assert torch.allclose(runs[0], runs[5], rtol=1e-4, atol=1e-5)


def test_sliced_grad_and_forward_match_whole_batch_results():
    from ltdistill.microbatch import sliced_forward, sliced_grad

    x = torch.tensor([[1.0, 2.0], [0.0, 1.0], [3.0, -1.0], [2.0, 2.0], [-1.0, 0.5]])
    y = torch.tensor([1.0, 0.0, 2.0, -1.0, 0.5])
    w = torch.tensor([0.5, -0.25], requires_grad=True)
    r = x @ w.detach() - y
    for size in (None, 2, 3):
        (g,) = sliced_grad(lambda sl: 0.5 * ((x[sl] @ w - y[sl]) ** 2).mean(), 5, size, [w])
        assert torch.allclose(g, (r[:, None] * x).mean(0), atol=1e-6) and w.grad is None
        out = sliced_forward(lambda t: t * 2, x, size)
        assert torch.equal(out, x * 2)


def test_fast_matching_paths_equal_the_straightforward_ones(policy):
    from ltdistill.methods.dm import dm_loss
    from ltdistill.methods.gradient_matching import real_gradients

    net = build_model(ModelSpec("convnet3", 1, 3, 28, width=4), 0)
    g = torch.Generator().manual_seed(1)
    real = [torch.randn(40, 1, 28, 28, generator=g) for _ in range(3)]
    syn = torch.randn(6, 1, 28, 28, generator=g, requires_grad=True)
    bounds = [(0, 2), (2, 4), (4, 6)]
    runs, calls = {}, []
    embed = net.embed
    net.embed = lambda x: calls.append(len(x)) or embed(x)
    for setting in (0, 8):
        policy(setting)
        calls.clear()
        grads = real_gradients(net, real, None, None, torch.contiguous_format)
        loss = dm_loss(net, syn, bounds, real, None, None, batched=True)
        (pix,) = torch.autograd.grad(loss, [syn])
        runs[setting] = (grads, loss.detach(), pix)
        # real gradients: 40 images per class whole, or in slices of 8; DM then embeds the 120
        # real images whole, or in no-grad slices of 4 x 8, and the 6 synthetic ones
        assert calls == ([40, 40, 40, 120, 6] if setting == 0
                         else [8] * 15 + [32, 32, 32, 24, 6])
        per_class = dm_loss(net, syn, bounds, real, None, None, batched=False)
        assert torch.allclose(per_class, loss, rtol=1e-5)
    (g0, l0, p0), (g8, l8, p8) = runs[0], runs[8]
    for per_class0, per_class8 in zip(g0, g8, strict=True):
        assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6)
                   for a, b in zip(per_class0, per_class8, strict=True))
    assert torch.allclose(l0, l8, rtol=1e-5) and torch.allclose(p0, p8, rtol=1e-4, atol=1e-7)


def test_sliced_inner_training_equals_whole_batches(policy):
    from ltdistill.methods.gradient_matching import train_inner

    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(20, 1, 28, 28, generator=g), torch.arange(20) % 4
    runs = {}
    for setting in (0, 4):
        policy(setting)
        net = build_model(ModelSpec("convnet3", 1, 4, 28, width=4), 0)
        opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.5)
        train_inner(net, opt, x, y, 2, 16, None, torch.Generator().manual_seed(0),
                    torch.Generator().manual_seed(1), torch.contiguous_format)
        runs[setting] = _params(net)
    assert not torch.equal(runs[0], _params(build_model(ModelSpec("convnet3", 1, 4, 28, width=4), 0)))
    assert torch.allclose(runs[0], runs[4], rtol=1e-4, atol=1e-5)
