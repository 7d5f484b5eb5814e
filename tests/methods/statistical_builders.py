"""Tiny observer / teacher / BN-statistics artifacts and tiny parameters for the statistical
methods (rldd, sre2l, rded), used by the method contract test via conftest.py."""

from __future__ import annotations

from pathlib import Path

from ltdistill.seeding import derive_seed
from ltdistill.statistical.bn_recal import recalibrate
from ltdistill.statistical.expert_io import load_expert_model, save_expert
from ltdistill.statistical.glmc import ExpertConfig, expert_spec, train_expert

TINY_EXPERT = dict(arch="convnet3", width=8, epochs=2, batch_size=16, proj_dim=8)


def _expert(tmp: Path, data, loss: str, name: str) -> Path:
    path = tmp / f"{name}.pt"
    if not path.exists():
        cfg = ExpertConfig(loss=loss, **TINY_EXPERT)
        spec = expert_spec(cfg, data.channels, data.num_classes, data.image_size)
        model = train_expert(data.train_images, data.train_labels, data.counts, spec, cfg,
                             seed=derive_seed(name), label=name)
        save_expert(path, model, spec, {"kind": name, "loss": loss,
                                       "class_names": data.class_names,
                                       "preprocessing": data.preprocessing.describe()})
    return path


def build_observer(tmp: Path, data) -> Path:
    return _expert(tmp, data, "glmc", "observer_glmc")


def build_teacher(tmp: Path, data) -> Path:
    return _expert(tmp, data, "glmc", "teacher_glmc")


def build_bn_stats(tmp: Path, data) -> Path:


    path = tmp / "bnstats_observer_glmc.pt"
    model, _, _ = load_expert_model(build_observer(tmp, data))
    stats = recalibrate(model, data.train_images, data.train_labels, data.num_classes, 8)
    stats.save(path)
    return path


BUILDERS = {"observer": build_observer, "teacher": build_teacher, "bn_stats": build_bn_stats}

PARAMS = {
    "rldd": {"iterations": 3, "num_crops": 2},
    "sre2l": {"iterations": 3},
    "rded": {"num_crops": 2},
}
