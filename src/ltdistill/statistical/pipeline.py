"""Workflow stages of the statistical family over paths (each thin script calls one of these),
and the helper the rules use to find which expert kinds a method reads."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..config import ConfigError, from_dict
from ..data.prepared import load_prepared
from ..evaluation.train import predict
from ..pipeline import resolve_device
from ..provenance import Stopwatch, provenance
from ..seeding import derive_seed
from .expert_io import load_expert_model, save_expert
from .glmc import expert_config, expert_spec, train_expert

log = logging.getLogger("ltdistill.statistical.pipeline")

EXPERT_PREFIXES = ("observer_", "teacher_")


def is_statistical_kind(kind: str) -> bool:
    return kind.startswith(EXPERT_PREFIXES)


def check_experts(experts: dict[str, Any]) -> None:
    """Validate every observer_* / teacher_* entry of `experts:` against its typed config."""
    for kind, params in (experts or {}).items():
        if is_statistical_kind(kind):
            expert_config(params, where=f"experts.{kind}")


def expert_kinds(method_params: dict[str, Any], slug: str) -> dict[str, str]:
    """{"observer": kind, "teacher": kind} that method `slug` (or its variant) reads."""
    from ..methods import get_method

    params = dict(method_params.get(slug) or {})
    registered = params.pop("method", slug)
    entry = get_method(registered)
    cfg = from_dict(entry.config_cls, params, where=f"method_params.{slug}")
    if not hasattr(cfg, "expert_kinds"):
        raise ConfigError(f"method '{slug}' ({registered}) reads no observer/teacher experts")
    return cfg.expert_kinds()


def protocol_b_teacher_kind(method_params: dict[str, Any], slug: str, default: str) -> str:
    """The teacher of Protocol B: the method's own teacher if it has one, else `default`."""
    try:
        return expert_kinds(method_params, slug)["teacher"]
    except ConfigError:
        return default


def train_statistical_expert(cache: str | Path, split: str | Path, preprocessing: str | Path,
                             kind: str, params: dict[str, Any], dataset: str, device: str,
                             out: str | Path, checkpoint_every_s: float | None = None) -> None:
    """Train one observer/teacher (GLMC or CE) on the LT split and save it with its test top-1.
    With `checkpoint_every_s` a killed job resumes from `{out}.ckpt`."""
    from ..checkpoint import Checkpointer
    from ..io import tensor_digest
    from ..pipeline import checkpoint_path

    clock = Stopwatch()
    dev = resolve_device(device)
    data = load_prepared(cache, split, preprocessing)
    cfg = expert_config(params, dataset, where=f"experts.{kind}")
    spec = expert_spec(cfg, data.channels, data.num_classes, data.image_size)
    seed = derive_seed("statistical-expert", kind, cfg.seed)
    ckpt = None
    if checkpoint_every_s is not None:
        ckpt = Checkpointer(checkpoint_path(out), checkpoint_every_s, fingerprint={
            "kind": kind, "config": asdict(cfg), "spec": asdict(spec), "seed": seed,
            "images": tensor_digest(data.train_images), "labels": tensor_digest(data.train_labels)})
    model = train_expert(data.train_images, data.train_labels, data.counts, spec, cfg, seed, dev,
                         label=kind, ckpt=ckpt)
    acc = float((predict(model.to(dev), data.test_images).cpu() == data.test_labels).float().mean())
    log.info("%s: balanced test top-1 %.4f", kind, acc)
    save_expert(out, model.cpu(), spec, {
        "kind": kind, "loss": cfg.loss, "head": "fc_cb" if cfg.loss == "glmc" else "fc",
        "test_top1": acc, "config": asdict(cfg), "seed": seed, "class_names": data.class_names,
        "counts": data.counts, "preprocessing": data.preprocessing.describe(),
        "provenance": provenance(dev, clock.elapsed)})
    if ckpt is not None:
        ckpt.finish()


def bn_recalibrate(cache: str | Path, split: str | Path, preprocessing: str | Path,
                   observer: str | Path, params: dict[str, Any], dataset: str, device: str,
                   out: str | Path) -> None:
    """Fair per-class BN recalibration of a frozen observer over the whole LT split."""
    from ..seeding import generator
    from .augment import random_crop_pad, random_flip
    from .bn_recal import recalibrate

    clock = Stopwatch()
    dev = resolve_device(device)
    data = load_prepared(cache, split, preprocessing)
    cfg = expert_config(params, dataset)
    model, _, meta = load_expert_model(observer, str(dev))
    augment = None
    if cfg.bn_recal_augment:
        g = generator("bn-recal", meta.get("seed", 0))

        def augment(x):
            return random_flip(random_crop_pad(x, g, cfg.crop_padding), g)

    stats = recalibrate(model, data.train_images, data.train_labels, data.num_classes,
                        cfg.bn_recal_batch_size, dev, augment=augment)
    stats.save(out, {"observer": str(observer), "observer_kind": meta.get("kind"),
                     "augment": cfg.bn_recal_augment, "batch_size": cfg.bn_recal_batch_size,
                     "class_names": data.class_names,
                     "provenance": provenance(dev, clock.elapsed)})
    log.info("bn statistics for %d layers, counts %s (%.1fs)", len(stats.layer_names),
             stats.counts.tolist(), clock.elapsed)
