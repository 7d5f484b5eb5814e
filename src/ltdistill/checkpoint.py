"""Resumable loops: periodic atomic checkpoints of a loop's whole state, and resume after a kill.

A long job (distillation, expert training, evaluation training) registers the objects its
iterations change - tensors (updated in place), optimisers, modules, torch.Generators, lists of
Python numbers - then asks `resume()` for the first iteration to run and calls `step(done)` after
every iteration:

    ckpt = Checkpointer(path, every_s=600, fingerprint={"method": "dm", **params})
    ckpt.track(syn=syn, opt=opt, real_rng=real.g, losses=losses)
    for it in range(ckpt.resume(), iterations):
        ...
        ckpt.step(it + 1)
    ckpt.finish()  # the job's output is written; the checkpoint goes

The checkpoint also holds torch's global RNG state (CPU and CUDA), so a resumed run continues the
same random streams: on CPU its result is bit-identical to an uninterrupted run with the same
seed (tests/unit/test_checkpoint.py kills a real job to check). A checkpoint written for other
settings (a different fingerprint) is ignored with a log line, never resumed. Files are written
atomically (ltdistill.atomic) and loaded with weights_only=True (no pickled code runs)."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_path

log = logging.getLogger("ltdistill.checkpoint")

FORMAT = 1


def fingerprint_of(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


class Checkpointer:
    """`path` None disables checkpointing (every call is then a no-op). `every_s`: seconds between
    checkpoints (0 = after every iteration)."""

    def __init__(self, path: str | Path | None, every_s: float = 600.0,
                 fingerprint: Any = None) -> None:
        self.path = Path(path) if path is not None else None
        self.every_s = float(every_s)
        self.fingerprint = fingerprint_of(fingerprint)
        self.objects: dict[str, Any] = {}
        self.last = time.perf_counter()
        self.saves = 0

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def track(self, **objects: Any) -> Checkpointer:
        for name, obj in objects.items():
            if not isinstance(obj, (torch.Tensor, torch.Generator, list)) and not (
                    hasattr(obj, "state_dict") and hasattr(obj, "load_state_dict")):
                raise TypeError(f"cannot checkpoint {name} ({type(obj).__name__}): track tensors, "
                                "optimisers, modules, torch.Generators or lists")
            self.objects[name] = obj
        return self

    # --- state capture ----------------------------------------------------------------------

    def _capture(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        for name, obj in self.objects.items():
            if isinstance(obj, torch.Tensor):
                state[name] = obj.detach().cpu().clone()
            elif isinstance(obj, torch.Generator):
                state[name] = obj.get_state()
            elif isinstance(obj, list):
                state[name] = list(obj)
            else:
                state[name] = obj.state_dict()
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {"objects": state, "rng": rng}

    def _restore(self, saved: dict[str, Any]) -> None:
        missing = set(self.objects) - set(saved["objects"])
        if missing:
            raise ValueError(f"checkpoint {self.path} lacks {sorted(missing)}")
        for name, obj in self.objects.items():
            value = saved["objects"][name]
            if isinstance(obj, torch.Tensor):
                with torch.no_grad():
                    obj.copy_(value.to(obj.device))
            elif isinstance(obj, torch.Generator):
                obj.set_state(value)
            elif isinstance(obj, list):
                obj[:] = value
            else:
                obj.load_state_dict(value)
        torch.set_rng_state(saved["rng"]["cpu"])
        if "cuda" in saved["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(saved["rng"]["cuda"])

    # --- the loop interface -----------------------------------------------------------------

    def resume(self) -> int:
        """Restore the tracked objects from the checkpoint and return the number of finished
        iterations (0 without a usable checkpoint)."""
        if not self.enabled or not self.path.exists():
            return 0
        try:
            payload = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a damaged checkpoint only costs the progress
            log.warning("ignoring unreadable checkpoint %s (%s); starting over", self.path, exc)
            return 0
        if payload.get("format") != FORMAT or payload.get("fingerprint") != self.fingerprint:
            log.warning("ignoring checkpoint %s: written for other settings; starting over",
                        self.path)
            return 0
        self._restore(payload["state"])
        done = int(payload["done"])
        log.info("resumed from %s after %d finished iterations", self.path, done)
        return done

    def step(self, done: int, force: bool = False) -> None:
        """Call after iteration `done - 1` finished; saves when `every_s` has passed."""
        if not self.enabled:
            return
        now = time.perf_counter()
        if force or now - self.last >= self.every_s:
            self.save(done)
            self.last = now

    def save(self, done: int) -> None:
        payload = {"format": FORMAT, "fingerprint": self.fingerprint, "done": int(done),
                   "state": self._capture()}
        with atomic_path(self.path) as tmp:
            torch.save(payload, tmp)
        self.saves += 1

    def finish(self) -> None:
        """The job's output is written: drop the checkpoint."""
        if self.enabled and self.path.exists():
            self.path.unlink()


def disabled() -> Checkpointer:
    return Checkpointer(None)
