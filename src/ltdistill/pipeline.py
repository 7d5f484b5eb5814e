"""Workflow stages as plain functions over paths: each Snakemake script unpacks its job and calls
exactly one of these. Nothing here imports snakemake or reads config files."""

from __future__ import annotations

import logging
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from .atomic import write_json
from .checkpoint import Checkpointer
from .config import config_hash, from_dict
from .data.base import load_dataset, load_dataset_cache, save_dataset_cache
from .data.long_tail import Split, make_split
from .data.prepared import PreparedData, load_prepared
from .data.preprocess import make_preprocessing, save_preprocessing
from .io import failure_image_set, load_image_set, save_image_set, tensor_digest
from .models import ModelSpec
from .models.io import save_model
from .provenance import Stopwatch, provenance

log = logging.getLogger("ltdistill.pipeline")


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("runtime.device is 'cuda' but no CUDA device is visible; use 'auto' or 'cpu'")
    return device


def network_spec(network: dict[str, Any], data: PreparedData | None = None, *, arch: str | None = None,
                 channels: int | None = None, num_classes: int | None = None,
                 image_size: int | None = None) -> ModelSpec:
    """The ModelSpec of the configured network for a dataset (arch may be overridden for
    cross-architecture evaluation; width only applies to ConvNets)."""
    return ModelSpec(
        arch=arch or network["arch"],
        channels=channels or data.channels,
        num_classes=num_classes or data.num_classes,
        image_size=image_size or data.image_size,
        width=int(network.get("width", 128)),
        norm=(network.get("norms") or {}).get(arch or network["arch"]),
    )


#: dataset options that configure the split and preprocessing, not the loader
SPLIT_KEYS = ("n_max", "selection", "lt_test", "test_floor", "test_per_class", "zca_methods", "zca_eps",
              "dsa_strategy", "preprocessing")


# --- data -----------------------------------------------------------------------------------

def cache_dataset(name: str, options: dict[str, Any], out: str | Path) -> None:
    """Read a dataset from its real on-disk format once and store it as uint8 tensors."""
    opts = dict(options)
    root, download = opts.pop("root", None), bool(opts.pop("download", False))
    for key in SPLIT_KEYS:
        opts.pop(key, None)  # split/preprocessing settings, not loader options
    data = load_dataset(name, root=root, download=download, **opts)
    save_dataset_cache(out, data)
    log.info("cached %s: %s", name, {k: v for k, v in data.describe().items() if k != "class_names"})


def split_dataset(cache: str | Path, imbalance_factor: int, options: dict[str, Any],
                  groups: dict[str, Any], out: str | Path) -> None:
    raw = load_dataset_cache(cache)
    if raw.extra.get("already_long_tailed") and imbalance_factor != 1:
        raise ValueError(f"{raw.name} is already long-tailed; use imbalance factor 1 for it")
    split = make_split(
        raw.name, raw.train_labels.numpy(), raw.test_labels.numpy(), raw.num_classes,
        imbalance_factor, selection=options.get("selection", "damed"), n_max=options.get("n_max"),
        lt_test=bool(options.get("lt_test", False)), test_floor=int(options.get("test_floor", 1)),
        many_above=int(groups.get("many_above", 100)), few_below=int(groups.get("few_below", 20)),
        group_preset=groups.get("preset", "kang"), test_per_class=options.get("test_per_class"),
    )
    split.save(out)
    log.info("split %s IF %d: counts %s (total %d)", raw.name, imbalance_factor, split.counts,
             sum(split.counts))


def fit_preprocessing(cache: str | Path, split: str | Path, kind: str, eps: float,
                      out: str | Path) -> None:
    raw = load_dataset_cache(cache)
    idx = torch.as_tensor(Split.load(split).flat_train_indices())
    prep = make_preprocessing(kind, raw.mean, raw.std, raw.train_images[idx], eps)
    save_preprocessing(out, prep)


# --- training a reference network on the full LT split -------------------------------------

