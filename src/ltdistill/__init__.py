"""ltdistill: a reproducible benchmark for long-tailed dataset distillation."""

__version__ = "0.1.0"
