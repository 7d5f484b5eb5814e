"""Artifacts and tiny hyperparameters for the method contract test.

A method that needs a precomputed artifact registers a builder in ARTIFACT_BUILDERS; a method whose
defaults are paper-sized registers tiny parameters in TINY_PARAMS."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from ltdistill.evaluation.train import TrainRecipe, train_classifier
from ltdistill.models import ModelSpec
from ltdistill.models.io import save_model

from . import statistical_builders, trajectory_builders

TOY_SPEC = dict(arch="convnet3", width=8)


def toy_spec(data) -> ModelSpec:
    return ModelSpec(TOY_SPEC["arch"], data.channels, data.num_classes, data.image_size,
                     width=TOY_SPEC["width"])


def build_feature_model(tmp: Path, data) -> Path:
    spec = toy_spec(data)
    recipe = TrainRecipe(epochs=2, batch_size=16, augment=False)
    model = train_classifier(spec, data.train_images, data.train_labels, recipe=recipe, lr=0.01,
                             seed=0, device="cpu")
    path = tmp / "feature_model.pt"
    save_model(path, model, spec)
    return path


ARTIFACT_BUILDERS: dict[str, Callable[[Path, object], object]] = {
    "feature_model": build_feature_model,
    **trajectory_builders.BUILDERS,
    **statistical_builders.BUILDERS,
}

TINY_PARAMS: dict[str, dict] = {
    "dc": {"iterations": 2, "batch_real": 8, "loops": [[1, 2, 2]]},
    "dsa": {"iterations": 2, "batch_real": 8, "loops": [[1, 2, 2]]},
    "dm": {"iterations": 3, "batch_real": 8},
    **trajectory_builders.PARAMS,
    **statistical_builders.PARAMS,
}


@pytest.fixture(scope="session")
def artifact_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(scope="session")
def artifact_cache() -> dict:
    return {}