def train_reference(cache: str | Path, split: str | Path, preprocessing: str | Path,
                    network: dict[str, Any], recipe: dict[str, Any], seed: int, device: str,
                    dsa_strategy: str, out: str | Path,
                    checkpoint_every_s: float | None = None) -> None:
    """The ConvNet trained on the full LT split: features for herding, k-center, t-SNE and the
    two-stage grouping. With `checkpoint_every_s` a killed job resumes from `{out}.ckpt`."""
    from .evaluation.train import TrainRecipe, predict, train_classifier

    clock = Stopwatch()
    dev = resolve_device(device)
    data = load_prepared(cache, split, preprocessing)
    spec = network_spec(network, data)
    rec = from_dict(TrainRecipe, {"dsa_strategy": dsa_strategy, **recipe}, where="reference")
    ckpt = None
    if checkpoint_every_s is not None:
        ckpt = Checkpointer(checkpoint_path(out), checkpoint_every_s, fingerprint={
            "reference": asdict(rec), "spec": asdict(spec), "seed": int(seed),
            "images": tensor_digest(data.train_images), "labels": tensor_digest(data.train_labels)})
    model = train_classifier(spec, data.train_images, data.train_labels, recipe=rec,
                             lr=rec.lr or rec.default_lr, seed=seed, device=dev,
                             progress_label="reference", ckpt=ckpt)
    acc = float((predict(model, data.test_images.to(dev)).cpu() == data.test_labels).float().mean())
    log.info("reference model test top-1 %.4f", acc)
    save_model(out, model.cpu(), spec, {"test_top1": acc, "recipe": asdict(rec), "seed": seed,
                                        "provenance": provenance(dev, clock.elapsed)})
    if ckpt is not None:
        ckpt.finish()


# --- distillation ---------------------------------------------------------------------------

def checkpoint_path(out: str | Path) -> Path:
    """Where a job writing `out` keeps its checkpoint: next to it, so a rerun finds it."""
    return Path(f"{out}.ckpt")


def distill(cache: str | Path, split: str | Path, preprocessing: str | Path, method: str,
            params: dict[str, Any], ipc: int, seed: int, network: dict[str, Any], device: str,
            artifacts: dict[str, Any], out: str | Path, identity: dict[str, Any],
            checkpoint_every_s: float = 600.0) -> None:
    """Run one registered method and write its image set (atomically) with provenance. A method
    that diverges (FloatingPointError) or cannot run on this grid point (MethodCannotRun) leaves a
    failure record in the same file instead, so the rest of the DAG completes and the tables
    show "–" with the reason."""
    from .methods import DistillContext, run_method
    from .methods.base import METHOD_FAILURES, MethodCannotRun

    clock = Stopwatch()
    dev = resolve_device(device)
    data = load_prepared(cache, split, preprocessing)
    params = dict(params)
    registered = params.pop("method", method)
    ctx = DistillContext(data=data, ipc=int(ipc), seed=int(seed), device=dev,
                         model=network_spec(network, data), artifacts=artifacts,
                         checkpoint_path=checkpoint_path(out),
                         checkpoint_every_s=float(checkpoint_every_s))
    log.info("distilling %s (registered %s) ipc %d seed %d on %s", method, registered, ipc, seed, dev)
    try:
        image_set = run_method(registered, ctx, params)
    except METHOD_FAILURES as exc:
        kind = "cannot_run" if isinstance(exc, MethodCannotRun) else "diverged"
        reason = f"{method} {'cannot run' if kind == 'cannot_run' else 'diverged'}: {exc}"
        log.error("FAILED %s (%s); writing a failure record instead of an image set", reason,
                  type(exc).__name__)
        image_set = failure_image_set(data.num_classes, tuple(data.train_images.shape[1:]), kind,
                                      reason, ctx.base_meta(method))
    image_set.meta.update(identity)
    image_set.meta["method"] = method
    image_set.meta["registered_method"] = registered
    image_set.meta["params"] = params
    image_set.meta["config_hash"] = config_hash(params)
    image_set.meta["per_class_counts"] = image_set.per_class_counts
    image_set.meta["provenance"] = provenance(dev, clock.elapsed, {"method_params": params,
                                                                   "network": network})
    save_image_set(out, image_set)
    checkpoint_path(out).unlink(missing_ok=True)  # a failure record leaves none behind either
    if not image_set.failed:
        log.info("wrote %d images (%s per class) in %.1fs", len(image_set.labels),
                 image_set.per_class_counts, clock.elapsed)


# --- evaluation -----------------------------------------------------------------------------

def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    return obj


def failed_record(identity: dict[str, Any], image_set, device: torch.device, seconds: float,
                  settings: dict[str, Any]) -> dict[str, Any]:
    """The metrics record of an evaluation whose image set is a failure record."""
    return {**identity, "status": "failed", "reason": image_set.failure_reason,
            "failure": image_set.meta.get("failure"),
            "provenance": provenance(device, seconds, settings)}


