"""The statistical family (RLDD / SRe2L / RDED) on tiny data: fair BN recalibration against
direct per-class statistics, multi-round initialisation, the GLMC loss by hand, recovery, and
Protocol B's loss and schedule."""

from __future__ import annotations

import math

import pytest
import torch

from ltdistill.evaluation.protocol_b import EMA, cos2_factor, kd_loss, train_protocol_b
from ltdistill.evaluation.train import TrainRecipe
from ltdistill.models import ModelSpec, build_model
from ltdistill.statistical.augment import crop_resize, rand_augment, sample_crop_boxes
from ltdistill.statistical.bn_recal import BNStats, recalibrate, record_bn_inputs
from ltdistill.statistical.glmc import (
    ExpertConfig,
    class_weights,
    consistency_loss,
    expert_spec,
    glmc_loss,
    train_expert,
)
from ltdistill.statistical.init import initialise, multiround_select, rded_select
from ltdistill.statistical.recover import RecoverSettings, recover, statistic_loss


def _bn_net(seed: int = 0, channels: int = 1, size: int = 8) -> torch.nn.Module:
    net = build_model(ModelSpec("convnet3", channels, 3, size, width=4, norm="batch"), seed)
    return net.eval()


def _toy(seed: int = 0, counts=(7, 4, 2)):
    g = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    x = torch.randn(len(labels), 1, 8, 8, generator=g) + labels.view(-1, 1, 1, 1).float()
    return x, labels


def _direct_inputs(net, x):
    with torch.no_grad(), record_bn_inputs(net) as store:
        net(x)
        return [s.double() for s in store]


# --- fair BN recalibration ------------------------------------------------------------------

def test_recalibrated_statistics_equal_exact_class_statistics_in_any_order():
    net = _bn_net()
    x, y = _toy()
    inputs = _direct_inputs(net, x)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(3))
    a = recalibrate(net, x, y, 3, batch_size=3)
    b = recalibrate(net, x, y, 3, batch_size=5, order=perm)
    assert a.counts.tolist() == [7, 4, 2]
    for li, inp in enumerate(inputs):
        for c in range(3):
            xc = inp[y == c].transpose(0, 1).flatten(1)  # ch x (n_c H W)
            mean, var = xc.mean(1), xc.var(1, unbiased=False)
            for s in (a, b):
                assert torch.allclose(s.mean[li][c], mean, atol=1e-6)
                assert torch.allclose(s.var_pooled[li][c], var, atol=1e-6)  # pooled: exact
    # global targets: unweighted class averages; mixture adds the between-class spread
    for li in range(len(inputs)):
        mu, var = a.global_targets("pooled")[li]
        assert torch.allclose(mu.double(), a.mean[li].mean(0), atol=1e-6)
        assert torch.allclose(var.double(), a.var_pooled[li].mean(0), atol=1e-6)
        _, var_mix = a.global_targets("mixture")[li]
        spread = (a.mean[li] - a.mean[li].mean(0)).pow(2).mean(0)
        assert torch.allclose(var_mix.double(), a.var_pooled[li].mean(0) + spread, atol=1e-6)
        _, var_p = a.global_targets("paper")[li]
        assert torch.allclose(var_p.double(), a.var_paper[li].mean(0), atol=1e-6)


def test_paper_variance_is_the_count_weighted_average_of_batch_variances():
    net = _bn_net(1)
    x, y = _toy(1)
    stats = recalibrate(net, x, y, 3, batch_size=4)
    inputs = _direct_inputs(net, x)
    for li, inp in enumerate(inputs):
        for c in range(3):
            acc, n = torch.zeros(inp.shape[1], dtype=torch.float64), 0
            for start in range(0, len(y), 4):
                sel = inp[start:start + 4][y[start:start + 4] == c]
                if len(sel):
                    v = sel.transpose(0, 1).flatten(1).var(1, unbiased=False)
                    acc += len(sel) * v
                    n += len(sel)
            assert torch.allclose(stats.var_paper[li][c], acc / n, atol=1e-6)
            # within-batch variances only: never above the exact pooled variance here
            assert (stats.var_paper[li][c] <= stats.var_pooled[li][c] + 1e-9).all()


def test_recalibration_leaves_the_observer_untouched_and_round_trips(tmp_path):
    net = _bn_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x, y = _toy()
    stats = recalibrate(net, x, y, 3, batch_size=5)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    stats.save(tmp_path / "s.pt")
    loaded, _ = BNStats.load(tmp_path / "s.pt")
    assert loaded.layer_names == stats.layer_names
    assert torch.equal(loaded.var_paper[1], stats.var_paper[1])
    with pytest.raises(ValueError, match="bn_var"):
        stats.global_targets("median")


