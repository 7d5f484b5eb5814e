"""Opt-in accelerators of first-order training (Protocol A evaluation and expert training):
`runtime.amp` (bfloat16 autocast on CUDA) and `runtime.compile` (torch.compile of the trained
model). Both are off by default: the benchmark's tables are float32 eager numbers, and either
switch changes float results (autocast: bfloat16 matmuls; compile: fused kernels with another
summation order), so a table made with them is not comparable bit for bit with one made
without.

- `amp: bf16` autocasts the forward passes of CUDA training to bfloat16 (no loss scaling needed,
  unlike float16). On CPU it is off whatever the setting (the issue's "AMP off on CPU": CPU
  autocast's bfloat16 kernels are slower than float32 ones on most CPUs, and the CPU results are
  the reference ones).
- `compile: on` wraps the model in `torch.compile` (Inductor: fused elementwise kernels, C++/
  OpenMP on CPU, Triton on CUDA). Measured on the development machine (2 cores, ConvNet-3 width
  32, batch 256 in slices of 32, DSA off): 6,054-6,194 images/s compiled against 4,124-4,206
  eager with the stock modules and ~4,600-4,700 with ltdistill's own pool and norm; compiling
  costs ~23 s the first time and ~1 s once Inductor's on-disk cache holds the kernels
  (`TORCHINDUCTOR_CACHE_DIR`, /tmp/torchinductor_<user> by default). It needs a C++ compiler on
  CPU. Only the trained model is compiled; the distillation methods' differentiated training
  steps keep their own fast paths.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

AMP_POLICIES = ("off", "bf16")
COMPILE_POLICIES = ("off", "on")
_amp = "off"
_compile = "off"


def set_acceleration(amp: str | None = "off", compile: str | None = "off") -> None:
    """Set the process-wide policies (jobs.start reads them from `runtime`)."""
    global _amp, _compile
    amp = "off" if amp in (None, False) else amp
    compile = "off" if compile in (None, False) else "on" if compile is True else compile
    if amp not in AMP_POLICIES:
        raise ValueError(f"runtime.amp must be one of {', '.join(AMP_POLICIES)}, got {amp!r}")
    if compile not in COMPILE_POLICIES:
        raise ValueError(f"runtime.compile must be one of {', '.join(COMPILE_POLICIES)}, got "
                         f"{compile!r}")
    _amp, _compile = amp, compile


def get_acceleration() -> dict[str, str]:
    return {"amp": _amp, "compile": _compile}


def autocast(device: torch.device | str) -> contextlib.AbstractContextManager[Any]:
    """The forward pass's autocast context: bfloat16 on CUDA under `amp: bf16`, else a no-op."""
    device = torch.device(device)
    if _amp == "bf16" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def compiled(model: nn.Module) -> nn.Module:
    """`model` itself, or under `compile: on` a compiled wrapper sharing its parameters (train
    and checkpoint the original module; call the wrapper)."""
    if _compile != "on":
        return model
    return torch.compile(model)
