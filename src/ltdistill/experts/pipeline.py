"""Workflow stage for expert training and the config helpers rules/trajectory.smk calls (which experts
exist, where they live, which preprocessing they use). Never imports snakemake."""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import Checkpointer, fingerprint_of
from ..config import ConfigError, config_hash
from ..data.prepared import PreparedData, load_prepared
from ..models import ModelSpec, build_model, classifier_start, count_parameters
from ..provenance import Stopwatch, provenance
from .storage import ExpertError, load_expert, save_expert
from .train import KINDS, ExpertConfig, expert_config, expert_seed, train_expert

log = logging.getLogger("ltdistill.experts")

ARTIFACT_SUFFIX = "_experts"  # a method needing kind k declares needs=("<k>_experts",)


# --- config helpers (used by rules/trajectory.smk) -------------------------------------------

def kind_config(config: dict, kind: str) -> ExpertConfig:
    return expert_config(kind, (config.get("experts") or {}).get(kind))


def job_settings(config: dict, kind: str) -> dict[str, Any]:
    """The settings that determine expert i's content (num_experts excluded, so adding experts
    does not retrain the existing ones)."""
    settings = asdict(kind_config(config, kind))
    settings.pop("num_experts")
    return settings


def experts_per_job(config: dict) -> int:
    """runtime.experts_per_job: how many experts of a kind one train_expert job trains in turn
    (the data loads once; fewer, longer jobs: paper.yaml's 4,800 experts are 480 jobs)."""
    n = int((config.get("runtime") or {}).get("experts_per_job", 1))
    if n < 1:
        raise ConfigError(f"runtime.experts_per_job must be >= 1, got {n}")
    return n


def expert_groups(num_experts: int, per_job: int) -> list[tuple[int, int]]:
    """The (first, last) expert index ranges, inclusive, that the jobs of a kind train: runs of
    `per_job` consecutive indices, the last one shorter when `per_job` does not divide the count."""
    return [(first, min(first + per_job, num_experts) - 1) for first in range(0, num_experts, per_job)]


def expert_group_dir(dataset: str, imbalance_factor: int | str, kind: str, first: int | str,
                     last: int | str) -> str:
    """The directory one train_expert job writes: expert_{i}.pt for i in first..last."""
    return f"results/experts/{dataset}/if{imbalance_factor}/{kind}/{first}-{last}"


def expert_paths(config: dict, dataset: str, imbalance_factor: int | str, kind: str) -> list[str]:
    """The group directories holding every expert of `kind` (ExpertPool opens the files inside)."""
    n = kind_config(config, kind).num_experts
    return [expert_group_dir(dataset, imbalance_factor, kind, first, last)
            for first, last in expert_groups(n, experts_per_job(config))]


def check_experts_config(config: dict) -> None:
    """Validate every trajectory expert kind present in `experts:` (other families' kinds in the
    same section are left to their own checks)."""
    for kind, settings in (config.get("experts") or {}).items():
        if kind in KINDS:
            expert_config(kind, settings)
    for kind in KINDS:
        cfg = kind_config(config, kind)
        if cfg.init_from and cfg.num_experts > kind_config(config, cfg.init_from).num_experts:
            raise ConfigError(f"experts.{kind}.num_experts ({cfg.num_experts}) exceeds "
                              f"experts.{cfg.init_from}.num_experts: expert i starts from "
                              f"{cfg.init_from} expert i")


def expert_init_dir(config: dict, dataset: str, imbalance_factor: int | str, kind: str,
                    first: int | str, last: int | str) -> str | None:
    """The group directory of the source kind holding the experts that initialise experts
    first..last of `kind` (damed_cls i <- damed_rep i), or None when `kind` starts from scratch."""
    source = kind_config(config, kind).init_from
    if source is None:
        return None
    first, last = int(first), int(last)
    groups = expert_groups(kind_config(config, source).num_experts, experts_per_job(config))
    for lo, hi in groups:
        if lo <= first and last <= hi:
            return expert_group_dir(dataset, imbalance_factor, source, lo, hi)
    raise ConfigError(f"{kind} experts {first}-{last} start from {source} experts that "
                      f"experts.{source}.num_experts does not provide")


def expert_prep_path(config: dict, dataset: str, imbalance_factor: int | str, kind: str) -> str:
    """The preprocessing artifact expert jobs of `kind` read (the one its consuming methods use)."""
    prep = expert_preprocessing_kind(config, dataset, kind)
    return f"results/preprocess/{dataset}/if{imbalance_factor}/{prep}.pt"


