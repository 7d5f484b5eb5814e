"""Prelude shared by every workflow script: log to the rule's log file and set torch threads.
Receives the snakemake job object as a plain argument (the package never imports snakemake).

torch is imported only by jobs that train or load tensors: importing it costs ~2 s of a job's
start-up here, and the report jobs that only read CSV/JSON (aggregate, tables, figures) run one
after another at the end of every DAG, so `start(job, uses_torch=False)` keeps them torch-free."""

from __future__ import annotations

import logging
import os
from typing import Any

from .allocator import tune_allocator
from .progress import setup_logging


def set_deterministic(enabled: bool) -> None:
    """Bit-identical GPU runs: deterministic cuDNN/cuBLAS kernels, no autotuning. CPU runs are
    deterministic already; on GPU this costs speed (the slower deterministic kernels)."""
    if not enabled:
        return
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=False)


def checkpoint_every_s(job: Any) -> float:
    """runtime.checkpoint_every_s of the job's config (read here, not passed as a rule param, so
    that changing how often jobs checkpoint never makes Snakemake rerun finished work)."""
    runtime = (getattr(job, "config", None) or {}).get("runtime", {})
    return float(runtime.get("checkpoint_every_s", 600))


def start(job: Any, uses_torch: bool = True) -> logging.Logger:
    """Set up logging, threads and the runtime policies for a job. uses_torch=False for jobs that
    never touch tensors: torch is not imported, and OMP_NUM_THREADS still holds the job's
    threads should anything import it later."""
    setup_logging(job.log[0] if job.log else None)
    threads = max(1, int(job.threads))
    runtime = (getattr(job, "config", None) or {}).get("runtime", {})
    if uses_torch:
        import torch

        from .acceleration import set_acceleration
        from .microbatch import set_micro_batch
        from .models.native import set_native_kernels

        torch.set_num_threads(threads)
        set_deterministic(bool(runtime.get("deterministic", False)))
        set_micro_batch(runtime.get("micro_batch", "auto"))
        set_acceleration(runtime.get("amp", "off"), runtime.get("compile", "off"))
        set_native_kernels(runtime.get("native_kernels", "auto"))
    else:
        os.environ["OMP_NUM_THREADS"] = str(threads)
    tune_allocator(runtime.get("allocator", "auto"))
    logger = logging.getLogger(f"ltdistill.job.{job.rule}")
    logger.info("rule %s wildcards %s threads %d", job.rule, dict(job.wildcards), job.threads)
    return logger


def eval_seeds_and_outputs(job: Any) -> tuple[int | list[int], str | list[str]]:
    """The evaluation seed and output of a per-seed job ({eseed} wildcard), or every seed and
    its output, in params.seeds order, of a batched one (runtime.batch_eval_seeds)."""
    if "eseed" in job.wildcards.keys():
        return int(job.wildcards.eseed), job.output[0]
    return [int(s) for s in job.params.seeds], list(job.output)
