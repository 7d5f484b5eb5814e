"""Protocol A training on a tiny separable problem: convergence, determinism, soft CE, lr decay,
lr selection and the hard-label variant."""

import math

import pytest
import torch

from ltdistill.data.prepared import PreparedData
from ltdistill.evaluation import (
    TrainRecipe,
    evaluate_image_set,
    lr_schedule,
    predict,
    select_lr,
    train_classifier,
)
from ltdistill.evaluation.train import decay_epoch, soft_cross_entropy
from ltdistill.io import ImageSet
from ltdistill.models import ModelSpec

SPEC = ModelSpec("convnet3", 1, 2, 8, width=8)


def _toy(n_per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes of 1x8x8 images: mean +1 (class 0) and -1 (class 1), noise 0.5."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(2).repeat_interleave(n_per_class)
    means = torch.where(labels == 0, 1.0, -1.0).view(-1, 1, 1, 1)
    images = means + 0.5 * torch.randn(labels.numel(), 1, 8, 8, generator=g)
    return images, labels


def _recipe(**kw) -> TrainRecipe:
    base = dict(epochs=4, batch_size=8, augment=False)
    base.update(kw)
    return TrainRecipe(**base)


def _data(with_lt: bool = False) -> PreparedData:
    tr_x, tr_y = _toy(20, seed=1)
    te_x, te_y = _toy(10, seed=2)
    lt_x = lt_y = None
    if with_lt:
        lt_x, lt_y = te_x[:13], te_y[:13]  # 10 of class 0, 3 of class 1
    return PreparedData(name="toy", train_images=tr_x, train_labels=tr_y, test_images=te_x,
                        test_labels=te_y, lt_test_images=lt_x, lt_test_labels=lt_y,
                        counts=[20, 5], groups=["few", "few"], class_names=["pos", "neg"],
                        preprocessing=None, split=None)


def test_recipe_validation():
    with pytest.raises(ValueError, match="epochs"):
        TrainRecipe(epochs=0, batch_size=8)
    with pytest.raises(ValueError, match="batch_size"):
        TrainRecipe(epochs=1, batch_size=0)
    with pytest.raises(ValueError, match="lr"):
        TrainRecipe(epochs=1, batch_size=8, lr=0.0)
    assert TrainRecipe(epochs=1, batch_size=8).lr is None


def test_lr_schedule_protocol_a():
    sched = lr_schedule(1000, 0.01, 0.1)
    assert len(sched) == 1001  # epochs 0 ... E
    assert decay_epoch(1000) == 501
    assert sched[501] == 0.01 and sched[502] == pytest.approx(0.001)
    assert sum(1 for v in sched if v == 0.01) == 502
    assert lr_schedule(200, 1.0)[101] == 1.0 and lr_schedule(200, 1.0)[102] == pytest.approx(0.1)
    assert lr_schedule(1, 0.5) == [0.5, 0.5]  # decay after epoch 1 = the last epoch


def test_reaches_full_train_accuracy():
    x, y = _toy(10, seed=0)
    model = train_classifier(SPEC, x, y, recipe=_recipe(epochs=10), lr=0.01, seed=3, device="cpu")
    assert torch.equal(predict(model, x), y)


def test_deterministic_for_seed():
    x, y = _toy(6, seed=0)
    recipe = _recipe(epochs=2, batch_size=5)

    def weights(seed):
        m = train_classifier(SPEC, x, y, recipe=recipe, lr=0.01, seed=seed, device="cpu")
        return [p.detach().clone() for p in m.state_dict().values()]

    a, b, c = weights(7), weights(7), weights(8)
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(a, c, strict=True))


def test_training_leaves_global_rng_untouched():
    x, y = _toy(4, seed=0)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_classifier(SPEC, x, y, recipe=_recipe(epochs=1), lr=0.01, seed=0, device="cpu")
    assert torch.equal(torch.rand(3), expected)


