"""Prelude shared by every workflow script: log to the rule's log file and set torch threads.
Receives the snakemake job object as a plain argument (the package never imports snakemake)."""

from __future__ import annotations

import logging
from typing import Any

import torch

from .progress import setup_logging


def start(job: Any) -> logging.Logger:
    setup_logging(job.log[0] if job.log else None)
    torch.set_num_threads(max(1, int(job.threads)))
    logger = logging.getLogger(f"ltdistill.job.{job.rule}")
    logger.info("rule %s wildcards %s threads %d", job.rule, dict(job.wildcards), job.threads)
    return logger
