"""Resume contract of the training loops outside distillation: evaluation training (Protocol A,
including an interruption after the lr decay, and Protocol B with its EMA) and expert training
(SGD, GSAM, class-aware sampling, MaxNorm). A run killed right after its k-th checkpoint and
restarted ends bit-identical to an uninterrupted one on CPU; the pipeline jobs drop the checkpoint
once their output is written. Run: pytest tests/unit/test_resume_training.py -q"""

from __future__ import annotations

import pytest
import torch

from ltdistill import checkpoint as C
from ltdistill.models import ModelSpec, build_model


class Interrupted(Exception):
    pass


def _killed_then_resumed(run, path, monkeypatch, kill_at: int):
    """Run `run(ckpt)` once uninterrupted, once killed right after its `kill_at`-th checkpoint,
    then once resumed from that checkpoint; returns (uninterrupted, resumed)."""
    reference = run(None)
    real_save = C.Checkpointer.save
    saves: list[int] = []

    def save_then_die(self, done):
        real_save(self, done)
        saves.append(done)
        if len(saves) == kill_at:
            raise Interrupted

    monkeypatch.setattr(C.Checkpointer, "save", save_then_die)
    with pytest.raises(Interrupted):
        run(C.Checkpointer(path, every_s=0.0, fingerprint="test"))
    monkeypatch.setattr(C.Checkpointer, "save", real_save)
    assert path.exists() and saves == list(range(1, kill_at + 1))
    resumed = run(C.Checkpointer(path, every_s=0.0, fingerprint="test"))
    return reference, resumed


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("kill_at", [1, 4])  # before and after the lr decay (epoch E//2 + 1 = 3)
def test_evaluation_training_resumes_bit_identically(tmp_path, monkeypatch, kill_at):
    from ltdistill.evaluation.train import TrainRecipe, train_classifier

    g = torch.Generator().manual_seed(0)
    images = torch.randn(24, 1, 28, 28, generator=g)
    labels = torch.arange(24) % 4
    spec = ModelSpec("convnet3", 1, 4, 28, width=4)
    recipe = TrainRecipe(epochs=4, batch_size=10)

    def run(ckpt):
        return _state(train_classifier(spec, images, labels, recipe=recipe, lr=0.05, seed=2,
                                       device="cpu", ckpt=ckpt))

    reference, resumed = _killed_then_resumed(run, tmp_path / "eval.ckpt", monkeypatch, kill_at)
    assert not all(torch.equal(reference[k], v) for k, v in _state(build_model(spec, 2)).items())
    _assert_same(reference, resumed)


def test_protocol_b_training_resumes_bit_identically(tmp_path, monkeypatch, toy_data):
    from ltdistill.evaluation.protocol_b import train_protocol_b
    from ltdistill.evaluation.train import TrainRecipe

    spec = ModelSpec("convnet3", 1, 4, 8, width=4)
    teacher = build_model(ModelSpec("convnet3", 1, 4, 8, width=4, norm="batch"), 3).eval()
    x, y = toy_data.train_images[:12], toy_data.train_labels[:12]
    recipe = TrainRecipe(epochs=3, batch_size=5, protocol="b")

    def run(ckpt):
        return _state(train_protocol_b(spec, x, y, recipe=recipe, lr=0.1, seed=0, device="cpu",
                                       preprocessing=toy_data.preprocessing, teacher=teacher,
                                       ckpt=ckpt))

    reference, resumed = _killed_then_resumed(run, tmp_path / "pb.ckpt", monkeypatch, 2)
    _assert_same(reference, resumed)


@pytest.mark.parametrize("kind,overrides", [
    ("mtt", {}),
    ("datm", {"sampler": "class_aware", "samples_per_class": 2}),  # GSAM + sampler state
    ("mtt", {"maxnorm": True, "momentum": 0.9}),  # momentum buffers + MaxNorm tau
])
def test_expert_training_resumes_bit_identically(tmp_path, monkeypatch, toy_data, kind,
                                                 overrides):
    from ltdistill.experts import expert_config, train_expert

    cfg = expert_config(kind, {"epochs": 3, "batch_size": 8, "lr": 0.05, **overrides})
    spec = ModelSpec("convnet3", toy_data.channels, toy_data.num_classes, toy_data.image_size,
                     width=4)

    def run(ckpt):
        return train_expert(toy_data, spec, cfg, kind, 0, "cpu", ckpt=ckpt)

    (ref, ref_acc), (res, res_acc) = _killed_then_resumed(run, tmp_path / "e.ckpt",
                                                          monkeypatch, 2)
    assert ref.shape == (4, ref.shape[1]) and not torch.equal(ref[0], ref[-1])
    assert torch.equal(ref, res) and ref_acc == res_acc


def test_sampler_state_roundtrip_and_mismatch():
    from ltdistill.experts import ClassAwareSampler

    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    a = ClassAwareSampler(labels, 3, 2, torch.Generator().manual_seed(1))
    a.epoch()
    state = a.state_dict()
    g_state = a.classes.g.get_state()
    expected = a.epoch()
    b = ClassAwareSampler(labels, 3, 2, torch.Generator().manual_seed(99))
    b.load_state_dict(state)
    b.classes.g.set_state(g_state)  # the owner checkpoints the shared generator
    assert torch.equal(b.epoch(), expected)
    other = ClassAwareSampler(torch.tensor([0, 1, 1, 2]), 3, 2, torch.Generator())
    with pytest.raises(ValueError, match="does not belong"):
        other.load_state_dict(state)


def test_expert_job_drops_its_checkpoint_once_written(tmp_path, toy_data):
    from ltdistill.experts import expert_config, load_expert
    from ltdistill.experts.pipeline import build_expert

    spec = ModelSpec("convnet3", toy_data.channels, toy_data.num_classes, toy_data.image_size,
                     width=4)
    out = tmp_path / "expert_0.pt"
    build_expert(toy_data, spec, "mtt", 0, expert_config("mtt", {"epochs": 2, "batch_size": 8}),
                 "cpu", out, checkpoint_every_s=0.0)
    assert out.exists() and not (tmp_path / "expert_0.pt.ckpt").exists()
    assert load_expert(out).snapshots.shape[0] == 3


@pytest.mark.parametrize("loss", ["glmc", "ce"])
def test_statistical_expert_training_resumes_bit_identically(tmp_path, monkeypatch, toy_data,
                                                             loss):
    from ltdistill.statistical.glmc import ExpertConfig, expert_spec, train_expert

    cfg = ExpertConfig(loss=loss, arch="convnet3", width=4, epochs=3, batch_size=8, proj_dim=4)
    spec = expert_spec(cfg, 1, 4, 8)

    def run(ckpt):
        return _state(train_expert(toy_data.train_images, toy_data.train_labels, toy_data.counts,
                                   spec, cfg, 7, ckpt=ckpt))

    reference, resumed = _killed_then_resumed(run, tmp_path / "obs.ckpt", monkeypatch, 1)
    _assert_same(reference, resumed)