# --- initialisation -------------------------------------------------------------------------

def test_multiround_select_by_hand():
    scores = torch.tensor([[0.1, 0.9, 0.5],
                           [0.9, 0.2, 0.2],  # ties with image 0's best: image 0 first
                           [0.3, 0.3, 0.8]])
    picks = multiround_select(scores, 5)
    # round 1: offers 0.9 (img 0, crop 1), 0.9 (img 1, crop 0), 0.8 (img 2, crop 2) -> all fit
    # round 2: offers 0.5 (0, 2), 0.2 (1, 1: lowest crop index on ties), 0.3 (2, 0) -> top 2
    assert picks == [(0, 1), (1, 0), (2, 2), (0, 2), (2, 0)]
    # a pool of n x m crops is used up exactly once before anything repeats
    everything = multiround_select(scores, 9)
    assert sorted(everything) == [(i, j) for i in range(3) for j in range(3)]
    assert multiround_select(scores, 12) == everything  # exhausted pool: no reuse
    # RDED: one round, then cycle through the ranked best crops
    assert rded_select(scores, 5) == [(0, 1), (1, 0), (2, 2), (0, 1), (1, 0)]


def test_initialisation_fills_every_class_to_ipc_without_reusing_crops(toy_data):
    teacher = build_model(ModelSpec("convnet3", 1, 4, 8, width=4, norm="batch"), 0).eval()
    ipc = 5  # the toy tail class has 2 images (< IPC)
    x, y, src = initialise(toy_data.train_images, toy_data.train_labels, 4, ipc, "multiround",
                           seed=0, teacher=teacher, num_crops=2)
    assert torch.bincount(y, minlength=4).tolist() == [ipc] * 4
    assert x.shape == (4 * ipc, 1, 8, 8) and torch.isfinite(x).all()
    for c in range(4):
        rows = [tuple(s[1:3]) for s in src if s[0] == c]
        assert len(set(rows)) == ipc  # (image, crop) candidates never repeat
        imgs = {r[0] for r in rows}
        assert imgs <= set(torch.nonzero(toy_data.train_labels == c).flatten().tolist())
    tail = [s[1] for s in src if s[0] == 3]
    # rounds: both tail images are used before either is used a third time
    assert sorted(tail[:4]) == sorted(sorted(set(tail)) * 2)
    again = initialise(toy_data.train_images, toy_data.train_labels, 4, ipc, "multiround",
                       seed=0, teacher=teacher, num_crops=2)
    assert torch.equal(again[0], x) and again[2] == src  # seeded crop sampler
    other = initialise(toy_data.train_images, toy_data.train_labels, 4, ipc, "multiround",
                       seed=1, teacher=teacher, num_crops=2)
    assert not torch.equal(other[0], x)
    for mode in ("rded", "random_crop", "noise"):
        xm, ym, _ = initialise(toy_data.train_images, toy_data.train_labels, 4, ipc, mode, 0,
                               teacher=teacher, num_crops=2)
        assert torch.bincount(ym, minlength=4).tolist() == [ipc] * 4, mode


def test_crop_resize_identity_and_flip():
    x = torch.arange(2 * 16, dtype=torch.float32).view(2, 1, 4, 4)
    full = torch.tensor([[0.0, 0.0, 4.0, 4.0]] * 2)
    assert torch.allclose(crop_resize(x, full), x, atol=1e-5)
    flipped = crop_resize(x, full, flip=torch.tensor([True, False]))
    assert torch.allclose(flipped[0], x[0].flip(-1), atol=1e-5)
    assert torch.allclose(flipped[1], x[1], atol=1e-5)
    g = torch.Generator().manual_seed(0)
    boxes = sample_crop_boxes(200, 28, 28, (0.08, 1.0), (1.0, 1.0), g)
    area = boxes[:, 2] * boxes[:, 3] / 784
    assert (boxes[:, 2] == boxes[:, 3]).all() and (area <= 1).all() and (area >= 0.05).all()
    assert (boxes[:, 0] + boxes[:, 2] <= 28).all() and (boxes[:, 1] + boxes[:, 3] <= 28).all()


