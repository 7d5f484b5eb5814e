"""The opt-in accelerators (acceleration.py): clear errors for unknown settings, autocast off on
CPU whatever the setting, and torch.compile training the same model as eager training up to float
summation order."""

from __future__ import annotations

import shutil

import pytest
import torch

from ltdistill import acceleration
from ltdistill.evaluation.train import TrainRecipe, train_classifier
from ltdistill.models import ModelSpec, build_model

SPEC = ModelSpec("convnet3", 1, 2, 8, width=8)


@pytest.fixture(autouse=True)
def _reset():
    yield
    acceleration.set_acceleration("off", "off")


def _toy(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(2).repeat_interleave(6)
    means = torch.where(labels == 0, 1.0, -1.0).view(-1, 1, 1, 1)
    return means + 0.5 * torch.randn(12, 1, 8, 8, generator=g), labels


def _train() -> list[torch.Tensor]:
    x, y = _toy()
    recipe = TrainRecipe(epochs=3, batch_size=8, augment=False)
    model = train_classifier(SPEC, x, y, recipe=recipe, lr=0.01, seed=1, device="cpu")
    return [t.detach().clone() for t in model.state_dict().values()]


@pytest.mark.parametrize("amp,compile_,bad", [("fp8", "off", "runtime.amp"),
                                             ("off", "maybe", "runtime.compile")])
def test_unknown_settings_name_the_choices(amp, compile_, bad):
    with pytest.raises(ValueError, match=bad) as err:
        acceleration.set_acceleration(amp, compile_)
    assert "off" in str(err.value)


def test_autocast_is_off_on_cpu_whatever_the_setting():
    acceleration.set_acceleration("bf16", "off")
    with acceleration.autocast("cpu"):
        assert not torch.is_autocast_enabled("cpu")
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    with_amp = _train()
    acceleration.set_acceleration("off", "off")
    assert all(torch.equal(a, b) for a, b in zip(with_amp, _train(), strict=True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_autocast_is_bfloat16_on_cuda():  # pragma: no cover - no GPU in CI
    acceleration.set_acceleration("bf16", "off")
    with acceleration.autocast("cuda"):
        out = torch.ones(4, 4, device="cuda") @ torch.ones(4, 4, device="cuda")
    assert out.dtype == torch.bfloat16


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="torch.compile on CPU needs a C++ compiler")
def test_compiled_training_matches_eager_training():
    eager = _train()
    acceleration.set_acceleration("off", "on")
    assert type(acceleration.compiled(torch.nn.Linear(2, 2))).__name__ == "OptimizedModule"
    compiled = _train()
    moved = max(float((a - b).abs().max()) for a, b in zip(eager, compiled, strict=True))
    assert moved < 1e-4  # fused kernels: another float summation order, not another model
    init = list(build_model(SPEC, 1).state_dict().values())  # train_classifier's start
    # and the training did move the weights (the comparison above is not trivially true)
    assert max(float((a - b).abs().max()) for a, b in zip(eager, init, strict=True)) > 1e-3
