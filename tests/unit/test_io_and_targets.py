"""Artifact integrity (io), the code closure that decides reruns, and evaluation recipe selection."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
import yaml

from ltdistill.config import ConfigError
from ltdistill.io import (
    ImageSet,
    ImageSetError,
    _digest,
    load_image_set,
    load_tensors,
    save_image_set,
    save_tensors,
)
from ltdistill.workflow_support import code_closure, eval_recipe, evaluation_targets, method_recipes

ROOT = Path(__file__).resolve().parents[2]


def test_digest_matches_hand_computed_sha256():
    t = torch.tensor([1, 2], dtype=torch.uint8)
    h = hashlib.sha256()
    h.update(b"x")
    h.update(b"(2,)")
    h.update(b"torch.uint8")
    h.update(bytes([1, 2]))
    assert _digest({"x": t}) == h.hexdigest()


def test_zero_dim_tensors_round_trip(tmp_path):
    # BatchNorm's num_batches_tracked is a 0-dim int64: state dicts must save and verify
    bn = torch.nn.BatchNorm2d(3)
    save_tensors(tmp_path / "m.pt", bn.state_dict(), {"arch": "bn"})
    tensors, meta = load_tensors(tmp_path / "m.pt")
    assert meta == {"arch": "bn"} and int(tensors["num_batches_tracked"]) == 0


def test_tampered_artifacts_are_refused(tmp_path):
    s = ImageSet(torch.zeros(2, 1, 4, 4), torch.tensor([0, 1]), num_classes=2, meta={"m": 1})
    save_image_set(tmp_path / "s.pt", s)
    assert load_image_set(tmp_path / "s.pt").labels.tolist() == [0, 1]
    payload = torch.load(tmp_path / "s.pt", weights_only=True)
    payload["images"][0, 0, 0, 0] = 1.0
    torch.save(payload, tmp_path / "s.pt")
    with pytest.raises(ImageSetError, match="integrity check"):
        load_image_set(tmp_path / "s.pt")
    (tmp_path / "t.pt").write_bytes(b"truncated")
    with pytest.raises(ImageSetError, match="corrupted"):
        load_image_set(tmp_path / "t.pt")


def test_code_closure_follows_relative_imports_only(tmp_path):
    pkg = tmp_path / "src" / "pkg"
    (pkg / "methods").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "progress.py").write_text("")
    (pkg / "helpers.py").write_text("import os\n")
    (pkg / "unused.py").write_text("")
    (pkg / "methods" / "__init__.py").write_text("")
    (pkg / "methods" / "core.py").write_text("from ..helpers import x\nfrom ..progress import P\n")
    (pkg / "methods" / "a.py").write_text("from .core import y\nfrom . import b\nimport torch\n")
    (pkg / "methods" / "b.py").write_text("")
    got = code_closure(str(pkg), "methods.a")
    assert got == sorted(f"src/pkg/{p}" for p in
                         ["helpers.py", "methods/__init__.py", "methods/a.py", "methods/b.py",
                          "methods/core.py"])


def test_real_closures_separate_families():
    src = str(ROOT / "src/ltdistill")
    mtt = code_closure(src, "methods.mtt")
    rnd = code_closure(src, "methods.random")
    assert "src/ltdistill/methods/trajectory_core.py" in mtt
    assert "src/ltdistill/methods/trajectory_core.py" not in rnd
    assert not any("rldd" in p or "progress" in p for p in mtt)


def _config() -> dict:
    config = yaml.safe_load((ROOT / "config/tiny.yaml").read_text())
    config["methods"] = ["random", "rldd"]
    config["method_params"].setdefault("rldd", {})
    config["evaluation"]["protocol_b"] = {"methods": ["random", "rldd"], "skip_protocol_a": ["rldd"],
                                          "epochs": 7, "rrc_scale": [0.3, 1.0],
                                          "method_overrides": {"random": {"lr": 0.05}}}
    return config


def test_protocol_b_recipe_defaults_and_overrides():
    config = _config()
    rb = eval_recipe(config, "fashion_mnist", "random", "protocol_b")
    assert rb == {"protocol": "b", "epochs": 7, "batch_size": 50, "lr": 0.05, "momentum": 0.875,
                  "weight_decay": 5e-4, "rrc_scale": (0.3, 1.0)}
    assert eval_recipe(config, "fashion_mnist", "rldd", "protocol_b")["lr"] == 0.1
    with pytest.raises(ConfigError, match="Known recipes: protocol_a, hard, protocol_b"):
        eval_recipe(config, "fashion_mnist", "random", "protocol_c")


def test_reference_recipe_per_imbalance_factor():
    from ltdistill.workflow_support import reference_recipe

    config = _config()
    config["reference"] = {"epochs": 30, "batch_size": 256, "lr": 0.01, "seed": 3,
                           "epochs_by_if": {1: 8}}
    assert reference_recipe(config, 100) == {"epochs": 30, "batch_size": 256, "lr": 0.01}
    assert reference_recipe(config, 1) == {"epochs": 8, "batch_size": 256, "lr": 0.01}
    del config["reference"]["epochs_by_if"]
    assert reference_recipe(config, 1)["epochs"] == 30


def test_cross_arch_entries_choose_their_methods():
    config = _config()
    config["methods"] = ["random", "herding", "rldd"]
    config["method_params"].update(herding={})
    config["evaluation"]["protocol_b"] = {}
    config["evaluation"]["seeds"] = [0]
    config["evaluation"]["cross_arch"] = [{"dataset": "fashion_mnist", "imbalance_factor": 10,
                                           "ipc": 2, "models": ["alexnet"],
                                           "methods": ["herding", "mtt"]}]
    alex = [t for t in evaluation_targets(config) if "/alexnet/" in t]
    # mtt is defined but not in `methods:`, so it is not run; random is not chosen
    assert alex == ["results/evaluation/fashion_mnist/if10/ipc2/herding/s0/alexnet/protocol_a/seed0.json"]
    config["evaluation"]["cross_arch"][0]["methods"] = None
    alex = {t.split("/")[5] for t in evaluation_targets(config) if "/alexnet/" in t}
    assert alex == {"random", "herding", "rldd"}


def test_recipes_per_method_and_targets():
    config = _config()
    assert method_recipes(config, "random") == ["protocol_a", "protocol_b"]
    # RLDD is scored with Protocol B only, but HLR still needs its hard-label accuracy
    assert method_recipes(config, "rldd") == ["hard", "protocol_b"]
    targets = evaluation_targets(config)
    assert not any("/rldd/" in t and "/protocol_a/" in t for t in targets)
    assert any("/rldd/" in t and "/protocol_b/" in t for t in targets)


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["evaluation"].update(protocol_b={"epochz": 3}),
     r"evaluation.protocol_b has unknown keys \['epochz'\]"),
    (lambda c: c["evaluation"].update(protocol_b={"methods": ["rldx"]}),
     "evaluation.protocol_b.methods names unknown method 'rldx'"),
    (lambda c: c["evaluation"]["cross_arch"][0].update(methods=["randon"]),
     r"evaluation.cross_arch\[0\].methods names unknown method 'randon'"),
    (lambda c: c["datasets"]["fashion_mnist"].update(zca_methods=["mtx"]),
     "zca_methods names unknown method 'mtx'"),
    (lambda c: c.update(methods=["random", "mtt"]) or c["method_params"].update(mtt={"lr_imgg": 1}),
     "lr_imgg"),
])
def test_bad_sections_are_named(edit, message):
    from ltdistill.workflow_support import check_config

    config = _config()
    edit(config)
    with pytest.raises((ConfigError, ValueError), match=message):
        check_config(config)


@pytest.mark.parametrize("section, message", [
    ({"variants": ["original_distiled"]}, "unknown two-stage variant 'original_distiled'"),
    ({"kmeans": {"init": "kmeans+++"}}, "kmeans.init must be"),
])
def test_bad_two_stage_sections_are_named(section, message):
    from ltdistill.two_stage.targets import settings

    with pytest.raises((ConfigError, ValueError), match=message):
        settings({"two_stage": section})


@pytest.mark.parametrize("kind, settings, message", [
    ("mtt", {"optimizer": "adam"}, "optimizer must be sgd or gsam"),
    ("mtt", {"num_expert": 3}, "num_expert"),
    ("observer_glmc", {"loss": "focal"}, "loss"),
])
def test_bad_expert_sections_are_named(kind, settings, message):
    from ltdistill.experts.pipeline import check_experts_config
    from ltdistill.statistical.pipeline import check_experts

    with pytest.raises((ConfigError, ValueError), match=message):
        check_experts_config({"experts": {kind: settings}, "methods": []})
        check_experts({kind: settings})


def test_deterministic_mode_switches_torch_flags():
    from ltdistill.jobs import set_deterministic

    before = torch.are_deterministic_algorithms_enabled()
    try:
        set_deterministic(False)
        assert torch.are_deterministic_algorithms_enabled() == before
        set_deterministic(True)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    finally:
        torch.use_deterministic_algorithms(before)
        torch.backends.cudnn.deterministic = False
