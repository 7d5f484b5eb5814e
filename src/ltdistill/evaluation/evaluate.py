"""Evaluate one image set: train a fresh model with Protocol A and report balanced and LT test
metrics as a JSON-ready dict (accuracies as fractions)."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

import torch

from ..checkpoint import Checkpointer
from ..data.prepared import PreparedData
from ..io import ImageSet
from ..models import ModelSpec
from .metrics import json_ready, metrics_from_predictions
from .train import TrainRecipe, predict, train_classifier


def select_lr(recipe: TrainRecipe, learned_lr: float | None) -> tuple[float, str]:
    """The evaluation lr and where it came from: recipe.lr, else the image set's learned lr,
    else recipe.default_lr. A learned lr that is not a positive finite number is an error."""
    if recipe.lr is not None:
        return float(recipe.lr), "recipe"
    if learned_lr is not None:
        value = float(learned_lr)
        if not (value > 0 and value != float("inf")):
            raise ValueError(f"the image set's learned lr is {learned_lr}; it must be positive. "
                             "The distillation run that produced it is broken")
        return value, "learned"
    return float(recipe.default_lr), "default"


def _check_preprocessing(image_set: ImageSet, data: PreparedData) -> None:
    recorded = image_set.meta.get("preprocessing") if image_set.meta else None
    expected = getattr(getattr(data, "preprocessing", None), "digest", "")
    if isinstance(recorded, dict) and recorded.get("digest") and expected \
            and recorded["digest"] != expected:
        raise ValueError(f"the image set was made in preprocessing {recorded['digest']} but the "
                         f"test data uses {expected}; evaluate with the matching preprocessing")


def _train_protocol_b(image_set: ImageSet, data: PreparedData, spec: ModelSpec,
                      recipe: TrainRecipe, lr: float, seed: int, device: torch.device | str,
                      artifacts: dict[str, Any] | None,
                      ckpt: Checkpointer | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    from ..statistical.expert_io import load_expert_model
    from .protocol_b import resolve_label_source, teacher_preprocessing, train_protocol_b

    source = resolve_label_source(recipe, image_set.meta)
    teacher = teacher_prep = static = None
    info: dict[str, Any] = {"protocol": "b", "label_source": source}
    if source == "online":
        path = (artifacts or {}).get("teacher")
        if path is None:
            raise ValueError("Protocol B with online labels needs artifacts={'teacher': path}")
        teacher, _, meta = load_expert_model(path, str(device))
        names = meta.get("class_names")
        if names is not None and list(names) != list(data.class_names):
            raise ValueError(f"teacher {path} has a different class map than the test data")
        teacher_prep = teacher_preprocessing(meta, data.preprocessing)
        info["teacher"] = str(path)
    elif source == "static":
        if image_set.soft_labels is None:
            raise ValueError("label_source static needs an image set with stored soft labels")
        static = image_set.soft_labels
    model = train_protocol_b(spec, image_set.images, image_set.labels, recipe=recipe, lr=lr,
                             seed=seed, device=device, preprocessing=data.preprocessing,
                             teacher=teacher, teacher_prep=teacher_prep, static_logits=static,
                             progress_label=f"eval B {spec.arch} seed {seed}", ckpt=ckpt)
    return model, info


def _check_compatible(image_set: ImageSet, data: PreparedData, spec: ModelSpec) -> None:
    image_set.validate()
    if spec.num_classes != image_set.num_classes:
        raise ValueError(f"model spec has {spec.num_classes} classes but the image set has "
                         f"{image_set.num_classes}")
    if data.num_classes != image_set.num_classes:
        raise ValueError(f"the test data has {data.num_classes} classes but the image set has "
                         f"{image_set.num_classes}")
    if tuple(image_set.images.shape[1:]) != tuple(data.test_images.shape[1:]):
        raise ValueError(f"image set images are {tuple(image_set.images.shape[1:])} but test "
                         f"images are {tuple(data.test_images.shape[1:])}")
    _check_preprocessing(image_set, data)


def _score(model: torch.nn.Module, image_set: ImageSet, data: PreparedData, spec: ModelSpec,
           recipe: TrainRecipe, seed: int, lr: float, lr_source: str, soft_used: bool,
           seconds: float, extra: dict[str, Any]) -> dict[str, Any]:
    groups = list(data.groups)
    test = metrics_from_predictions(data.test_labels, predict(model, data.test_images),
                                    data.num_classes, groups)
    lt_test = None
    if data.lt_test_images is not None and data.lt_test_labels is not None:
        lt_test = metrics_from_predictions(data.lt_test_labels, predict(model, data.lt_test_images),
                                           data.num_classes, groups)
    return json_ready({
        "lr": lr,
        "lr_source": lr_source,
        "epochs": recipe.epochs,
        "passes": recipe.epochs if recipe.protocol == "b" else recipe.epochs + 1,
        "batch_size": recipe.batch_size,
        "soft_labels_used": soft_used,
        "train_images": int(image_set.images.shape[0]),
        "train_seed": int(seed),
        "model_spec": asdict(spec),
        "train_recipe": asdict(recipe),
        "test": test,
        "lt_test": lt_test,
        "wall_time_s": round(seconds, 3),
        **extra,
    })


def evaluate_image_set(image_set: ImageSet, data: PreparedData, spec: ModelSpec,
                       recipe: TrainRecipe, seed: int,
                       device: torch.device | str = "cpu",
                       artifacts: dict[str, Any] | None = None,
                       ckpt: Checkpointer | None = None) -> dict[str, Any]:
    """Evaluation of `image_set` with one freshly initialised model (seed `seed`): Protocol A, or
    Protocol B when recipe.protocol == "b" (the teacher arrives as artifacts={"teacher": path}).

    Returns {"lr", "lr_source", "epochs", "passes", "batch_size", "soft_labels_used",
    "train_images", "train_seed", "model_spec", "train_recipe", "test": metrics, "lt_test": metrics
    or None, "wall_time_s"}. (No "model"/"recipe" keys: callers use those names for the record
    identity.) Metrics come from metrics_from_predictions (fractions in [0, 1]); undefined
    values (NaN) are stored as null so the dict is strict JSON. `ckpt` makes the training
    resumable (checkpoint.Checkpointer; the caller drops it once the result is written).
    """
    _check_compatible(image_set, data, spec)
    lr, lr_source = select_lr(recipe, image_set.learned_lr)
    soft = image_set.soft_labels if recipe.use_soft_labels else None
    start = time.perf_counter()
    extra: dict[str, Any] = {}
    if recipe.protocol == "b":
        model, extra = _train_protocol_b(image_set, data, spec, recipe, lr, seed, device,
                                         artifacts, ckpt)
        soft = image_set.soft_labels if extra["label_source"] == "static" else None
    else:
        model = train_classifier(spec, image_set.images, image_set.labels, recipe=recipe, lr=lr,
                                 seed=seed, device=device, soft_labels=soft,
                                 progress_label=f"eval {spec.arch} seed {seed}", ckpt=ckpt)
    return _score(model, image_set, data, spec, recipe, seed, lr, lr_source, soft is not None,
                  time.perf_counter() - start, extra)


def evaluate_image_set_seeds(image_set: ImageSet, data: PreparedData, spec: ModelSpec,
                             recipe: TrainRecipe, seeds: list[int],
                             device: torch.device | str = "cpu",
                             artifacts: dict[str, Any] | None = None,
                             ckpts: list[Checkpointer | None] | None = None,
                             mode: str = "auto") -> list[dict[str, Any]]:
    """evaluate_image_set for several seeds in one call: under Protocol A the seeds train as one
    vmapped model where that is exact and faster (multi_seed.py: CUDA with `auto`), otherwise one
    after another. Result s is what evaluate_image_set(..., seeds[s]) returns (its wall_time_s
    is the batch's time divided evenly when vmapped)."""
    from .multi_seed import train_classifiers, vmap_applies

    ckpts = list(ckpts) if ckpts is not None else [None] * len(seeds)
    if recipe.protocol == "b" or not vmap_applies(spec, device, mode) or len(seeds) < 2:
        return [evaluate_image_set(image_set, data, spec, recipe, s, device, artifacts, c)
                for s, c in zip(seeds, ckpts, strict=True)]
    _check_compatible(image_set, data, spec)
    lr, lr_source = select_lr(recipe, image_set.learned_lr)
    soft = image_set.soft_labels if recipe.use_soft_labels else None
    start = time.perf_counter()
    models = train_classifiers(spec, image_set.images, image_set.labels, recipe=recipe, lr=lr,
                               seeds=seeds, device=device, soft_labels=soft, mode=mode,
                               ckpts=ckpts, progress_label=f"eval {spec.arch}")
    share = (time.perf_counter() - start) / len(seeds)
    return [_score(m, image_set, data, spec, recipe, s, lr, lr_source, soft is not None, share,
                   {"seed_batching": "vmap"}) for s, m in zip(seeds, models, strict=True)]
