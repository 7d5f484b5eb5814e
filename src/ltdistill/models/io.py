"""Save and load trained networks as tensors + JSON spec (no pickled code)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from torch import nn

from ..io import load_tensors, save_tensors
from . import ModelSpec, build_model


def save_model(path: str | Path, model: nn.Module, spec: ModelSpec, meta: dict[str, Any] | None = None) -> None:
    state = {k: v for k, v in model.state_dict().items()}
    save_tensors(path, state, {"spec": asdict(spec), **(meta or {})})


def load_model(path: str | Path, device: str = "cpu") -> tuple[nn.Module, ModelSpec, dict[str, Any]]:
    state, meta = load_tensors(path)
    spec = ModelSpec(**meta.pop("spec"))
    model = build_model(spec, seed=0)
    model.load_state_dict(state)
    return model.to(device).eval(), spec, meta