def test_lr_decays_once_and_momentum_restarts():
    x, y = _toy(4, seed=0)
    seen = []  # keep the optimisers alive so their ids stay unique

    def hook(ep, model, opt):
        seen.append((ep, opt, opt.param_groups[0]["lr"], len(opt.state)))

    E, lr = 4, 0.02
    train_classifier(SPEC, x, y, recipe=_recipe(epochs=E, decay_factor=0.5), lr=lr, seed=0,
                     device="cpu", epoch_callback=hook)
    assert [s[0] for s in seen] == list(range(E + 1))  # E + 1 passes
    d = decay_epoch(E)  # 3
    # one optimiser throughout (so it can be checkpointed); at the switch its momentum buffers
    # are cleared, which is all a fresh SGD optimiser (the reference) would change
    assert all(s[1] is seen[0][1] for s in seen)
    assert seen[d][3] == 0  # momentum buffers cleared at the switch
    assert seen[d - 1][3] > 0
    # the lr in effect during epoch ep + 1 is the one set at the end of epoch ep
    sched = lr_schedule(E, lr, 0.5)
    assert [s[2] for s in seen[:-1]] == pytest.approx(sched[1:])


def test_soft_cross_entropy_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    targets = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])  # softmax -> (1/4, 3/4), (1/2, 1/2)
    L = math.log(math.e ** 2 + 1)
    first = -(0.25 * (2 - L) + 0.75 * (-L))  # = L - 0.5
    second = math.log(2.0)
    assert soft_cross_entropy(logits, targets).item() == pytest.approx((first + second) / 2)
    w = torch.tensor([0.2, 0.8])
    first_w = -(0.25 * 0.2 * (2 - L) + 0.75 * 0.8 * (-L))
    second_w = math.log(2.0) * (0.5 * 0.2 + 0.5 * 0.8)
    assert soft_cross_entropy(logits, targets, w).item() == pytest.approx((first_w + second_w) / 2)
    # one-hot-like targets reduce to ordinary cross-entropy
    onehot = torch.tensor([[100.0, 0.0], [0.0, 100.0]])
    ce = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1]))
    assert soft_cross_entropy(logits, onehot).item() == pytest.approx(ce.item())


def test_soft_labels_drive_training():
    x, y = _toy(8, seed=0)
    flipped = torch.nn.functional.one_hot(1 - y, 2).float() * 10  # logits contradicting y
    model = train_classifier(SPEC, x, y, recipe=_recipe(epochs=8), lr=0.01, seed=1,
                             device="cpu", soft_labels=flipped)
    assert torch.equal(predict(model, x), 1 - y)


def test_batchnorm_model_with_batch_larger_than_set():
    x, y = _toy(3, seed=0)
    spec = ModelSpec("convnet3", 1, 2, 8, width=8, norm="batch")
    model = train_classifier(spec, x, y, recipe=_recipe(epochs=1, batch_size=256), lr=0.01,
                             seed=0, device="cpu")
    model.train()
    pred = predict(model, x)
    assert pred.dtype == torch.long and pred.shape == (6,)
    assert model.training  # predict restores the previous mode


def test_with_dsa_augmentation():
    pytest.importorskip("ltdistill.data.augment")
    x = torch.randn(6, 3, 8, 8)
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    spec = ModelSpec("convnet3", 3, 2, 8, width=8)
    recipe = TrainRecipe(epochs=1, batch_size=4, augment=True)
    a = train_classifier(spec, x, y, recipe=recipe, lr=0.01, seed=0, device="cpu")
    b = train_classifier(spec, x, y, recipe=recipe, lr=0.01, seed=0, device="cpu")
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def test_select_lr_rule():
    assert select_lr(_recipe(lr=0.03), 0.05) == (0.03, "recipe")
    assert select_lr(_recipe(), 0.05) == (0.05, "learned")
    assert select_lr(_recipe(), None) == (0.01, "default")
    assert select_lr(_recipe(default_lr=0.2), None) == (0.2, "default")
    with pytest.raises(ValueError, match="learned lr"):
        select_lr(_recipe(), -0.1)
    with pytest.raises(ValueError, match="learned lr"):
        select_lr(_recipe(), 0.0)


