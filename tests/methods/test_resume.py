"""Resume contract: every method with an iterative loop checkpoints it, and a run interrupted
right after a checkpoint, then restarted, ends bit-identical to an uninterrupted run (CPU)."""

from __future__ import annotations

import pytest
import torch

from ltdistill import checkpoint as C
from ltdistill.methods import METHODS, DistillContext, get_method, run_method

from .conftest import TINY_PARAMS, toy_spec
from .test_contract import IPC, _artifacts

get_method("full")
#: methods whose main loop is checkpointed (loop-free selection methods need none)
LOOPED = {"dc", "dsa", "dm", "mtt", "datm", "damed", "sre2l", "rldd"}
LONGER = {"dc": {"iterations": 3}, "dsa": {"iterations": 3}, "dm": {"iterations": 4},
          "sre2l": {"iterations": 2}, "rldd": {"iterations": 2}}


class Interrupted(Exception):
    pass


def _ctx(data, arts, path):
    return DistillContext(data=data, ipc=IPC, seed=0, device=torch.device("cpu"),
                          model=toy_spec(data), artifacts=arts, checkpoint_path=path,
                          checkpoint_every_s=0.0)


@pytest.mark.parametrize("name", METHODS.names())
def test_interrupted_run_resumes_bit_identically(name, toy_data, artifact_dir, artifact_cache,
                                                 tmp_path, monkeypatch):
    arts = _artifacts(name, toy_data, artifact_dir, artifact_cache)
    params = {**TINY_PARAMS.get(name, {}), **LONGER.get(name, {})}
    path = tmp_path / "set.pt.ckpt"
    reference = run_method(name, _ctx(toy_data, arts, None), params)

    real_save = C.Checkpointer.save
    saves = []

    def save_then_die(self, done):  # the job is killed right after its first checkpoint
        real_save(self, done)
        saves.append(done)
        raise Interrupted

    monkeypatch.setattr(C.Checkpointer, "save", save_then_die)
    try:
        run_method(name, _ctx(toy_data, arts, path), params)
        interrupted = False
    except Interrupted:
        interrupted = True
    monkeypatch.setattr(C.Checkpointer, "save", real_save)
    assert interrupted == (name in LOOPED), f"{name}: checkpointed={interrupted}"
    if not interrupted:
        return
    assert path.exists() and saves == [1]
    resumed = run_method(name, _ctx(toy_data, arts, path), params)
    assert not path.exists()  # a finished loop removes its checkpoint
    assert torch.equal(resumed.images, reference.images)
    assert torch.equal(resumed.labels, reference.labels)
    if reference.soft_labels is not None:
        assert torch.equal(resumed.soft_labels, reference.soft_labels)
    assert resumed.learned_lr == reference.learned_lr
