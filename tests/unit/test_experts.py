"""Expert training pieces against hand computations: the class-aware sampler, MaxNorm, a GSAM step,
the kind configs, decoupled classifier experts, and the expert file format (weights_only loading,
tamper detection). Run: pytest tests/unit/test_experts.py -q"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ltdistill.config import ConfigError
from ltdistill.experts import (
    GSAM,
    ClassAwareSampler,
    ExpertError,
    ExpertPool,
    MaxNorm,
    expert_config,
    load_expert,
    save_expert,
)
from ltdistill.experts.pipeline import build_expert
from ltdistill.models import ModelSpec


def test_class_aware_sampler_balances_an_epoch():
    labels = torch.tensor([0] * 8 + [1] * 4 + [2] * 2 + [3] * 1)
    s = ClassAwareSampler(labels, 4, samples_per_class=4, generator=torch.Generator().manual_seed(0))
    assert s.epoch_length == 8 * 4
    idx = s.epoch()
    assert len(idx) == 32
    # 8 draws of 4 = two full passes over the reshuffled class list: every class gets 8 samples
    assert torch.bincount(labels[idx], minlength=4).tolist() == [8, 8, 8, 8]
    # within a class the cycle visits every image before repeating one
    assert torch.bincount(idx[labels[idx] == 0], minlength=8)[:8].tolist() == [1] * 8
    assert torch.bincount(idx[labels[idx] == 2], minlength=14)[12:14].tolist() == [4, 4]
    # runs of 4 consecutive samples share a class
    assert all(len(set(labels[idx[i:i + 4]].tolist())) == 1 for i in range(0, 32, 4))
    with pytest.raises(ValueError, match="empty"):
        ClassAwareSampler(torch.tensor([0, 0]), 2, 4, torch.Generator())


def test_maxnorm_projection_by_hand():
    w = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
    mn = MaxNorm(thresh=0.1)
    mn(w)
    assert math.isclose(mn.tau, 1.0 + 0.1 * (3.0 - 1.0), rel_tol=1e-6)  # min + thresh (max - min) = 1.2
    assert torch.allclose(w, torch.tensor([[1.0, 0.0], [0.0, 1.2], [1.2, 0.0]]))
    w2 = torch.tensor([[0.0, 5.0], [0.5, 0.0]])
    mn(w2)  # the threshold stays the one fixed at the first call
    assert torch.allclose(w2, torch.tensor([[0.0, 1.2], [0.5, 0.0]]))


@pytest.mark.parametrize("adaptive", [True, False])
def test_gsam_step_matches_hand_computation(adaptive):
    a = torch.tensor([[1.0, 2.0], [0.5, -1.0], [2.0, 0.0]])
    b = torch.tensor([1.0, -2.0, 0.5])
    w0 = torch.tensor([0.3, -0.7])
    rho, alpha, lr, wd = 0.05, 0.3, 0.1, 0.01

    def grad(w):  # L = 0.5 ||A w - b||^2  ->  grad = A^T (A w - b)
        return a.T @ (a @ w - b)

    g = grad(w0)
    t = w0.abs() if adaptive else torch.ones(2)
    e = rho * t * t * g / ((t * g).norm() + 1e-12)
    gp = grad(w0 + e)
    perp = g - (g @ gp) / (gp @ gp) * gp
    expected = w0 - lr * ((gp - alpha * perp) + wd * w0)

    w = torch.nn.Parameter(w0.clone())
    opt = GSAM([w], torch.optim.SGD([w], lr=lr, weight_decay=wd), rho, alpha, adaptive)
    loss = opt.step(lambda: 0.5 * (a @ w - b).pow(2).sum())
    assert math.isclose(float(loss), float(0.5 * (a @ w0 - b).pow(2).sum()), rel_tol=1e-6)
    assert torch.allclose(w.detach(), expected, atol=1e-7)


def test_kind_configs_and_unknown_keys():
    assert expert_config("mtt").optimizer == "sgd" and expert_config("mtt").weight_decay == 0
    rep = expert_config("damed_rep")
    assert rep.optimizer == "gsam" and rep.weight_decay == 5e-3
    cls = expert_config("damed_cls")
    assert (cls.epochs, cls.sampler, cls.trainable, cls.init_from, cls.maxnorm) == \
        (10, "class_aware", "classifier", "damed_rep", True)
    assert expert_config("damed_cls", {"maxnorm": False}).maxnorm is False  # YAML `maxnorm: off`
    assert expert_config("damed_cls", {"maxnorm": "off"}).maxnorm is False
    assert expert_config("mtt", {"lr": "1e-2"}).lr == 0.01  # PyYAML reads 1e-2 as a string
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        expert_config("mtt", {"epochs_": 3})
    with pytest.raises(ConfigError, match="unknown expert kind"):
        expert_config("mttt")


def _toy_spec(data) -> ModelSpec:
    return ModelSpec("convnet3", data.channels, data.num_classes, data.image_size, width=4)


@pytest.fixture(scope="module")
def decoupled(tmp_path_factory, toy_data):
    tmp = tmp_path_factory.mktemp("experts")
    small = {"epochs": 2, "batch_size": 16, "lr": 0.05}
    build_expert(toy_data, _toy_spec(toy_data), "damed_rep", 0, expert_config("damed_rep", small),
                 "cpu", tmp / "rep.pt")
    for mn in (True, False):
        cfg = expert_config("damed_cls", {**small, "samples_per_class": 2, "maxnorm": mn})
        build_expert(toy_data, _toy_spec(toy_data), "damed_cls", 0, cfg, "cpu",
                     tmp / f"cls_{mn}.pt", tmp / "rep.pt")
    return tmp


def test_classifier_experts_keep_the_backbone_and_obey_maxnorm(decoupled):
    rep = load_expert(decoupled / "rep.pt")
    cls = load_expert(decoupled / "cls_True.pt")
    cs = cls.meta["classifier_start"]
    assert cls.snapshots.shape[0] == 3 and cls.meta["init_from"]["kind"] == "damed_rep"
    assert torch.equal(cls.snapshots[:, :cs], rep.final()[:cs].expand(3, -1))  # frozen backbone
    rows = cls.meta["model_spec"]["num_classes"]

    def row_norms(flat):  # classifier weight = flat[cs : P - C] as C x F, then the C biases
        return flat[cs:-rows].view(rows, -1).norm(dim=1)

    start = row_norms(rep.final())
    tau = float(start.min() + 0.1 * (start.max() - start.min()))
    assert all(float(row_norms(cls.snapshot(e)).max()) <= tau + 1e-5 for e in range(3))
    free = load_expert(decoupled / "cls_False.pt")
    assert float(row_norms(free.final()).max()) > tau + 1e-3


def test_expert_file_roundtrip_and_tamper_detection(tmp_path):
    snaps = torch.arange(3 * 5, dtype=torch.float32).view(3, 5) + 0.5
    meta = {"dataset": "toy", "imbalance_factor": 8, "kind": "mtt", "index": 0, "seed": 1,
            "config_hash": "abc", "preprocessing_digest": "", "test_top1": 0.5, "num_params": 5,
            "classifier_start": 2, "epochs": 2}
    path = tmp_path / "expert_0.pt"
    save_expert(path, snaps, meta)
    # plain torch can read it with weights_only (no pickled code), memory-mapped
    raw = torch.load(path, weights_only=True, mmap=True)
    assert torch.equal(raw["snapshots"], snaps)
    e = load_expert(path)
    assert e.epochs == 2 and torch.equal(e.snapshot(1), snaps[1]) and e.meta["kind"] == "mtt"
    with pytest.raises(ExpertError, match="snapshots 0..2"):
        e.snapshot(3)
    # flip one byte inside the stored tensor data: the content hash no longer matches
    data = bytearray(path.read_bytes())
    pos = data.find(snaps[2].numpy().tobytes())
    assert pos > 0
    data[pos + 1] ^= 0xFF
    bad = tmp_path / "tampered.pt"
    bad.write_bytes(bytes(data))
    with pytest.raises(ExpertError, match="integrity"):
        load_expert(bad)
    with pytest.raises(ExpertError, match="does not exist"):
        load_expert(tmp_path / "missing.pt")
    bad.write_bytes(b"not a zip file")
    with pytest.raises(ExpertError, match="unreadable"):
        load_expert(bad)


def test_pool_rejects_foreign_experts(tmp_path):
    meta = {"dataset": "toy", "imbalance_factor": 8, "kind": "mtt", "index": 0, "seed": 1,
            "config_hash": "abc", "preprocessing_digest": "p1", "test_top1": 0.5, "num_params": 5,
            "classifier_start": 2, "epochs": 2}
    save_expert(tmp_path / "a.pt", torch.zeros(3, 5), meta)
    pool = ExpertPool([tmp_path / "a.pt"])
    pool.check_compatible(5, 2, "toy", 8, "p1")
    with pytest.raises(ExpertError, match="parameters"):
        pool.check_compatible(6, 2)
    with pytest.raises(ExpertError, match="IF 8"):
        pool.check_compatible(5, 2, "toy", 100)
    with pytest.raises(ExpertError, match="preprocessing"):
        pool.check_compatible(5, 2, "toy", 8, "p2")


def _config(zca: list[str], methods: list[str], experts: dict | None = None) -> dict:
    from ltdistill.methods import damed, datm, mtt  # noqa: F401  (register the consumers)

    return {"methods": methods, "experts": experts or {},
            "method_params": {m: {} for m in ("random", "mtt", "datm", "damed")},
            "datasets": {"fmnist": {"preprocessing": "normalise", "zca_methods": zca}}}


def test_expert_paths_and_preprocessing_follow_the_consuming_methods():
    from ltdistill.experts.pipeline import (
        check_experts_config,
        expert_init_dir,
        expert_job_inputs,
        expert_paths,
        expert_prep_path,
    )

    cfg = _config(["mtt", "damed"], ["random", "mtt", "datm", "damed"],
                  {"mtt": {"num_experts": 3}, "damed_cls": {"num_experts": 2}})
    assert expert_paths(cfg, "fmnist", 100, "mtt") == [
        f"results/experts/fmnist/if100/mtt/{i}-{i}" for i in range(3)]
    assert len(expert_paths(cfg, "fmnist", 100, "datm")) == 100  # the published default
    assert expert_prep_path(cfg, "fmnist", 100, "mtt").endswith("/zca.pt")
    assert expert_prep_path(cfg, "fmnist", 100, "datm").endswith("/normalise.pt")
    # damed_rep experts are read by damed directly and through damed_cls
    assert expert_prep_path(cfg, "fmnist", 100, "damed_rep").endswith("/zca.pt")
    assert expert_init_dir(cfg, "fmnist", 100, "damed_cls", 1, 1) == \
        "results/experts/fmnist/if100/damed_rep/1-1"
    assert expert_init_dir(cfg, "fmnist", 100, "mtt", 1, 1) is None
    assert expert_job_inputs(cfg, "fmnist", 100, "damed_cls", 1, 1) == {
        "prep": "results/preprocess/fmnist/if100/zca.pt",
        "init": "results/experts/fmnist/if100/damed_rep/1-1"}
    check_experts_config(cfg)
    with pytest.raises(ConfigError, match="exceeds"):
        check_experts_config(_config([], ["damed"], {"damed_rep": {"num_experts": 1}}))
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        check_experts_config(_config([], ["mtt"], {"mtt": {"epoch": 3}}))


def test_experts_per_job_groups_consecutive_indices():
    from ltdistill.experts.pipeline import expert_groups, expert_init_dir, expert_paths

    assert expert_groups(7, 3) == [(0, 2), (3, 5), (6, 6)]
    assert expert_groups(6, 3) == [(0, 2), (3, 5)]
    assert expert_groups(2, 10) == [(0, 1)]
    assert expert_groups(3, 1) == [(0, 0), (1, 1), (2, 2)]
    cfg = _config([], ["mtt", "damed"], {"mtt": {"num_experts": 7}, "damed_rep": {"num_experts": 7},
                                         "damed_cls": {"num_experts": 5}})
    cfg["runtime"] = {"experts_per_job": 3}
    assert expert_paths(cfg, "fm", 10, "mtt") == [
        "results/experts/fm/if10/mtt/0-2", "results/experts/fm/if10/mtt/3-5",
        "results/experts/fm/if10/mtt/6-6"]
    # damed_cls 3-4 (its last, shorter group) starts from damed_rep 3-5, which holds 3 and 4
    assert [g.rsplit("/", 1)[1] for g in expert_paths(cfg, "fm", 10, "damed_cls")] == ["0-2", "3-4"]
    assert expert_init_dir(cfg, "fm", 10, "damed_cls", 3, 4) == "results/experts/fm/if10/damed_rep/3-5"
    cfg["runtime"] = {"experts_per_job": 0}
    with pytest.raises(ConfigError, match="experts_per_job"):
        expert_paths(cfg, "fm", 10, "mtt")


def _group_job(toy_data, tmp_path, monkeypatch, kind, first, last, out, init_dir=None, calls=None):
    """Run train_expert_job on the toy data without files for the data (load_prepared patched)."""
    from ltdistill.experts import pipeline

    monkeypatch.setattr(pipeline, "load_prepared", lambda *a: toy_data)
    monkeypatch.setattr("ltdistill.pipeline.network_spec", lambda network, data: _toy_spec(data))
    if calls is not None:  # count the experts actually trained (the original build_expert)
        monkeypatch.setattr(pipeline, "build_expert",
                            lambda *a, **k: (calls.append(a[3]), build_expert(*a, **k))[1])
    pipeline.train_expert_job("c", "s", "p", kind, first, last, {"epochs": 1, "batch_size": 16},
                              {}, "color_crop_cutout_flip_scale_rotate", "cpu", out,
                              init_dir=init_dir, checkpoint_every_s=None)


def test_a_group_job_writes_the_experts_single_jobs_write(toy_data, tmp_path, monkeypatch):
    """Experts 1..2 trained in one job are the experts trained one per job (seeds follow the
    index, not the job), published as one directory with no staging left behind."""
    group = tmp_path / "mtt" / "1-2"
    _group_job(toy_data, tmp_path, monkeypatch, "mtt", 1, 2, group)
    assert sorted(f.name for f in group.iterdir()) == ["expert_1.pt", "expert_2.pt"]
    assert not Path(f"{group}.parts").exists()
    for i in (1, 2):
        single = tmp_path / "single" / f"{i}-{i}"
        _group_job(toy_data, tmp_path, monkeypatch, "mtt", i, i, single)
        a, b = load_expert(group / f"expert_{i}.pt"), load_expert(single / f"expert_{i}.pt")
        assert torch.equal(a.snapshots, b.snapshots) and a.meta["index"] == i
    e1, e2 = (load_expert(group / f"expert_{i}.pt") for i in (1, 2))
    assert not torch.equal(e1.snapshots[0], e2.snapshots[0])  # different seeds, different inits
    pool = ExpertPool([group])
    assert len(pool) == 2 and [e.meta["index"] for e in pool.experts] == [1, 2]
    (group / "expert_2.pt").unlink()
    with pytest.raises(ExpertError, match="should hold expert_1.pt..expert_2.pt"):
        ExpertPool([group])


def test_a_rerun_keeps_finished_experts_with_the_same_settings(toy_data, tmp_path, monkeypatch):
    """An interrupted group job's finished experts (staging) and another grouping's experts are
    reused, not retrained; an expert trained with other settings is retrained."""
    kind_dir = tmp_path / "mtt"
    calls: list[int] = []
    _group_job(toy_data, tmp_path, monkeypatch, "mtt", 0, 0, kind_dir / "0-0", calls=calls)
    assert calls == [0]
    # experts_per_job changed from 1 to 3: expert 0 comes from 0-0, experts 1 and 2 are trained
    _group_job(toy_data, tmp_path, monkeypatch, "mtt", 0, 2, kind_dir / "0-2", calls=calls)
    assert calls == [0, 1, 2]
    assert torch.equal(load_expert(kind_dir / "0-0/expert_0.pt").snapshots,
                       load_expert(kind_dir / "0-2/expert_0.pt").snapshots)
    # a job killed after expert 3 left staging behind: the rerun trains only expert 4
    parts = Path(f"{kind_dir / '3-4'}.parts")
    _group_job(toy_data, tmp_path, monkeypatch, "mtt", 3, 3, kind_dir / "tmp")
    parts.mkdir()
    (kind_dir / "tmp/expert_3.pt").rename(parts / "expert_3.pt")
    (kind_dir / "tmp").rmdir()
    (parts / "expert_9.pt").write_bytes(b"stale")  # another range's leftover is dropped
    calls.clear()
    _group_job(toy_data, tmp_path, monkeypatch, "mtt", 3, 4, kind_dir / "3-4", calls=calls)
    assert calls == [4] and sorted(f.name for f in (kind_dir / "3-4").iterdir()) == [
        "expert_3.pt", "expert_4.pt"]
    # other settings (another batch size) never reuse an expert
    from ltdistill.experts import pipeline
    calls.clear()
    pipeline.train_expert_job("c", "s", "p", "mtt", 0, 0, {"epochs": 1, "batch_size": 8}, {},
                              "color_crop_cutout_flip_scale_rotate", "cpu", kind_dir / "other",
                              checkpoint_every_s=None)
    assert calls == [0]


def test_disagreeing_consumers_are_rejected():
    from ltdistill.experts.pipeline import expert_preprocessing_kind

    cfg = _config(["mtt"], ["mtt", "mtt_plain"])
    cfg["method_params"]["mtt_plain"] = {"method": "mtt"}
    with pytest.raises(ConfigError, match="different preprocessings"):
        expert_preprocessing_kind(cfg, "fmnist", "mtt")


def test_expert_training_is_seeded(toy_data):
    from ltdistill.experts import train_expert

    cfg = expert_config("datm", {"epochs": 1, "batch_size": 16})
    spec = _toy_spec(toy_data)
    a, acc_a = train_expert(toy_data, spec, cfg, "datm", 0, "cpu")
    b, acc_b = train_expert(toy_data, spec, cfg, "datm", 0, "cpu")
    c, _ = train_expert(toy_data, spec, cfg, "datm", 1, "cpu")
    assert a.shape == (2, c.shape[1]) and a.dtype == torch.float32
    assert torch.equal(a, b) and acc_a == acc_b
    assert not torch.equal(a[0], c[0])  # expert i has its own initialisation
