"""Tiny expert sets for the contract test of mtt, datm and damed (2 experts of a few epochs on the
toy data, width-8 ConvNet). Each builder returns the list of expert paths of its kind."""

from __future__ import annotations

from pathlib import Path

from ltdistill.experts import expert_config
from ltdistill.experts.pipeline import build_expert
from ltdistill.methods import damed, datm, mtt  # noqa: F401  (registers them; harmless once _load_all does)

TINY_EXPERTS = {"num_experts": 2, "epochs": 4, "batch_size": 16, "lr": 0.05}
TINY_OVERRIDES = {"damed_cls": {"epochs": 2, "samples_per_class": 2}}


def build_experts(tmp: Path, data, kind: str) -> list[Path]:
    from .conftest import toy_spec

    cfg = expert_config(kind, {**TINY_EXPERTS, **TINY_OVERRIDES.get(kind, {})})
    paths = []
    for i in range(cfg.num_experts):
        path = tmp / kind / f"expert_{i}.pt"
        if not path.exists():
            init = None
            if cfg.init_from is not None:
                init = build_experts(tmp, data, cfg.init_from)[i]
            build_expert(data, toy_spec(data), kind, i, cfg, "cpu", path, init)
        paths.append(path)
    return paths


def builder(kind: str):
    return lambda tmp, data: build_experts(tmp, data, kind)


BUILDERS = {f"{k}_experts": builder(k) for k in ("mtt", "datm", "damed_rep", "damed_cls")}
_COMMON = {"iterations": 3, "syn_steps": 3, "expert_epochs": 1, "max_start_epoch": 2}
PARAMS = {
    "mtt": {**_COMMON, "lr_img": 10.0},
    "datm": {**_COMMON, "min_start_epoch": 0, "current_max_start_epoch": 1, "expansion_end": 2,
             "lr_img": 10.0},
    "damed": {**_COMMON, "syn_steps_cls": 2, "preset": "none", "current_max_start_epoch": 1,
              "expansion_end": 2, "lr_img": 10.0},
}
