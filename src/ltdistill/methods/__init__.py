"""Distillation and selection methods: one module per method (the table of contents is
methods/_load_all.py)."""

from .base import METHODS, DistillContext, get_method, register_method, run_method

__all__ = ["METHODS", "DistillContext", "get_method", "register_method", "run_method"]
