"""Trajectory-matching machinery against hand computations on tiny tensors: DAM weights and loss, the
normalised matching loss, TESLA vs the exact unrolled gradient, the start-epoch schedule, presets,
and a matching loss that decreases on a tiny real problem.
Run: pytest tests/unit/test_trajectory.py -q"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ltdistill.methods.trajectory_core import (
    FlatNet,
    MatchSpec,
    StartSchedule,
    Synthetic,
    Unroll,
    dam_loss,
    dam_weights,
    exact_match,
    hard_ce,
    lookup_preset,
    make_synthetic,
    match_step,
    soft_ce,
    unroll_batches,
)
from ltdistill.models import ModelSpec, build_model

SPEC = ModelSpec("convnet3", 1, 3, 8, width=4)


def _net_theta(seed: int = 0) -> tuple[FlatNet, torch.Tensor]:
    net = FlatNet(SPEC, "cpu")
    theta = torch.cat([p.detach().reshape(-1) for p in build_model(SPEC, seed).parameters()])
    return net, theta


def _data(n: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.arange(n) % 3


# --- DAM --------------------------------------------------------------------------------------

def test_dam_weights_are_the_class_prior_summing_to_one():
    w = dam_weights([6, 3, 1])
    assert torch.allclose(w, torch.tensor([0.6, 0.3, 0.1]))
    assert math.isclose(float(w.sum()), 1.0, rel_tol=1e-6)
    # CIFAR-10-LT IF 100 example of the spec (rounded to 3 decimals)
    counts = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    expected = [0.403, 0.242, 0.145, 0.087, 0.052, 0.031, 0.019, 0.011, 0.007, 0.004]
    assert [round(float(v), 3) for v in dam_weights(counts)] == expected


def test_dam_loss_on_a_hand_made_batch():
    w = torch.tensor([0.8, 0.2])
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])  # softmax (1/4, 3/4), (1/2, 1/2)
    targets = torch.tensor([[0.0, math.log(3.0)], [0.0, -1e9]])  # (1/4, 3/4), one-hot class 0
    by_hand = -(0.8 * 0.25 * math.log(0.25) + 0.2 * 0.75 * math.log(0.75)
                + 0.8 * 1.0 * math.log(0.5)) / 2
    assert math.isclose(float(dam_loss(w)(logits, targets)), by_hand, rel_tol=1e-6)
    # weights indexed by OUTPUT class: a one-hot target on class k costs w_k * CE
    onehot = torch.tensor([[-1e9, 0.0]])
    ce = F.cross_entropy(logits[:1], torch.tensor([1]))
    assert math.isclose(float(dam_loss(w)(logits[:1], onehot)), 0.2 * float(ce), rel_tol=1e-6)
    # none = plain soft CE; logit_adjusted subtracts log w from the logits first (sign -1)
    assert math.isclose(float(dam_loss(w, "none")(logits, targets)),
                        float(soft_ce(logits, targets)), rel_tol=1e-6)
    adjusted = logits - w.log()
    assert math.isclose(float(dam_loss(w, "logit_adjusted")(logits, targets)),
                        float(dam_loss(w)(adjusted, targets)), rel_tol=1e-6)


# --- the matching loss ------------------------------------------------------------------------

def _unroll(n: int, steps: int, batch: int = 0, seed: int = 0) -> Unroll:
    return Unroll(unroll_batches(n, batch, steps, torch.Generator().manual_seed(seed)), (seed,), None)


def test_normalised_matching_loss_matches_a_hand_computed_step():
    net, theta0 = _net_theta()
    x, y = _data()
    syn = make_synthetic(x, y, 0.05, learn_labels=False, device=torch.device("cpu"))
    # one full-batch step by hand with an ordinary module
    model = build_model(SPEC, 0)
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
    g = torch.cat([t.reshape(-1) for t in grads])
    delta = 0.01 * torch.randn(theta0.shape, generator=torch.Generator().manual_seed(1))
    target = theta0 + delta
    loss = exact_match(net, syn, theta0, target, _unroll(6, 1), MatchSpec(hard_ce))
    expected = (-0.05 * g - delta).pow(2).sum() / delta.pow(2).sum()
    assert torch.allclose(loss, expected, rtol=1e-4)
    # landing exactly on the target gives 0; no step at all gives 1
    on_target = exact_match(net, syn, theta0, theta0 - 0.05 * g, _unroll(6, 1), MatchSpec(hard_ce))
    assert float(on_target.detach()) < 1e-8
    no_step = exact_match(net, syn, theta0, target, _unroll(6, 0), MatchSpec(hard_ce))
    assert math.isclose(float(no_step.detach()), 1.0, rel_tol=1e-6)


def test_sub_vector_matching_and_frozen_backbone():
    net, theta0 = _net_theta()
    x, y = _data()
    cs = net.classifier_start
    syn = make_synthetic(x, y, 0.05, learn_labels=False, device=torch.device("cpu"))
    target = theta0 + 0.01
    spec = MatchSpec(hard_ce, match=slice(0, cs))
    loss = exact_match(net, syn, theta0, target, _unroll(6, 2), spec)
    assert loss.requires_grad
    # a moving classifier only: the backbone of theta_N stays at theta_0, so matching it gives 1
    frozen = MatchSpec(hard_ce, match=slice(0, cs), move=slice(cs, None))
    frozen_loss = exact_match(net, syn, theta0, target, _unroll(6, 2), frozen)
    assert math.isclose(float(frozen_loss.detach()), 1.0, rel_tol=1e-6)


def test_frozen_part_gradients_equal_the_masked_full_gradient():
    """move = classifier: same as zeroing the backbone part of every g_i (DAMED phase 2)."""
    net, theta0 = _net_theta()
    x, _ = _data()
    t = torch.randn(6, 3, generator=torch.Generator().manual_seed(4))
    cs = net.classifier_start
    target = theta0.clone()
    target[cs:] += 0.05 * torch.randn(theta0.numel() - cs, generator=torch.Generator().manual_seed(5))
    unroll = _unroll(6, 2, batch=3)
    fast = _fresh(x, t, True)
    match_step(net, fast, theta0, target, unroll, MatchSpec(soft_ce, move=slice(cs, None)), False)
    ref = _fresh(x, t, True)
    mask = torch.zeros_like(theta0)
    mask[cs:] = 1
    theta = theta0.clone().requires_grad_(True)
    for idx in unroll.batches:
        g = torch.autograd.grad(soft_ce(net(theta, ref.images[idx]), ref.targets[idx]), theta,
                                create_graph=True)[0]
        theta = theta - ref.alpha * g * mask
    ((theta - target).pow(2).sum() / (theta0 - target).pow(2).sum()).backward()
    for a, b in zip(_grads(fast), _grads(ref), strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-9)
    one = _unroll(6, 1)
    results = []
    for tesla in (False, True):
        syn = _fresh(x, t, True)
        match_step(net, syn, theta0, target, one, MatchSpec(soft_ce, move=slice(cs, None)), tesla)
        results.append(_grads(syn))
    for a, b in zip(*results, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-9)


def _grads(syn: Synthetic) -> list[torch.Tensor]:
    out = [syn.images.grad.clone(), syn.alpha.grad.clone()]
    if syn.targets.is_floating_point():
        out.append(syn.targets.grad.clone())
    return out


def _fresh(x, t, soft):
    return make_synthetic(x, t, 0.05, learn_labels=soft, device=torch.device("cpu"))


@pytest.mark.parametrize("soft", [False, True])
def test_tesla_equals_exact_for_one_step(soft):
    net, theta0 = _net_theta()
    x, y = _data()
    t = torch.randn(6, 3, generator=torch.Generator().manual_seed(3)) if soft else y
    target = theta0 + 0.01 * torch.randn(theta0.shape, generator=torch.Generator().manual_seed(2))
    spec = MatchSpec(soft_ce if soft else hard_ce)
    results = []
    for tesla in (False, True):
        syn = _fresh(x, t, soft)
        loss, applied = match_step(net, syn, theta0, target, _unroll(6, 1), spec, tesla)
        assert applied
        results.append((loss, _grads(syn)))
    assert math.isclose(results[0][0], results[1][0], rel_tol=1e-5)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-9)


def test_tesla_is_the_exact_gradient_without_the_later_step_dependence():
    """N = 3 disjoint batches: TESLA equals the exact unroll in which each theta_i is treated as a
    constant inside g_i (trajectory_methods.md §5), and differs from the full exact gradient."""
    net, theta0 = _net_theta()
    x, _ = _data()
    t = torch.randn(6, 3, generator=torch.Generator().manual_seed(3))
    target = theta0 + 0.02 * torch.randn(theta0.shape, generator=torch.Generator().manual_seed(2))
    unroll = _unroll(6, 3, batch=2)
    spec = MatchSpec(soft_ce)

    syn = _fresh(x, t, True)
    match_step(net, syn, theta0, target, unroll, spec, tesla=True)
    tesla = _grads(syn)

    # reference: the unrolled graph with theta_i detached inside every g_i
    ref = _fresh(x, t, True)
    theta = theta0.clone()
    for idx in unroll.batches:
        th = theta.detach().requires_grad_(True)
        g = torch.autograd.grad(soft_ce(net(th, ref.images[idx]), ref.targets[idx]), th,
                                create_graph=True)[0]
        theta = theta - ref.alpha * g
    loss = (theta - target).pow(2).sum() / (theta0 - target).pow(2).sum()
    loss.backward()
    for a, b in zip(tesla, _grads(ref), strict=True):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-8)

    exact = _fresh(x, t, True)
    match_step(net, exact, theta0, target, unroll, spec, tesla=False)
    assert not torch.allclose(exact.images.grad, tesla[0], rtol=1e-3, atol=1e-8)


def test_gate_skips_the_gradient():
    net, theta0 = _net_theta()
    x, y = _data()
    syn = _fresh(x, y, False)
    loss, applied = match_step(net, syn, theta0, theta0 + 1e-3, _unroll(6, 2), MatchSpec(hard_ce),
                               tesla=True, gate=1e-9)
    assert not applied and loss > 1e-9 and syn.images.grad is None


def test_matching_loss_decreases_on_a_tiny_problem():
    """Distil 6 images so that 3 student steps reproduce 3 steps of training on 24 real images."""
    net, theta0 = _net_theta()
    real_x, real_y = _data(24, seed=5)
    model = build_model(SPEC, 0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(real_x), real_y).backward()
        opt.step()
    target = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    x, y = _data(6, seed=6)
    for tesla in (False, True):
        syn = _fresh(x, y, False)
        opts = [torch.optim.SGD([syn.images], lr=2.0, momentum=0.5),
                torch.optim.SGD([syn.alpha], lr=1e-4, momentum=0.5)]
        losses = []
        for it in range(25):
            for o in opts:
                o.zero_grad()
            loss, _ = match_step(net, syn, theta0, target, _unroll(6, 3, seed=it), MatchSpec(hard_ce),
                                 tesla)
            for o in opts:
                o.step()
            losses.append(loss)
        assert losses[-1] < 0.7 * losses[0], (tesla, losses)


# --- the start-epoch schedule -----------------------------------------------------------------

def test_sequential_generation_upper_bound_grows_linearly():
    s = StartSchedule(0, 20, current=10, sequential=True, expansion_end=1000)
    assert [s.upper(it) for it in (0, 99, 100, 500, 999, 1000, 5000)] == [10, 10, 11, 15, 19, 20, 20]
    assert StartSchedule(0, 20, current=10, sequential=False).upper(0) == 20
    g = torch.Generator().manual_seed(0)
    draws = {s.draw(0, g) for _ in range(200)}
    assert draws == set(range(10))


def test_empty_start_range_is_rejected_up_front():
    # defect #3: T_cls = 0 with Sequential Generation would call randint(0, 0) at iteration 0
    with pytest.raises(ValueError, match="empty range"):
        StartSchedule(0, 1, current=0, sequential=True).validate(2, 10, "cls")
    with pytest.raises(ValueError, match="must exceed"):
        StartSchedule(3, 3).validate(2, 10, "rep")
    with pytest.raises(ValueError, match="experts have 5"):
        StartSchedule(0, 5).validate(2, 5, "rep")  # t = 4 needs snapshot 6
    StartSchedule(0, 1, current=1, sequential=True).validate(2, 10, "cls")  # published T_cls = 1


# --- presets ----------------------------------------------------------------------------------

ROWS = [
    {"dataset": "d", "imbalance_factor": 10, "ipc": 10, "n": 80, "lr": 100.0},
    {"dataset": "d", "imbalance_factor": 10, "ipc": 50, "n": 40, "lr": 1000.0},
    {"dataset": "d", "imbalance_factor": 20, "ipc": 10, "n": 20, "lr": 1.0},
]


def test_preset_lookup_exact_nearest_and_interpolated():
    assert lookup_preset(ROWS, "d", 10, 10)[0] == {"n": 80, "lr": 100.0}
    assert lookup_preset(ROWS, "d", 50, 10)[0] == {"n": 20, "lr": 1.0}  # nearest IF: 20
    assert lookup_preset(ROWS, "d", 15, 10)[0] == {"n": 80, "lr": 100.0}  # tie: the lower IF
    assert lookup_preset(ROWS, "d", 10, 20)[0] == {"n": 80, "lr": 100.0}  # nearest IPC
    values, note = lookup_preset(ROWS, "d", 10, 20, interpolate_ipc=True)
    assert values == {"n": 70, "lr": 100.0} and "interpolated" in note
    assert lookup_preset(ROWS, "other", 10, 10)[0] == {}


def test_damed_presets_resolve_the_published_rows():
    from ltdistill.methods.damed import PRESETS, DAMEDConfig
    from ltdistill.methods.trajectory_core import resolve

    class Split:
        imbalance_factor = 100

    class Data:
        name = "cifar10"
        split = Split()

    class Ctx:
        data = Data()
        ipc = 10

    paper, _ = resolve(DAMEDConfig(), {}, PRESETS, Ctx())
    assert (paper.lambda_rep, paper.lambda_cls, paper.syn_steps, paper.max_start_epoch) == (1.0, 0.5, 80, 20)
    release, _ = resolve(DAMEDConfig(preset="damed_release"), {}, PRESETS, Ctx())
    assert (release.lambda_rep, release.lambda_cls, release.sequential) == (0.5, 1.0, False)
    explicit, _ = resolve(DAMEDConfig(lambda_cls=0.3), {}, PRESETS, Ctx())
    assert explicit.lambda_cls == 0.3  # config beats the preset
    Data.name, Split.imbalance_factor = "cifar100", 50  # no IF-50 rows: the IF-20 rows
    c100, note = resolve(DAMEDConfig(), {}, PRESETS, Ctx())
    assert (c100.syn_steps, c100.syn_steps_cls, c100.max_start_epoch) == (40, 20, 50) and "IF 20" in note
    for name, rows in PRESETS.items():  # every row's ranges are valid (defect #3)
        for row in rows:
            for sfx in ("", "_cls"):
                StartSchedule(row[f"min_start_epoch{sfx}"], row[f"max_start_epoch{sfx}"],
                              row[f"current_max_start_epoch{sfx}"], row["sequential"],
                              row["expansion_end"]).validate(2, 100, f"{name} {row}")


@pytest.mark.parametrize("segment", [1, 2, 3])
@pytest.mark.parametrize("case", ["hard", "soft_moving_classifier"])
def test_segmented_exact_gradient_equals_the_whole_unroll(segment, case):
    """Recomputing the unroll in segments from stored start vectors gives the exact gradient:
    loss, pixels, alpha and learnable labels, with and without a frozen backbone, with DSA."""
    from ltdistill.data.augment import DSAParams
    from ltdistill.methods.trajectory_core import Unroll, segmented_match

    net, theta0 = _net_theta()
    x, y = _data()
    soft = case != "hard"
    t = torch.randn(6, 3, generator=torch.Generator().manual_seed(3)) if soft else y
    target = theta0 + 0.02 * torch.randn(theta0.shape, generator=torch.Generator().manual_seed(2))
    base = _unroll(6, 5, batch=2)
    unroll = Unroll(base.batches, ("segments", 0), DSAParams(strategy="color_crop_flip"))
    spec = MatchSpec(soft_ce if soft else hard_ce,
                     move=slice(net.classifier_start, None) if soft else None)
    results = []
    for seg in (0, segment):
        syn = _fresh(x, t, soft)
        loss, applied = match_step(net, syn, theta0, target, unroll, spec, tesla=False,
                                   weight=0.7, exact_segment=seg)
        assert applied
        results.append((loss, _grads(syn)))
    assert math.isclose(results[0][0], results[1][0], rel_tol=1e-6)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        assert a.abs().max() > 0
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6 * float(a.abs().max()))
    syn = _fresh(x, t, soft)  # the gate is applied before any backward
    loss, applied = segmented_match(net, syn, theta0, target, unroll, spec, segment, gate=0.0)
    assert not applied and loss > 0 and syn.images.grad is None
    with pytest.raises(ValueError, match="exact_segment must be >= 1"):
        segmented_match(net, syn, theta0, target, unroll, spec, 0)


def test_the_straightforward_benchmark_iteration_computes_ltdistills_network():
    """benchmarks/bench_reference.py times a reference-structured MTT iteration beside
    ltdistill's: its functional ConvNet over a flat vector must be the same network as
    ltdistill's ConvNet-3 with the same parameters (same layout, layers and output), so that the
    two iterations do the same work."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks/bench_reference.py"
    spec_ = importlib.util.spec_from_file_location("bench_reference", path)
    bench = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(bench)
    net = build_model(ModelSpec("convnet3", bench.CHANNELS, bench.CLASSES, bench.SIZE,
                                width=bench.WIDTH), 0)
    assert [tuple(p.shape) for p in net.parameters()] == [s for _, s in bench._shapes()]
    flat = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    x = torch.randn(3, bench.CHANNELS, bench.SIZE, bench.SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(bench.forward(flat, x), net(x), rtol=1e-4, atol=1e-5)