def expert_job_inputs(config: dict, dataset: str, imbalance_factor: int | str, kind: str,
                      first: int | str, last: int | str) -> dict[str, str]:
    """The inputs of one train_expert job besides the dataset cache and split: `prep`, and `init`
    (a group directory) when the kind starts from another kind's experts."""
    inputs = {"prep": expert_prep_path(config, dataset, imbalance_factor, kind)}
    init = expert_init_dir(config, dataset, imbalance_factor, kind, first, last)
    if init:
        inputs["init"] = init
    return inputs


def _consumers(config: dict, kind: str) -> list[str]:
    """Method slugs of the configured grid that read experts of `kind`, directly or through a kind
    initialised from it (damed_cls from damed_rep)."""
    from ..workflow_support import method_needs

    kinds = {kind} | {k for k in KINDS if kind_config(config, k).init_from == kind}
    return [slug for slug in config["methods"]
            if any(f"{k}{ARTIFACT_SUFFIX}" in method_needs(config, slug) for k in kinds)]


def expert_preprocessing_kind(config: dict, dataset: str, kind: str) -> str:
    """The preprocessing of `kind` experts on `dataset`: that of the methods consuming them (they
    must agree), else the dataset's default."""
    from ..workflow_support import preprocessing_kind

    found = {preprocessing_kind(config, dataset, slug) for slug in _consumers(config, kind)}
    if len(found) > 1:
        raise ConfigError(f"methods reading {kind} experts on {dataset} use different "
                          f"preprocessings {sorted(found)}; list all of them in zca_methods or none")
    if found:
        return found.pop()
    return config["datasets"][dataset].get("preprocessing", "normalise")


# --- the stage -------------------------------------------------------------------------------

def train_expert_job(cache: str | Path, split: str | Path, preprocessing: str | Path, kind: str,
                     first: int, last: int, settings: dict[str, Any], network: dict[str, Any],
                     dsa_strategy: str, device: str, out_dir: str | Path,
                     init_dir: str | Path | None = None,
                     checkpoint_every_s: float | None = 600.0) -> None:
    """Train experts first..last of `kind` on one (dataset, IF), one after another on data loaded
    once, and publish them as `out_dir`/expert_{i}.pt.

    Each expert is written to the staging directory `{out_dir}.parts` as it finishes and the whole
    directory is renamed to `out_dir` at the end, so an interrupted job never leaves an `out_dir`
    that looks complete. A rerun keeps the finished experts in staging that were trained with the
    same settings (their recorded job fingerprint) and resumes the interrupted one from its
    checkpoint; the others are retrained."""
    from ..pipeline import network_spec, resolve_device

    first, last = int(first), int(last)
    if not 0 <= first <= last:
        raise ValueError(f"expert range {first}-{last} is empty or negative")
    out_dir = Path(out_dir)
    parts = Path(f"{out_dir}.parts")
    parts.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    data = load_prepared(cache, split, preprocessing)
    spec = network_spec(network, data)
    cfg = expert_config(kind, settings)
    clock, count = Stopwatch(), last - first + 1
    for done, index in enumerate(range(first, last + 1)):
        out = parts / f"expert_{index}.pt"
        init = Path(init_dir) / f"expert_{index}.pt" if init_dir is not None else None
        want = job_fingerprint(data, spec, kind, index, cfg, _init_identity(init), dsa_strategy)
        found = _finished_copy(out, out_dir, index, want)
        if found is not None:
            log.info("%s expert %d: kept the finished file %s", kind, index, found)
        else:
            build_expert(data, spec, kind, index, cfg, dev, out, init, dsa_strategy,
                         checkpoint_every_s)
        if done + 1 < count:
            eta = clock.elapsed / (done + 1) * (count - done - 1)
            log.info("%s experts %d-%d: %d of %d done, %.0fs elapsed, ETA %.0fs", kind, first, last,
                     done + 1, count, clock.elapsed, eta)
    wanted = {f"expert_{i}.pt" for i in range(first, last + 1)}
    for stale in parts.iterdir():  # left by an earlier run over another range or settings
        if stale.name not in wanted:
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    if out_dir.exists():  # a stale output Snakemake did not remove (standalone use)
        shutil.rmtree(out_dir)
    os.replace(parts, out_dir)
    log.info("wrote %s experts %d-%d to %s in %.1fs", kind, first, last, out_dir, clock.elapsed)


INIT_IDENTITY = ("kind", "config_hash", "test_top1")  # of the expert another one starts from


def _init_identity(init_path: str | Path | None) -> dict[str, Any] | None:
    """What identifies the expert that `init_path` holds (None: no init; its path when it cannot
    be read, so that nothing is taken as finished and build_expert reports the damage)."""
    if init_path is None:
        return None
    try:
        meta = load_expert(init_path, verify=False).meta
    except ExpertError:
        return {"path": str(init_path)}
    return {k: meta[k] for k in INIT_IDENTITY}


