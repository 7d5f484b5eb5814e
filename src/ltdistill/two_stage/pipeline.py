"""Two-stage workflow stages as plain functions over paths; each workflow/scripts/two_stage_*.py
calls exactly one. Nothing here imports snakemake or reads config files: the `two_stage:`
section arrives as a dict and is parsed by `config.two_stage_config`."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ..atomic import read_json, write_json
from ..data.prepared import PreparedData, load_prepared
from ..evaluation.metrics import json_ready
from ..evaluation.train import TrainRecipe, predict, train_classifier
from ..io import ImageSet, load_image_set, load_tensors, save_tensors
from ..methods.common import embed_images
from ..models.io import load_model
from ..pipeline import _nan_to_none, failed_record, network_spec, resolve_device
from ..provenance import Stopwatch, provenance
from ..seeding import derive_seed, generator
from .config import split_variant, two_stage_config
from .grouping import GroupNode, compute_grouping, partition_agreement
from .plugin import (
    StageData,
    TwoStageClassifier,
    load_stage,
    route_groups,
    save_stage,
    train_stage,
    two_stage_metrics,
)

log = logging.getLogger("ltdistill.two_stage.pipeline")


# --------------------------------------------------------------------------- helpers

def _grouping_meta(result: dict[str, Any], data: PreparedData) -> dict[str, Any]:
    """The JSON-ready description of a grouping (everything but the tensors)."""
    counts = data.counts
    groups = result["groups"]
    group_images = [int(sum(counts[c] for c in g)) for g in groups]
    exh = result["exhaustive_objective"]
    obj = result["objective"]
    return json_ready({
        "dataset": data.name,
        "imbalance_factor": data.split.imbalance_factor,
        "num_classes": data.num_classes,
        "class_names": data.class_names,
        "lt_counts": counts,
        "groups": groups,
        "group_names": [[data.class_names[c] for c in g] for g in groups],
        "group_of_class": result["group_of_class"],
        "tree": result["tree"].to_dict(),
        "objective": obj,
        "solver": result["solver"],
        "exhaustive_objective": exh,
        "heuristic_gap": (None if exh is None or obj is None or exh == 0
                          else (exh - obj) / exh),
        "group_images": group_images,
        "group_imbalance": max(group_images) / max(1, min(group_images)),
        "class_imbalance": max(counts) / max(1, min(counts)),
        "centroid_counts": result["centroid_counts"],
    })


def load_grouping(path: str | Path) -> tuple[GroupNode, dict[str, Any]]:
    """(group tree, metadata) of a grouping artifact."""
    _, meta = load_tensors(path)
    return GroupNode.from_dict(meta["tree"]), meta


def _partition_record(meta: dict[str, Any]) -> dict[str, Any]:
    keys = ("groups", "group_names", "group_of_class", "tree", "objective", "solver",
            "exhaustive_objective", "heuristic_gap", "group_images")
    return {k: meta.get(k) for k in keys}


def _check_preprocessing(image_set: ImageSet, data: PreparedData) -> None:
    recorded = (image_set.meta or {}).get("preprocessing")
    expected = getattr(data.preprocessing, "digest", "")
    if isinstance(recorded, dict) and recorded.get("digest") and expected \
            and recorded["digest"] != expected:
        raise ValueError(f"the image set was made in preprocessing {recorded['digest']} but the "
                         f"given test data uses {expected}")


def _stage_data(source: str, data: PreparedData, image_set: ImageSet | None) -> StageData:
    if source == "original":
        return StageData(data.train_images, data.train_labels, data.num_classes,
                         source="original")
    if image_set is None:
        raise ValueError("a distilled data source needs an image set")
    return StageData(image_set.images, image_set.labels, image_set.num_classes,
                     image_set.soft_labels, image_set.learned_lr, source="distilled")


# --------------------------------------------------------------------------- grouping

def grouping(cache: str | Path, split: str | Path, preprocessing: str | Path,
             model_path: str | Path, two_stage: dict[str, Any], device: str,
             out: str | Path, summary: str | Path) -> None:
    """Per-class k-means of the reference model's features of the LT training images, class
    distances and the partition; writes the tensors (centroids C x M x D, D) with the
    description as metadata, and the description plus D as a JSON summary."""
    clock = Stopwatch()
    cfg = two_stage_config(two_stage)
    dev = resolve_device(device)
    data = load_prepared(cache, split, preprocessing)
    model, _, model_meta = load_model(model_path, str(dev))
    feats = embed_images(model, data.train_images, dev)
    result = compute_grouping(feats, data.train_labels, data.num_classes, cfg.kmeans,
                              cfg.partition)
    meta = _grouping_meta(result, data)
    meta.update(extractor={"model": str(model_path), "test_top1": model_meta.get("test_top1"),
                           "feature_dim": int(feats.shape[1])},
                kmeans=asdict(cfg.kmeans), partition_config=asdict(cfg.partition),
                provenance=provenance(dev, clock.elapsed))
    save_tensors(out, {"centroids": result["centroids"], "distance": result["distance"]}, meta)
    write_json(summary, {**meta, "distance": result["distance"].tolist()})
    log.info("grouping %s IF %s: groups %s, objective %.4g (%s)", data.name,
             data.split.imbalance_factor, meta["group_names"], meta["objective"], meta["solver"])


def extractor_view(cache: str | Path, split: str | Path, preprocessing: str | Path,
                   two_stage: dict[str, Any], device: str, out: str | Path, *, view: str,
                   model_path: str | Path | None = None,
                   image_set_path: str | Path | None = None,
                   network: dict[str, Any] | None = None, dsa_strategy: str | None = None) -> None:
    """One extractor's view for the stability check and Figure 1: the grouping of the LT
    training features and the features of a seeded sample of test images. The extractor is
    `model_path` (balanced / LT reference) or a ConvNet trained here on `image_set_path`
    (Protocol A, feature_extractor.distilled_epochs)."""
    clock = Stopwatch()
    cfg = two_stage_config(two_stage)
    dev = resolve_device(device)
    data = load_prepared(cache, split, preprocessing)
    info: dict[str, Any] = {"view": view}
    if (model_path is None) == (image_set_path is None):
        raise ValueError("give exactly one of model_path and image_set_path")
    if model_path is not None:
        model, _, model_meta = load_model(model_path, str(dev))
        info.update(model=str(model_path), test_top1=model_meta.get("test_top1"))
    else:
        image_set = load_image_set(image_set_path)
        _check_preprocessing(image_set, data)
        fe = cfg.feature_extractor
        soft = image_set.soft_labels
        recipe = TrainRecipe(epochs=fe.distilled_epochs, batch_size=fe.batch_size,
                             default_lr=fe.lr, dsa_strategy=dsa_strategy or "",
                             augment=bool(dsa_strategy))
        seed = derive_seed("two_stage-extractor", view)
        model = train_classifier(network_spec(network or {"arch": "convnet"}, data),
                                 image_set.images, image_set.labels, recipe=recipe, lr=fe.lr,
                                 seed=seed, device=dev, soft_labels=soft,
                                 progress_label=f"extractor {view}").eval()
        acc = float((predict(model, data.test_images.to(dev)).cpu() == data.test_labels)
                    .float().mean())
        info.update(image_set=str(image_set_path), test_top1=acc, seed=seed,
                    train_images=len(image_set.labels), recipe=asdict(recipe))
    feats = embed_images(model, data.train_images, dev)
    result = compute_grouping(feats, data.train_labels, data.num_classes, cfg.kmeans,
                              cfg.partition)
    g = generator("two_stage-tsne", cfg.figures.seed)
    pick = torch.randperm(len(data.test_labels), generator=g)[:cfg.figures.max_points]
    pick = pick.sort().values
    test_feats = embed_images(model, data.test_images[pick], dev)
    meta = {**_grouping_meta(result, data), "extractor": info,
            "provenance": provenance(dev, clock.elapsed)}
    save_tensors(out, {"features": test_feats, "labels": data.test_labels[pick],
                       "test_indices": pick, "centroids": result["centroids"],
                       "distance": result["distance"]}, json_ready(meta))
    log.info("view %s: groups %s (test top-1 %s)", view, meta["group_names"], info["test_top1"])


def stability(views: dict[str, str | Path], out: str | Path) -> None:
    """Partition agreement between the groupings of every pair of views (balanced, LT,
    distilled extractors): adjusted Rand index, identical up to relabelling, class-pair
    agreement."""
    metas = {name: load_tensors(path)[1] for name, path in views.items()}
    names = list(metas)
    pairs = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            pairs[f"{a}_vs_{b}"] = partition_agreement(metas[a]["group_of_class"],
                                                       metas[b]["group_of_class"])
    first = metas[names[0]]
    record = {
        "dataset": first["dataset"], "imbalance_factor": first["imbalance_factor"],
        "class_names": first["class_names"],
        "views": {n: {"groups": m["groups"], "group_names": m["group_names"],
                      "group_of_class": m["group_of_class"], "objective": m["objective"],
                      "solver": m["solver"], "extractor": m["extractor"]}
                  for n, m in metas.items()},
        "agreement": pairs,
        "all_identical": all(p["identical"] for p in pairs.values()),
        "mean_adjusted_rand_index": (sum(p["adjusted_rand_index"] for p in pairs.values())
                                     / max(1, len(pairs))),
    }
    write_json(out, json_ready(record))
    log.info("stability: %s", {k: round(v["adjusted_rand_index"], 3) for k, v in pairs.items()})


# --------------------------------------------------------------------------- stage 1

def group_classifier(cache: str | Path, split: str | Path, preprocessing: str | Path,
                     grouping_path: str | Path, two_stage: dict[str, Any],
                     network: dict[str, Any], dsa_strategy: str, device: str, out: str | Path,
                     image_set_path: str | Path | None = None) -> None:
    """Train the stage-1 classifier(s) of the group tree on the full LT split, or on a
    distilled set when `image_set_path` is given (group labels g(y)); saved with the tree,
    the training info and the group accuracy on the balanced test set."""
    clock = Stopwatch()
    cfg = two_stage_config(two_stage)
    dev = resolve_device(device)
    data = load_prepared(cache, split, preprocessing)
    tree, gmeta = load_grouping(grouping_path)
    image_set = None
    if image_set_path is not None:
        image_set = load_image_set(image_set_path)
        if image_set.failed:  # nothing to train; the evaluations that need it record the failure
            save_stage(out, {}, {}, {"stage": "group", "source": "distilled", "status": "failed",
                                     "reason": image_set.failure_reason,
                                     "provenance": provenance(dev, clock.elapsed)})
            log.warning("image set %s is a failure record: %s", image_set_path,
                        image_set.failure_reason)
            return
        _check_preprocessing(image_set, data)
    source = "distilled" if image_set is not None else "original"
    stage = _stage_data(source, data, image_set)
    gc = cfg.group_classifier
    spec = network_spec(network, data, arch=gc.arch)
    models, info = train_stage(tree, "group", stage, gc, spec, dsa_strategy, gc.seed, dev)
    true_g = torch.as_tensor(gmeta["group_of_class"])[data.test_labels]
    routed = route_groups(tree, models, data.test_images)
    info["test_group_acc"] = float((routed == true_g).float().mean())
    specs = {p: n.get("spec") for p, n in info["nodes"].items()}
    save_stage(out, models, specs, json_ready({
        "stage": "group", "source": source, "tree": tree.to_dict(),
        "group_of_class": gmeta["group_of_class"], "info": info,
        "image_set": str(image_set_path) if image_set_path else None,
        "config": asdict(gc), "preprocessing": data.preprocessing.describe(),
        "provenance": provenance(dev, clock.elapsed)}))
    log.info("group classifier (%s, %d images): test group accuracy %.4f", source, len(stage),
             info["test_group_acc"])


# --------------------------------------------------------------------------- evaluation

def evaluate(identity: dict[str, Any], variant: str, cache: str | Path, split: str | Path,
             prep_original: str | Path, prep_method: str | Path, grouping_path: str | Path,
             group_model_path: str | Path, image_set_path: str | Path | None,
             two_stage: dict[str, Any], network: dict[str, Any], dsa_strategy: str,
             seed: int | list[int], device: str, out: str | Path | list[str | Path]) -> None:
    """Train the intra-group classifiers (stage 2, seeded by the evaluation seed) on the data
    source of `variant`, combine them with the trained stage-1 classifier and write one metrics
    record in the schema of ltdistill.pipeline.evaluate, plus group_acc (in `test`),
    train_img_num and partition.

    `seed` and `out` may be lists of equal length (runtime.batch_eval_seeds): the data, grouping
    and stage-1 models load once and each seed's record is written as soon as it is trained, with
    `eval_seed` set to that seed in its identity."""
    seeds = [int(seed)] if isinstance(seed, int) else [int(s) for s in seed]
    outs = [out] if isinstance(out, (str, Path)) else list(out)
    if len(seeds) != len(outs) or not seeds:
        raise ValueError(f"{len(seeds)} seeds for {len(outs)} output files")
    clock = Stopwatch()
    cfg = two_stage_config(two_stage)
    dev = resolve_device(device)
    src1, src2 = split_variant(variant)
    data_o = load_prepared(cache, split, prep_original)
    data_m = (data_o if Path(prep_method) == Path(prep_original)
              else load_prepared(cache, split, prep_method))
    tree, gmeta = load_grouping(grouping_path)
    image_set = None
    if "distilled" in (src1, src2):
        if image_set_path is None:
            raise ValueError(f"variant {variant} needs the method's image set")
        image_set = load_image_set(image_set_path)
        if image_set.failed:
            for seed_, out_ in zip(seeds, outs, strict=True):
                write_json(out_, failed_record({**identity, "eval_seed": seed_, "variant": variant},
                                             image_set, dev, clock.elapsed,
                                             {"two_stage": asdict(cfg)}))
            log.warning("%s %s: image set is a failure record (%s)", identity.get("method"),
                        variant, image_set.failure_reason)
            return
        _check_preprocessing(image_set, data_m)
    group_models, stage1_meta = load_stage(group_model_path, str(dev))
    if stage1_meta["source"] != src1:
        raise ValueError(f"{group_model_path} was trained on {stage1_meta['source']} data but "
                         f"variant {variant} needs {src1}")
    if stage1_meta["tree"] != tree.to_dict():
        raise ValueError(f"{group_model_path} was trained for another grouping; rerun it")
    data1 = data_o if src1 == "original" else data_m
    data2 = data_o if src2 == "original" else data_m
    stage2 = _stage_data(src2, data2, image_set)
    ic = cfg.intra_classifier
    spec = network_spec(network, data2, arch=identity.get("model") or ic.arch)
    shot = list(data_o.groups)
    n1 = int(stage1_meta["info"]["train_images"])
    n2 = len(stage2)
    for seed_, out_ in zip(seeds, outs, strict=True):
        seed_identity = {**identity, "eval_seed": seed_}
        start = clock.elapsed
        intra_models, info = train_stage(tree, "intra", stage2, ic, spec, dsa_strategy, seed_, dev)
        train_time = clock.elapsed - start
        clf = TwoStageClassifier(tree, group_models, intra_models, data_o.num_classes)
        test = two_stage_metrics(clf, data1.test_images, data2.test_images, data_o.test_labels,
                                 shot, cfg.routing)
        lt_test = None
        if data_o.lt_test_images is not None and data_o.lt_test_labels is not None:
            lt_test = two_stage_metrics(clf, data1.lt_test_images, data2.lt_test_images,
                                        data_o.lt_test_labels, shot, cfg.routing)
        nodes = [n for n in info["nodes"].values() if n.get("spec")]
        epochs = nodes[0]["epochs"] if nodes else ic.epochs(src2)
        record = {
            **seed_identity,
            "variant": variant,
            "selection": data_o.split.selection,
            "num_classes": data_o.num_classes,
            "class_names": data_o.class_names,
            "lt_counts": data_o.counts,
            "groups": data_o.groups,
            "image_set_counts": (image_set.per_class_counts if image_set is not None
                                 else list(data_o.counts)),
            "lr": info["lr"],
            "lr_source": info["lr_source"],
            "epochs": epochs,
            "passes": epochs + 1,
            "batch_size": nodes[0]["batch_size"] if nodes else ic.batch_size,
            "soft_labels_used": any(n.get("soft_labels_used") for n in nodes),
            "train_images": n1 + n2,
            "train_img_num": n1 + n2,
            "train_img_breakdown": {"stage1": n1, "stage2": n2},
            "train_seed": seed_,
            "model_spec": asdict(spec),
            "train_recipe": asdict(ic),
            "routing": cfg.routing,
            "stage1": {"source": src1, "model": str(group_model_path),
                       "test_group_acc": stage1_meta["info"].get("test_group_acc"),
                       "lr": stage1_meta["info"].get("lr"), "nodes": stage1_meta["info"]["nodes"]},
            "stage2": {"source": src2, "nodes": info["nodes"]},
            "partition": _partition_record(gmeta),
            "test": test,
            "lt_test": lt_test,
            "wall_time_s": round(train_time, 3),
            "status": "ok",
            "provenance": provenance(dev, clock.elapsed, {"two_stage": asdict(cfg),
                                                          "network": network}),
        }
        write_json(out_, _nan_to_none(json_ready(record)))
        log.info("%s %s seed %d: top-1 %.4f, group acc %.4f, std %.4f (%d + %d images)",
                 identity.get("method"), variant, seed_, test["top1"], test["group_acc"],
                 test["class_std"], n1, n2)


# --------------------------------------------------------------------------- report

def tsne_figure(views: dict[str, str | Path], out: str | Path, seed: int) -> None:
    """Figure 1 of the two-stage paper: one t-SNE panel of test features per extractor, with
    its per-class centroids."""
    from .plots import tsne_panels

    panels = []
    for title, path in views.items():
        tensors, meta = load_tensors(path)
        panels.append({"title": title, "features": tensors["features"].numpy(),
                       "labels": tensors["labels"].numpy(),
                       "centroids": tensors["centroids"].numpy(),
                       "groups": meta["group_names"], "class_names": meta["class_names"]})
    tsne_panels(panels, out, seed)


def _records(paths: list[str | Path]) -> list[dict[str, Any]]:
    return [read_json(p) for p in paths]


def classwise_bars(one_stage: list[str | Path], two_stage_paths: list[str | Path],
                   out: str | Path) -> None:
    """Class-wise accuracy of one-stage (the method's own evaluation, and `full`) against the
    two-stage variants, mean ± std over seeds."""
    from .plots import one_vs_two_stage_bars

    one_vs_two_stage_bars(_records(one_stage) + _records(two_stage_paths), out)


def table(paths: list[str | Path], outs: list[str | Path]) -> None:
    """results/tables/two_stage.{md,tex,csv}: one row per (setting, method, variant) with Train
    Img Num, Total Acc, Acc Std, Group Acc and shot-group accuracies (mean ± std over seeds)."""
    from .plots import two_stage_table

    two_stage_table(_records(paths), outs)
