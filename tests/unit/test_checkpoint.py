"""Checkpointer state capture, stale/damaged checkpoints, and a real SIGKILL of a distill job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from ltdistill import pipeline
from ltdistill.checkpoint import Checkpointer
from ltdistill.data.base import save_dataset_cache
from ltdistill.io import load_image_set

from ..conftest import make_raw


def _state():
    x = torch.arange(4.0, requires_grad=True)
    opt = torch.optim.SGD([x], lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(3)
    return x, opt, g, [1.0]


def _advance(x, opt, g, losses):
    loss = (x * torch.rand(4, generator=g)).sum() + torch.rand(())  # global RNG too
    opt.zero_grad()
    loss.backward()
    opt.step()
    losses.append(float(loss.detach()))


def test_resume_restores_every_tracked_object(tmp_path):
    x, opt, g, losses = _state()
    ck = Checkpointer(tmp_path / "c.pt", 0, {"a": 1}).track(x=x, opt=opt, g=g, losses=losses)
    _advance(x, opt, g, losses)
    torch.manual_seed(7)
    ck.step(1)
    for _ in range(2):
        _advance(x, opt, g, losses)
    expected = (x.detach().clone(), list(losses))

    x2, opt2, g2, losses2 = _state()
    ck2 = Checkpointer(tmp_path / "c.pt", 0, {"a": 1}).track(x=x2, opt=opt2, g=g2, losses=losses2)
    assert ck2.resume() == 1
    for _ in range(2):
        _advance(x2, opt2, g2, losses2)
    assert torch.equal(x2.detach(), expected[0]) and losses2 == expected[1]
    ck2.finish()
    assert not (tmp_path / "c.pt").exists()


def test_stale_or_damaged_checkpoints_are_ignored(tmp_path):
    x, opt, g, losses = _state()
    Checkpointer(tmp_path / "c.pt", 0, {"lr": 1}).track(x=x).save(5)
    assert Checkpointer(tmp_path / "c.pt", 0, {"lr": 2}).track(x=x).resume() == 0
    assert Checkpointer(tmp_path / "c.pt", 0, {"lr": 1}).track(x=x).resume() == 5
    (tmp_path / "c.pt").write_bytes(b"\x00garbage")
    assert Checkpointer(tmp_path / "c.pt", 0, {"lr": 1}).track(x=x).resume() == 0
    assert Checkpointer(None).resume() == 0  # disabled


def test_untrackable_objects_are_named():
    import pytest

    with pytest.raises(TypeError, match="cannot checkpoint speed"):
        Checkpointer(None).track(speed=3.0)


JOB = """
import sys
from ltdistill import pipeline
d = sys.argv[1]
pipeline.distill(f"{d}/cache.pt", f"{d}/split.json", f"{d}/prep.pt", "dm",
                 {"iterations": int(sys.argv[3]), "batch_real": 8, "log_every": 1000}, 3, 0,
                 {"arch": "convnet", "width": 8, "norms": {}}, "cpu", {}, sys.argv[2],
                 {"dataset": "toy"}, checkpoint_every_s=0)
"""


def _files(d: Path) -> None:
    save_dataset_cache(d / "cache.pt", make_raw())
    pipeline.split_dataset(d / "cache.pt", 4, {"n_max": 16}, {"many_above": 10, "few_below": 3},
                           d / "split.json")
    pipeline.fit_preprocessing(d / "cache.pt", d / "split.json", "normalise", 0.1, d / "prep.pt")


def test_sigkilled_distillation_resumes_to_the_same_image_set(tmp_path):
    _files(tmp_path)
    iters = "400"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed_out = tmp_path / "killed" / "image_set.pt"
    ckpt = Path(f"{killed_out}.ckpt")
    proc = subprocess.Popen([sys.executable, "-c", JOB, str(tmp_path), str(killed_out), iters],
                            env=env)
    deadline = time.time() + 120
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # a few more iterations, then SIGKILL mid-run
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the job finished before it could be killed"
    assert ckpt.exists() and not killed_out.exists()  # no output that looks complete
    done = torch.load(ckpt, weights_only=True)["done"]
    assert 0 < done < int(iters)

    # restart the same job (what `snakemake --rerun-incomplete` does), and run one uninterrupted
    subprocess.run([sys.executable, "-c", JOB, str(tmp_path), str(killed_out), iters], env=env,
                   check=True)
    clean_out = tmp_path / "clean" / "image_set.pt"
    subprocess.run([sys.executable, "-c", JOB, str(tmp_path), str(clean_out), iters], env=env,
                   check=True)
    a, b = load_image_set(killed_out), load_image_set(clean_out)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert a.meta["final_loss"] == b.meta["final_loss"]
    assert not ckpt.exists()