def test_evaluate_image_set_lr_and_metrics():
    data = _data(with_lt=True)
    x, y = _toy(5, seed=4)
    learned = ImageSet(x, y, 2, learned_lr=0.05)
    plain = ImageSet(x, y, 2)
    r1 = evaluate_image_set(learned, data, SPEC, _recipe(epochs=1), seed=0)
    assert (r1["lr"], r1["lr_source"]) == (0.05, "learned")
    r2 = evaluate_image_set(learned, data, SPEC, _recipe(epochs=1, lr=0.02), seed=0)
    assert (r2["lr"], r2["lr_source"]) == (0.02, "recipe")
    r3 = evaluate_image_set(plain, data, SPEC, _recipe(epochs=1), seed=0)
    assert (r3["lr"], r3["lr_source"]) == (0.01, "default")
    assert r3["epochs"] == 1 and r3["passes"] == 2 and r3["train_images"] == 10
    assert 0.0 <= r3["test"]["top1"] <= 1.0
    assert r3["test"]["num_images"] == 20 and r3["lt_test"]["num_images"] == 13
    assert set(r3["lt_test"]) >= {"top1", "macro_precision", "macro_recall", "macro_f1",
                                  "per_class"}
    assert r3["test"]["shot"]["many"] is None  # empty group -> NaN -> null
    learned.learned_lr = -1.0  # corrupted after construction: must fail loudly
    with pytest.raises(ValueError, match="positive"):
        evaluate_image_set(learned, data, SPEC, _recipe(epochs=1), seed=0)


def test_hard_label_variant_ignores_soft_labels():
    data = _data()
    x, y = _toy(5, seed=4)
    contradicting = torch.nn.functional.one_hot(1 - y, 2).float() * 10
    soft_set = ImageSet(x, y, 2, soft_labels=contradicting)
    hard_set = ImageSet(x, y, 2)
    hard_recipe = _recipe(epochs=2, use_soft_labels=False)
    r_soft_dropped = evaluate_image_set(soft_set, data, SPEC, hard_recipe, seed=5)
    r_hard = evaluate_image_set(hard_set, data, SPEC, hard_recipe, seed=5)
    assert r_soft_dropped["soft_labels_used"] is False
    assert r_soft_dropped["test"] == r_hard["test"]
    r_soft = evaluate_image_set(soft_set, data, SPEC, _recipe(epochs=2), seed=5)
    assert r_soft["soft_labels_used"] is True
    assert r_soft["test"]["confusion_matrix"] != r_hard["test"]["confusion_matrix"]


def test_evaluate_rejects_class_mismatch():
    x, y = _toy(2, seed=0)
    with pytest.raises(ValueError, match="classes"):
        evaluate_image_set(ImageSet(x, y, 2), _data(), SPEC.with_classes(3), _recipe(), seed=0)


def test_memory_format_choice_follows_the_norm():
    from ltdistill.models import ModelSpec, build_model, preferred_memory_format

    inst = build_model(ModelSpec("convnet3", 1, 10, 28, width=8), seed=0)  # GroupNorm(C, C)
    bn = build_model(ModelSpec("convnet3", 1, 10, 28, width=8, norm="batch"), seed=0)
    assert preferred_memory_format(inst, "cpu") == torch.contiguous_format
    assert preferred_memory_format(bn, "cpu") == torch.channels_last
    assert preferred_memory_format(bn, "cuda") == torch.contiguous_format  # never off CPU
    assert preferred_memory_format(inst, "cpu", True) == torch.channels_last  # forced


def test_channels_last_and_contiguous_training_agree():
    """The fast path (layout chosen per model) trains the same model as the other layout."""
    from ltdistill.evaluation.train import TrainRecipe, train_classifier
    from ltdistill.models import ModelSpec

    spec = ModelSpec("convnet3", 1, 4, 16, width=8)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(12, 1, 16, 16, generator=g), torch.arange(4).repeat(3)
    out = []
    for cl in (True, False):
        recipe = TrainRecipe(epochs=3, batch_size=6, augment=True, channels_last=cl)
        model = train_classifier(spec, x, y, recipe=recipe, lr=0.01, seed=0, device="cpu")
        out.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.allclose(out[0], out[1], atol=1e-5, rtol=1e-4)
