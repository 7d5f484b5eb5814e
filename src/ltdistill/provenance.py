"""Provenance records: git commit, library versions, device and wall time for every output."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import torch

_PACKAGES = ("torch", "torchvision", "numpy", "pandas", "snakemake", "ltdistill")


def git_commit(cwd: str | Path | None = None) -> str:
    """The current git commit (with '-dirty' if the tree has changes), or 'unknown'."""
    cwd = Path(cwd or Path(__file__).resolve().parent)
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        if not sha:
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd, capture_output=True, text=True, timeout=10,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def device_description(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"


def runtime_description() -> dict:
    """The process-wide runtime policies that change floating-point results (summation order) or
    memory, so two outputs can be compared knowing how they were computed: the training slice
    policy (microbatch.py), whether malloc keeps freed memory (allocator.py), deterministic
    algorithms, torch's thread count, the opt-in autocast / torch.compile (acceleration.py) and
    whether the native ConvNet block kernels ran (models/native.py)."""
    from . import acceleration, allocator, microbatch
    from .models import native

    return {"micro_batch": microbatch.get_micro_batch(),
            **acceleration.get_acceleration(),
            "native_kernels": native.get_native_kernels(),
            "allocator_tuned": allocator.is_tuned(),
            "malloc_tcache_off": allocator.tcache_disabled(),
            "deterministic": torch.are_deterministic_algorithms_enabled(),
            "threads": torch.get_num_threads()}


def provenance(device: torch.device | str = "cpu", wall_time_s: float | None = None,
               config: dict | None = None) -> dict:
    """The provenance block stored in every output."""
    record = {
        "git_commit": git_commit(),
        "versions": library_versions(),
        "device": device_description(device),
        "runtime": runtime_description(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if wall_time_s is not None:
        record["wall_time_s"] = round(wall_time_s, 3)
    if config is not None:
        record["config"] = config
    return record


class Stopwatch:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start


@contextmanager
def timed() -> Iterator[Stopwatch]:
    yield Stopwatch()
