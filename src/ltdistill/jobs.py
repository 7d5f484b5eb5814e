"""Prelude shared by every workflow script: log to the rule's log file and set torch threads.
Receives the snakemake job object as a plain argument (the package never imports snakemake)."""

from __future__ import annotations

import logging
from typing import Any

import torch

from .allocator import tune_allocator
from .microbatch import set_micro_batch
from .progress import setup_logging


def set_deterministic(enabled: bool) -> None:
    """Bit-identical GPU runs: deterministic cuDNN/cuBLAS kernels, no autotuning. CPU runs are
    deterministic already; on GPU this costs speed (the slower deterministic kernels)."""
    if not enabled:
        return
    import os

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=False)


def checkpoint_every_s(job: Any) -> float:
    """runtime.checkpoint_every_s of the job's config (read here, not passed as a rule param, so
    that changing how often jobs checkpoint never makes Snakemake rerun finished work)."""
    runtime = (getattr(job, "config", None) or {}).get("runtime", {})
    return float(runtime.get("checkpoint_every_s", 600))


def start(job: Any) -> logging.Logger:
    setup_logging(job.log[0] if job.log else None)
    torch.set_num_threads(max(1, int(job.threads)))
    runtime = (getattr(job, "config", None) or {}).get("runtime", {})
    set_deterministic(bool(runtime.get("deterministic", False)))
    set_micro_batch(runtime.get("micro_batch", "auto"))
    tune_allocator(runtime.get("allocator", "auto"))
    logger = logging.getLogger(f"ltdistill.job.{job.rule}")
    logger.info("rule %s wildcards %s threads %d", job.rule, dict(job.wildcards), job.threads)
    return logger
