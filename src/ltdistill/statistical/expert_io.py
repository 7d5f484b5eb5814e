"""Save / load observer and teacher networks (BatchNorm models).

`io.save_tensors` cannot hash 0-dim integer tensors, and every BatchNorm layer has one
(`num_batches_tracked`, only used when momentum is None, never by a frozen expert). Those buffers
are left out of the file and the loader accepts exactly them as missing."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from torch import nn

from ..io import load_tensors, save_tensors
from ..models import ModelSpec, build_model

_SKIPPED = "num_batches_tracked"


def save_expert(path: str | Path, model: nn.Module, spec: ModelSpec,
                meta: dict[str, Any] | None = None) -> None:
    state = {k: v for k, v in model.state_dict().items() if not k.endswith(_SKIPPED)}
    save_tensors(path, state, {"spec": asdict(spec), **(meta or {})})


def load_expert_model(path: str | Path, device: str = "cpu") -> tuple[nn.Module, ModelSpec, dict[str, Any]]:
    """The network in eval mode, its spec and meta (also reads files written by save_model)."""
    state, meta = load_tensors(path)
    spec = ModelSpec(**meta.pop("spec"))
    model = build_model(spec, seed=0)
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith(_SKIPPED)]
    if missing or result.unexpected_keys:
        raise ValueError(f"{path} does not match {spec}: missing {missing}, unexpected "
                         f"{result.unexpected_keys}")
    return model.to(device).eval(), spec, meta