def job_fingerprint(data: PreparedData, spec: ModelSpec, kind: str, index: int, cfg: ExpertConfig,
                    init: dict[str, Any] | None, dsa_strategy: str) -> dict[str, Any]:
    """Everything that determines expert `index`'s content (the run's checkpoint fingerprint, and
    the `job_fingerprint` an expert file records so a rerun can tell whether to keep it); `init`
    is the identity of the expert it starts from (`_init_identity`)."""
    settings = asdict(cfg)
    settings.pop("num_experts")  # adding experts keeps the finished ones
    return {"kind": kind, "index": int(index), "config": settings, "spec": asdict(spec),
            "data": data.preprocessing.digest, "split": data.split.imbalance_factor,
            "n_train": len(data.train_labels), "init": init, "dsa": dsa_strategy}


def _finished_copy(out: Path, out_dir: Path, index: int, fingerprint: dict[str, Any]) -> Path | None:
    """A finished expert `index` with these settings, made available at `out`: `out` itself (an
    interrupted run's staging), else a sibling group directory's copy (written under another
    runtime.experts_per_job or num_experts), hard-linked or copied. None when there is none."""
    if _finished(out, fingerprint):
        return out
    for other in sorted(out_dir.parent.glob(f"*/expert_{index}.pt")):
        if other.parent != out_dir and not other.parent.name.endswith(".parts") \
                and _finished(other, fingerprint):
            try:
                os.link(other, out)
            except OSError:
                shutil.copy2(other, out)
            return other
    return None


def _finished(path: Path, fingerprint: dict[str, Any]) -> bool:
    """Whether `path` is an intact expert file trained with exactly these settings."""
    if not path.exists():
        return False
    try:
        meta = load_expert(path).meta
    except ExpertError as exc:
        log.warning("%s: %s; training it again", path, exc)
        return False
    return meta.get("job_fingerprint") == fingerprint_of(fingerprint)


def build_expert(data: PreparedData, spec: ModelSpec, kind: str, index: int, cfg: ExpertConfig,
                 device: torch.device | str, out: str | Path, init_path: str | Path | None = None,
                 dsa_strategy: str = "color_crop_cutout_flip_scale_rotate",
                 checkpoint_every_s: float | None = None) -> None:
    """Train expert `index` of `kind` on prepared data and write snapshots + metadata to `out`.
    With `checkpoint_every_s` the epochs are checkpointed to `{out}.ckpt` and a rerun resumes."""
    from ..pipeline import checkpoint_path

    clock = Stopwatch()
    init, init_meta = None, None
    if cfg.init_from is not None:
        if init_path is None:
            raise ValueError(f"{kind} experts start from {cfg.init_from} expert {index}; pass its path")
        source = load_expert(init_path)
        if source.meta["kind"] != cfg.init_from:
            raise ValueError(f"{init_path} is a {source.meta['kind']} expert, not {cfg.init_from}")
        if source.meta["preprocessing_digest"] != data.preprocessing.digest:
            raise ValueError(f"{init_path} was trained in another preprocessing than this data")
        init = source.final()
        init_meta = {"path": str(init_path), **{k: source.meta[k] for k in INIT_IDENTITY}}
    fingerprint = job_fingerprint(
        data, spec, kind, index, cfg,
        None if init_meta is None else {k: init_meta[k] for k in INIT_IDENTITY}, dsa_strategy)
    ckpt = None
    if checkpoint_every_s is not None:
        ckpt = Checkpointer(checkpoint_path(out), checkpoint_every_s, fingerprint=fingerprint)
    snapshots, acc = train_expert(data, spec, cfg, kind, index, device, init, dsa_strategy, ckpt)
    model = build_model(spec, 0)
    identity = asdict(cfg)
    identity.pop("num_experts")
    meta = {
        "dataset": data.name, "imbalance_factor": data.split.imbalance_factor,
        "selection": data.split.selection, "kind": kind, "index": int(index),
        "seed": expert_seed(kind, cfg, index), "config": asdict(cfg),
        "config_hash": config_hash(identity), "preprocessing": data.preprocessing.describe(),
        "preprocessing_digest": data.preprocessing.digest, "test_top1": acc,
        "num_params": count_parameters(model), "classifier_start": classifier_start(model),
        "epochs": cfg.epochs, "model_spec": asdict(spec), "dsa_strategy": dsa_strategy,
        "init_from": init_meta, "job_fingerprint": fingerprint_of(fingerprint),
        "provenance": provenance(device, clock.elapsed),
    }
    save_expert(out, snapshots, meta)
    if ckpt is not None:
        ckpt.finish()  # only once the expert file is in place
    log.info("wrote %s expert %d (%d snapshots x %d) in %.1fs", kind, index, snapshots.shape[0],
             snapshots.shape[1], clock.elapsed)