def test_rand_augment_is_seeded_and_keeps_uint8():
    x = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8)
    a = rand_augment(x, torch.Generator().manual_seed(0))
    b = rand_augment(x, torch.Generator().manual_seed(0))
    assert a.dtype == torch.uint8 and a.shape == x.shape and torch.equal(a, b)


# --- GLMC loss --------------------------------------------------------------------------------

def test_class_weights_sum_to_num_classes():
    w = class_weights([3, 1], q=1.0)  # ∝ [1/3, 1] -> [0.5, 1.5]
    assert torch.allclose(w, torch.tensor([0.5, 1.5]))


def test_glmc_loss_against_hand_computation():
    def lsm(a, b):  # log-softmax of a 2-logit row
        m = math.log(math.exp(a) + math.exp(b))
        return a - m, b - m

    fc1 = torch.tensor([[1.0, 0.0]])
    cb1 = torch.tensor([[0.0, 2.0]])
    fc2 = torch.tensor([[0.5, 0.5]])
    cb2 = torch.tensor([[1.0, -1.0]])
    z1, p1 = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]])
    z2, p2 = torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]])
    y1, y2 = torch.tensor([[0.25, 0.75]]), torch.tensor([[1.0, 0.0]])
    w = torch.tensor([0.5, 1.5])
    progress, gamma1, gamma2 = 0.5, 2.0, 1.0
    a = progress ** 2

    def ce(logits, y, wt=(1.0, 1.0)):
        l0, l1 = lsm(*logits[0].tolist())
        return -(wt[0] * y[0, 0].item() * l0 + wt[1] * y[0, 1].item() * l1)

    cls = (1 - a) * (ce(fc1, y1) + ce(fc2, y2)) + a * (ce(cb1, y1, (0.5, 1.5)) + ce(cb2, y2, (0.5, 1.5)))
    # cos(p1, z2) = 1/sqrt(2); cos(p2, z1) = 1
    cons = -(1 / math.sqrt(2) + 1.0)
    total, parts = glmc_loss((fc1, cb1, z1, p1), (fc2, cb2, z2, p2), y1, y2, w, progress,
                             gamma1, gamma2)
    assert parts["cls"] == pytest.approx(cls, rel=1e-6)
    assert parts["cons"] == pytest.approx(cons, rel=1e-6)
    assert float(total) == pytest.approx(gamma2 * cls + gamma1 * cons, rel=1e-6)


def test_consistency_stop_gradient_switch():
    z1 = torch.randn(3, 4, requires_grad=True)
    p1 = torch.randn(3, 4, requires_grad=True)
    z2 = torch.randn(3, 4, requires_grad=True)
    p2 = torch.randn(3, 4, requires_grad=True)
    consistency_loss(z1, p1, z2, p2, "z").backward()
    assert z1.grad is None and z2.grad is None and p1.grad is not None
    for t in (z1, p1, z2, p2):
        t.grad = None
    consistency_loss(z1, p1, z2, p2, "p").backward()
    assert p1.grad is None and p2.grad is None and z1.grad is not None


def test_expert_training_is_deterministic_and_rejects_non_bn(toy_data):
    cfg = ExpertConfig(arch="convnet3", width=4, epochs=1, batch_size=16, proj_dim=4)
    spec = expert_spec(cfg, 1, 4, 8)
    a = train_expert(toy_data.train_images, toy_data.train_labels, toy_data.counts, spec, cfg, 7)
    b = train_expert(toy_data.train_images, toy_data.train_labels, toy_data.counts, spec, cfg, 7)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    assert not a.training
    with pytest.raises(ValueError, match="batch"):
        ExpertConfig(norm="instance")


# --- recovery -------------------------------------------------------------------------------

def test_recovery_reduces_the_statistic_matching_loss(toy_data):
    cfg = ExpertConfig(loss="ce", arch="convnet3", width=4, epochs=2, batch_size=16)
    spec = expert_spec(cfg, 1, 4, 8)
    obs = train_expert(toy_data.train_images, toy_data.train_labels, toy_data.counts, spec, cfg, 0)
    stats = recalibrate(obs, toy_data.train_images, toy_data.train_labels, 4, 8)
    glob, cls = stats.global_targets("paper"), stats.class_targets("paper")
    labels = torch.arange(4).repeat(2)
    init = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    settings = RecoverSettings(iterations=40, lr=0.1, ce_weight=0.0, r_bn=1.0, augment="none",
                               flip=False)
    before = statistic_loss(obs, init, labels, glob, cls)
    out, _ = recover(obs, init, labels, settings, seed=0, global_targets=glob, class_targets=cls,
                     bounds=(torch.tensor([-1.0]), torch.tensor([2.0])))
    after = statistic_loss(obs, out, labels, glob, cls)
    assert after < 0.7 * before
    assert out.min() >= -1.0 and out.max() <= 2.0  # clamped to the valid range
    again, _ = recover(obs, init, labels, settings, seed=0, global_targets=glob,
                       class_targets=cls, bounds=(torch.tensor([-1.0]), torch.tensor([2.0])))
    assert torch.equal(out, again)


