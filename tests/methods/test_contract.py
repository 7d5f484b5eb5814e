"""Contract test over every registered method, on tiny generated long-tailed data.

Checks shapes, label range, finite values, per-class counts under the IPC policy, soft-label
shapes, and identical output for identical seeds. New methods are picked up automatically.
Run: pytest tests/methods -q"""

from __future__ import annotations

import pytest
import torch

from ltdistill.methods import METHODS, DistillContext, get_method, run_method

from .conftest import ARTIFACT_BUILDERS, TINY_PARAMS, toy_spec

get_method("full")  # import every method module so the registry is complete
ALL = METHODS.names()
IPC = 3  # the toy tail class has 2 images: IPC > n_c is exercised


def _ctx(data, seed, artifacts):
    return DistillContext(data=data, ipc=IPC, seed=seed, device=torch.device("cpu"),
                          model=toy_spec(data), artifacts=artifacts)


def _artifacts(name, data, artifact_dir, cache):
    out = {}
    for need in METHODS.get(name).needs:
        if need not in cache:
            cache[need] = ARTIFACT_BUILDERS[need](artifact_dir, data)
        out[need] = cache[need]
    return out


@pytest.mark.parametrize("name", ALL)
def test_method_contract(name, toy_data, artifact_dir, artifact_cache):
    arts = _artifacts(name, toy_data, artifact_dir, artifact_cache)
    params = TINY_PARAMS.get(name, {})
    a = run_method(name, _ctx(toy_data, 0, arts), params)
    b = run_method(name, _ctx(toy_data, 0, arts), params)
    x = toy_data.train_images
    assert a.images.shape[1:] == x.shape[1:]
    assert a.images.dtype == torch.float32
    assert torch.isfinite(a.images).all()
    assert a.labels.dtype == torch.long
    assert 0 <= int(a.labels.min()) and int(a.labels.max()) < toy_data.num_classes
    counts = a.per_class_counts
    if name == "full":
        assert counts == toy_data.counts
    else:
        policy = a.meta.get("ipc_policy")
        expected = [min(IPC, n) if policy == "inherent" else IPC for n in toy_data.counts]
        assert counts == expected, (policy, counts)
    if a.soft_labels is not None:
        assert a.soft_labels.shape == (len(a.labels), toy_data.num_classes)
        assert torch.isfinite(a.soft_labels).all()
    if a.learned_lr is not None:
        assert a.learned_lr > 0
    # same seed, same result
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    if a.soft_labels is not None:
        assert torch.equal(a.soft_labels, b.soft_labels)
    assert a.meta["method"] in (name, METHODS.get(name).name)


def test_unknown_method_lists_known_names(toy_data):
    with pytest.raises(KeyError, match="Known methods: .*random"):
        run_method("no_such_method", _ctx(toy_data, 0, {}), {})


def test_misspelled_method_parameter_is_named(toy_data):
    with pytest.raises(ValueError, match="ipc_polcy.*did you mean 'ipc_policy'"):
        run_method("random", _ctx(toy_data, 0, {}), {"ipc_polcy": "inherent"})


def test_random_differs_across_seeds_and_respects_policies(toy_data):
    a = run_method("random", _ctx(toy_data, 0, {}), {})
    b = run_method("random", _ctx(toy_data, 1, {}), {})
    assert not torch.equal(a.images, b.images)
    dup = run_method("random", _ctx(toy_data, 0, {}), {"ipc_policy": "duplicate"})
    tail = dup.images[dup.labels == 3]
    assert len(tail) == IPC and torch.equal(tail[0], tail[2])  # slot 2 reuses real image 0
    noise = run_method("random", _ctx(toy_data, 0, {}), {"ipc_policy": "noise"})
    assert noise.per_class_counts == [IPC] * 4


def test_selected_images_are_real_training_images(toy_data, artifact_dir, artifact_cache):
    for name in ("random", "herding", "k_center"):
        arts = _artifacts(name, toy_data, artifact_dir, artifact_cache)
        s = run_method(name, _ctx(toy_data, 0, arts), {})
        for img, label in zip(s.images, s.labels, strict=True):
            pool = toy_data.train_images[toy_data.train_labels == label]
            assert (pool == img).flatten(1).all(dim=1).any(), name
        # no duplicates under the inherent policy
        flat = s.images.flatten(1)
        assert len(torch.unique(flat, dim=0)) == len(flat), name