def evaluate(image_set_path: str | Path, cache: str | Path, split: str | Path,
             preprocessing: str | Path, network: dict[str, Any], arch: str, recipe: dict[str, Any],
             seed: int | list[int], device: str, identity: dict[str, Any],
             out: str | Path | list[str | Path], artifacts: dict[str, Any] | None = None,
             checkpoint_every_s: float | None = None, seed_batching: str = "auto") -> None:
    """Train fresh models on an image set and write one self-describing metrics JSON per seed.
    `seed`/`out` are one seed and path, or equally long lists (one job for several seeds: the data
    and image set load once; `seed_batching` auto | vmap | sequential, evaluation/multi_seed.py).
    `artifacts` are extra inputs a recipe reads (e.g. the Protocol B teacher). With
    `checkpoint_every_s` training checkpoints to `{out}.ckpt` and a killed job resumes."""
    from .evaluation.evaluate import evaluate_image_set_seeds
    from .evaluation.train import TrainRecipe

    seeds = [int(s) for s in seed] if isinstance(seed, (list, tuple)) else [int(seed)]
    outs = [Path(o) for o in out] if isinstance(out, (list, tuple)) else [Path(out)]
    if len(seeds) != len(outs):
        raise ValueError(f"{len(seeds)} evaluation seeds but {len(outs)} output paths")
    clock = Stopwatch()
    dev = resolve_device(device)
    data = load_prepared(cache, split, preprocessing)
    image_set = load_image_set(image_set_path)
    rec = from_dict(TrainRecipe, recipe, where="evaluation")
    identities = [{**identity, "eval_seed": s} for s in seeds]
    if image_set.failed:
        for ident, path in zip(identities, outs, strict=True):
            write_json(path, failed_record(ident, image_set, dev, clock.elapsed,
                                           {"recipe": asdict(rec)}))
        log.warning("%s: image set is a failure record (%s); nothing to train", identity,
                    image_set.failure_reason)
        return
    spec = network_spec(network, data, arch=arch)
    ckpts = [None] * len(seeds)
    if checkpoint_every_s is not None:
        ckpts = [Checkpointer(checkpoint_path(path), checkpoint_every_s, fingerprint={
            **ident, "recipe": asdict(rec), "spec": asdict(spec), "seeds": seeds,
            "images": tensor_digest(image_set.images), "labels": tensor_digest(image_set.labels),
            "artifacts": artifacts, "seed_batching": seed_batching})
            for ident, path in zip(identities, outs, strict=True)]
    results = evaluate_image_set_seeds(image_set, data, spec, rec, seeds, dev, artifacts or None,
                                       ckpts, seed_batching)
    for ident, path, result in zip(identities, outs, results, strict=True):
        record = {
            **ident,
            "selection": data.split.selection,
            "num_classes": data.num_classes,
            "class_names": data.class_names,
            "lt_counts": data.counts,
            "groups": data.groups,
            "image_set_counts": image_set.per_class_counts,
            **result,
            "status": "ok",
            "provenance": provenance(dev, clock.elapsed, {
                "recipe": asdict(rec), "network": network, "seeds_in_job": seeds,
                "image_set_meta": image_set.meta.get("params")}),
        }
        write_json(path, _nan_to_none(record))
        log.info("%s: top-1 %.4f (%.1fs)", ident, result["test"]["top1"], clock.elapsed)
    for ckpt in ckpts:  # only once every output is written (a failed job loses none of them)
        if ckpt is not None:
            ckpt.finish()


# --- report inputs --------------------------------------------------------------------------

def tsne_features(cache: str | Path, split: str | Path, preprocessing: str | Path,
                  model_path: str | Path, max_points: int, clusters_per_class: int, seed: int,
                  device: str, out: str | Path) -> None:
    """Test-image features of the reference model, plus per-class k-means centroids of the LT
    training features (the grouping view of the two-stage paper), saved as tensors."""
    from sklearn.cluster import KMeans

    from .io import save_tensors
    from .methods.common import embed_images
    from .models.io import load_model
    from .seeding import generator

    dev = resolve_device(device)
    data = load_prepared(cache, split, preprocessing)
    model, _, _ = load_model(model_path, str(dev))
    g = generator("tsne", seed)
    pick = torch.randperm(len(data.test_labels), generator=g)[:max_points]
    feats = embed_images(model, data.test_images[pick], dev)
    train_feats = embed_images(model, data.train_images, dev)
    centroids = []
    for c in range(data.num_classes):
        fc = train_feats[data.train_labels == c].double().numpy()
        k = min(clusters_per_class, len(fc))
        km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(fc)
        cent = torch.as_tensor(km.cluster_centers_, dtype=torch.float32)
        if k < clusters_per_class:  # pad by repeating so the tensor stays rectangular
            cent = cent[torch.arange(clusters_per_class) % k]
        centroids.append(cent)
    save_tensors(out, {"features": feats, "labels": data.test_labels[pick],
                       "centroids": torch.stack(centroids)},
                 {"class_names": data.class_names, "dataset": data.name,
                  "imbalance_factor": data.split.imbalance_factor})