# --- Protocol B -------------------------------------------------------------------------------

def test_cos2_schedule_values():
    e = 12
    assert cos2_factor(0, e) == pytest.approx(1.0)
    assert cos2_factor(6, e) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    at = 0.5 * (1 + math.cos(5 * math.pi / 12))  # 0.62941
    assert cos2_factor(10, e) == pytest.approx(at)  # e = 5E/6: still the cosine branch
    assert cos2_factor(11, e) == pytest.approx(at * (1 - 11 / 12))
    assert at == pytest.approx(0.629409522, rel=1e-8)


def test_kd_loss_by_hand():
    s = torch.tensor([[1.0, 0.0]])
    t = torch.tensor([[0.0, 1.0]])
    y = torch.tensor([0])
    ce = math.log(1 + math.exp(-1.0))
    assert float(kd_loss(s, t, y, 0.025, 1.0)) == pytest.approx(1.0 + 0.025 * ce)
    assert float(kd_loss(s, None, y)) == pytest.approx(ce)


def test_ema_update():
    m = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        m.weight.fill_(1.0)
    ema = EMA(m, 0.9)
    with torch.no_grad():
        m.weight.fill_(3.0)
    ema.update(m)
    assert float(ema.model.weight) == pytest.approx(0.9 * 1 + 0.1 * 3)


def test_protocol_b_is_deterministic_with_online_and_static_labels(toy_data):
    spec = ModelSpec("convnet3", 1, 4, 8, width=4)
    teacher = build_model(ModelSpec("convnet3", 1, 4, 8, width=4, norm="batch"), 3).eval()
    x, y = toy_data.train_images[:12], toy_data.train_labels[:12]
    recipe = TrainRecipe(epochs=2, batch_size=5, protocol="b", momentum=0.875)
    prep = toy_data.preprocessing

    def run(seed, **kw):
        return train_protocol_b(spec, x, y, recipe=recipe, lr=0.1, seed=seed, device="cpu",
                                preprocessing=prep, **kw)

    a, b, c = run(0, teacher=teacher), run(0, teacher=teacher), run(1, teacher=teacher)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    static = run(0, static_logits=torch.randn(12, 4))
    assert all(torch.isfinite(v).all() for v in static.state_dict().values())
    assert TrainRecipe(epochs=1, batch_size=1).protocol == "a"  # Protocol A stays the default
    with pytest.raises(ValueError, match="protocol"):
        TrainRecipe(epochs=1, batch_size=1, protocol="c")


def test_evaluate_image_set_runs_protocol_b_with_a_teacher_artifact(toy_data, tmp_path):
    from ltdistill.evaluation.evaluate import evaluate_image_set
    from ltdistill.io import ImageSet
    from ltdistill.statistical.expert_io import save_expert

    tspec = ModelSpec("convnet3", 1, 4, 8, width=4, norm="batch")
    save_expert(tmp_path / "t.pt", build_model(tspec, 0), tspec,
                {"class_names": toy_data.class_names,
                 "preprocessing": toy_data.preprocessing.describe()})
    s = ImageSet(toy_data.train_images[:8], toy_data.train_labels[:8], 4,
                 soft_labels=torch.randn(8, 4), meta={"label_mode": "online"})
    spec = ModelSpec("convnet3", 1, 4, 8, width=4)
    recipe = TrainRecipe(epochs=1, batch_size=4, protocol="b", lr=0.1, momentum=0.875)
    out = evaluate_image_set(s, toy_data, spec, recipe, 0, artifacts={"teacher": tmp_path / "t.pt"})
    assert out["protocol"] == "b" and out["label_source"] == "online" and out["passes"] == 1
    static = TrainRecipe(epochs=1, batch_size=4, protocol="b", lr=0.1, label_source="static")
    assert evaluate_image_set(s, toy_data, spec, static, 0)["soft_labels_used"]
    with pytest.raises(ValueError, match="teacher"):
        evaluate_image_set(s, toy_data, spec, recipe, 0)
