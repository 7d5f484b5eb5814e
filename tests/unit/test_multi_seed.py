"""Several evaluation seeds at once: the vmapped trainer (torch.func over stacked parameters)
gives, seed for seed, the models that separate train_classifier calls give (tight tolerance), and
the mode switch picks vmapping only where it is exact. Run: pytest tests/unit/test_multi_seed.py"""

from __future__ import annotations

import pytest
import torch

from ltdistill.evaluation.multi_seed import train_classifiers, vmap_applies
from ltdistill.evaluation.train import TrainRecipe, train_classifier
from ltdistill.models import ModelSpec, build_model

SPEC = ModelSpec("convnet3", 1, 4, 28, width=4)


def _flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _toy(n=20):
    g = torch.Generator().manual_seed(5)
    return torch.randn(n, 1, 28, 28, generator=g), torch.arange(n) % 4, torch.randn(n, 4,
                                                                                      generator=g)


@pytest.mark.parametrize("soft", [False, True])
def test_vmapped_seeds_equal_sequential_training(soft):
    x, y, t = _toy()
    recipe = TrainRecipe(epochs=3, batch_size=8)  # 3 batches per epoch, the last one short
    kw = dict(recipe=recipe, lr=0.05, device="cpu", soft_labels=t if soft else None,
              class_weights=torch.tensor([1.0, 2.0, 0.5, 1.0]))
    seeds = [0, 1, 2]
    batched = train_classifiers(SPEC, x, y, seeds=seeds, mode="vmap", **kw)
    for seed, model in zip(seeds, batched, strict=True):
        alone = train_classifier(SPEC, x, y, seed=seed, **kw)
        assert not torch.equal(_flat(alone), _flat(build_model(SPEC, seed)))  # it trained
        assert torch.allclose(_flat(model), _flat(alone), rtol=1e-4, atol=1e-5), seed
    assert not torch.allclose(_flat(batched[0]), _flat(batched[1]))  # seeds stay distinct


def test_vmapped_training_resumes_bit_identically(tmp_path, monkeypatch):
    from ltdistill import checkpoint as C

    x, y, _ = _toy()
    kw = dict(recipe=TrainRecipe(epochs=3, batch_size=8), lr=0.05, seeds=[3, 4], device="cpu",
              mode="vmap")
    reference = [_flat(m) for m in train_classifiers(SPEC, x, y, **kw)]
    path = tmp_path / "v.ckpt"
    real_save = C.Checkpointer.save

    def save_then_die(self, done):
        real_save(self, done)
        if done == 3:  # after the lr decay (epoch E//2 + 1 = 2)
            raise KeyboardInterrupt

    monkeypatch.setattr(C.Checkpointer, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_classifiers(SPEC, x, y, ckpts=[C.Checkpointer(path, 0.0, "v"), None], **kw)
    monkeypatch.setattr(C.Checkpointer, "save", real_save)
    resumed = train_classifiers(SPEC, x, y, ckpts=[C.Checkpointer(path, 0.0, "v"), None], **kw)
    assert all(torch.equal(a, _flat(b)) for a, b in zip(reference, resumed, strict=True))


def test_mode_switch_and_bad_seeds():
    bn = ModelSpec("convnet3", 1, 4, 28, width=4, norm="batch")
    assert vmap_applies(SPEC, "cuda") and not vmap_applies(SPEC, "cpu")  # auto: GPU only
    assert vmap_applies(SPEC, "cpu", "vmap") and not vmap_applies(SPEC, "cuda", "sequential")
    assert not vmap_applies(bn, "cuda", "vmap")  # batch statistics: never vmapped
    with pytest.raises(ValueError, match="auto, vmap, sequential"):
        vmap_applies(SPEC, "cpu", "fast")
    x, y, _ = _toy(8)
    with pytest.raises(ValueError, match="distinct"):
        train_classifiers(SPEC, x, y, recipe=TrainRecipe(epochs=1, batch_size=4), lr=0.1,
                          seeds=[1, 1], device="cpu")
