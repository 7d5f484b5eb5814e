"""Workflow stage for expert training and the config helpers rules/trajectory.smk calls (which experts
exist, where they live, which preprocessing they use). Never imports snakemake."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import Checkpointer
from ..config import ConfigError, config_hash
from ..data.prepared import PreparedData, load_prepared
from ..models import ModelSpec, build_model, classifier_start, count_parameters
from ..provenance import Stopwatch, provenance
from .storage import load_expert, save_expert
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


def expert_paths(config: dict, dataset: str, imbalance_factor: int | str, kind: str) -> list[str]:
    n = kind_config(config, kind).num_experts
    return [f"results/experts/{dataset}/if{imbalance_factor}/{kind}/expert_{i}.pt" for i in range(n)]


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


def expert_init_path(config: dict, dataset: str, imbalance_factor: int | str, kind: str,
                     index: int | str) -> str | None:
    """The expert that initialises expert `index` of `kind` (damed_cls i <- damed_rep i), or None."""
    source = kind_config(config, kind).init_from
    if source is None:
        return None
    return f"results/experts/{dataset}/if{imbalance_factor}/{source}/expert_{index}.pt"


def expert_prep_path(config: dict, dataset: str, imbalance_factor: int | str, kind: str) -> str:
    """The preprocessing artifact expert jobs of `kind` read (the one its consuming methods use)."""
    prep = expert_preprocessing_kind(config, dataset, kind)
    return f"results/preprocess/{dataset}/if{imbalance_factor}/{prep}.pt"


def expert_job_inputs(config: dict, dataset: str, imbalance_factor: int | str, kind: str,
                      index: int | str) -> dict[str, str]:
    """The inputs of one train_expert job besides the dataset cache and split: `prep`, and `init`
    when the kind starts from another kind's expert."""
    inputs = {"prep": expert_prep_path(config, dataset, imbalance_factor, kind)}
    init = expert_init_path(config, dataset, imbalance_factor, kind, index)
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
                     index: int, settings: dict[str, Any], network: dict[str, Any],
                     dsa_strategy: str, device: str, out: str | Path,
                     init_path: str | Path | None = None,
                     checkpoint_every_s: float | None = 600.0) -> None:
    """Train expert `index` of `kind` on one (dataset, IF) and write it atomically; a killed job
    rerun resumes from `{out}.ckpt` (saved every `checkpoint_every_s`, None = never)."""
    from ..pipeline import network_spec, resolve_device

    dev = resolve_device(device)
    data = load_prepared(cache, split, preprocessing)
    build_expert(data, network_spec(network, data), kind, index, expert_config(kind, settings), dev,
                 out, init_path, dsa_strategy, checkpoint_every_s)


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
        init_meta = {"path": str(init_path), "kind": source.meta["kind"],
                     "config_hash": source.meta["config_hash"], "test_top1": source.meta["test_top1"]}
    ckpt = None
    if checkpoint_every_s is not None:
        ckpt = Checkpointer(checkpoint_path(out), checkpoint_every_s, fingerprint={
            "kind": kind, "index": int(index), "config": asdict(cfg), "spec": asdict(spec),
            "data": data.preprocessing.digest, "split": data.split.imbalance_factor,
            "n_train": len(data.train_labels), "init": init_meta, "dsa": dsa_strategy})
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
        "init_from": init_meta, "provenance": provenance(device, clock.elapsed),
    }
    save_expert(out, snapshots, meta)
    if ckpt is not None:
        ckpt.finish()  # only once the expert file is in place
    log.info("wrote %s expert %d (%d snapshots x %d) in %.1fs", kind, index, snapshots.shape[0],
             snapshots.shape[1], clock.elapsed)
