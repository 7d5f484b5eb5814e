"""Cache-sized micro-batches for CPU training: the same gradient, computed in slices.

A ConvNet-3 step on a batch of 256 28x28 images moves ~26 MB per activation tensor, more than a
core's cache; on 2 cores a step runs at ~820-940 images/s at batch 256 and ~1370-1420 images/s
when the same batch is pushed through forward/backward in slices of 32 whose gradients accumulate
(benchmarks/harness.py, docs/performance.md). The mean loss over B samples equals the sum over
slices of (slice mean x slice size / B), so the accumulated gradient is the full-batch gradient up
to float summation order, and the optimiser step is unchanged.

That holds only when no layer mixes samples or draws random numbers per call: BatchNorm (batch
statistics) and Dropout (masks drawn in a different order) disable slicing. The instance-norm
ConvNets of distillation (GroupNorm(C, C)) and norm-free models slice safely. On CUDA slicing only
adds kernel launches, so `auto` never slices there.

`runtime.micro_batch` sets the process-wide policy (jobs.start): "auto" (default: AUTO_CPU_SLICE on
CPU for safe models, except ConvNets whose blocks run as the native kernels of models/native.py,
which keep their intermediates in cache without it; off otherwise), 0 (off), or a positive slice
size (still only for safe models).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .models.native import first_order

AUTO_CPU_SLICE = 32
_policy: str | int = "auto"


def set_micro_batch(policy: str | int | None) -> None:
    """Set the process-wide policy: "auto", 0 / None (off) or a positive slice size."""
    global _policy
    if policy is None:
        policy = 0
    if isinstance(policy, bool) or not (policy == "auto" or (isinstance(policy, int) and policy >= 0)):
        raise ValueError(f"runtime.micro_batch must be 'auto', 0 (off) or a positive integer, "
                         f"got {policy!r}")
    _policy = policy


def get_micro_batch() -> str | int:
    return _policy


def slices_safely(model: nn.Module) -> bool:
    """True when every sample's output and gradient is independent of the rest of the batch and
    no layer draws random numbers: no BatchNorm, no Dropout."""
    banned = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd, nn.SyncBatchNorm)
    return not any(isinstance(m, banned) for m in model.modules())


def micro_batch_size(model: nn.Module, device: torch.device | str,
                     policy: str | int | None = None) -> int | None:
    """The slice size for training `model` on `device`, or None for whole batches."""
    policy = _policy if policy is None else policy
    if policy == 0 or not slices_safely(model):
        return None
    if policy == "auto":
        if torch.device(device).type != "cpu" or _runs_native_blocks(model):
            return None
        return AUTO_CPU_SLICE
    return int(policy)


def _runs_native_blocks(model: nn.Module) -> bool:
    """A ConvNet whose blocks run as the native kernels (models/native.py) keeps each block's
    intermediates in cache by itself; slicing its batch only adds calls (width 32, batch 256:
    13,756 images/s whole against 9,540 in slices of 32 on 2 threads; docs/performance.md,
    stop 18)."""
    check = getattr(model, "native_blocks", None)
    return bool(callable(check) and check())


def sliced_backward(loss_fn: Callable[[slice], torch.Tensor], n: int,
                    size: int | None) -> torch.Tensor:
    """Backward of the mean loss over `n` samples; `loss_fn(sl)` returns the MEAN loss of the
    samples `sl` (a slice of the batch). With `size` (and n > size) the batch is processed in
    slices of `size` whose scaled losses are back-propagated one after the other, so gradients
    accumulate into `.grad` exactly as one backward of the full-batch mean would (up to float
    summation order). Returns the detached full-batch mean loss."""
    if n < 1:
        raise ValueError(f"need at least one sample, got n={n}")
    with first_order():  # a plain .backward(): the native first-order kernels may run
        return _sliced_backward(loss_fn, n, size)


def _sliced_backward(loss_fn: Callable[[slice], torch.Tensor], n: int,
                     size: int | None) -> torch.Tensor:
    if size is None or size >= n:
        loss = loss_fn(slice(0, n))
        loss.backward()
        return loss.detach()
    total = None
    for start in range(0, n, size):
        sl = slice(start, min(start + size, n))
        part = loss_fn(sl) * ((sl.stop - sl.start) / n)
        part.backward()
        total = part.detach() if total is None else total + part.detach()
    return total


def inference_batch_size(device: torch.device | str, requested: int) -> int:
    """Batch size for no-grad forward passes: 4 x the training slice (cache-sized; samples do not
    interact in eval mode or in per-sample-norm models), on CPU under `auto`, anywhere with an
    explicit slice size; `requested` when slicing is off (or on CUDA under `auto`)."""
    if _policy == 0 or (_policy == "auto" and torch.device(device).type != "cpu"):
        return requested
    return min(requested, 4 * (AUTO_CPU_SLICE if _policy == "auto" else int(_policy)))


def sliced_grad(loss_fn: Callable[[slice], torch.Tensor], n: int, size: int | None,
                params: list[torch.Tensor]) -> list[torch.Tensor]:
    """Detached d(mean loss over n samples)/d(params), accumulated over slices of `size` like
    sliced_backward but without touching `.grad` (e.g. the real-data gradients of gradient
    matching). `loss_fn(sl)` returns the MEAN loss of the samples `sl`."""
    if n < 1:
        raise ValueError(f"need at least one sample, got n={n}")
    with first_order():  # no graph of the gradient: the native first-order kernels may run
        return _sliced_grad(loss_fn, n, size, params)


def _sliced_grad(loss_fn: Callable[[slice], torch.Tensor], n: int, size: int | None,
                 params: list[torch.Tensor]) -> list[torch.Tensor]:
    if size is None or size >= n:
        return [g.detach() for g in torch.autograd.grad(loss_fn(slice(0, n)), params)]
    total: list[torch.Tensor] | None = None
    for start in range(0, n, size):
        sl = slice(start, min(start + size, n))
        part = torch.autograd.grad(loss_fn(sl) * ((sl.stop - sl.start) / n), params)
        total = [g.detach() for g in part] if total is None else [
            t.add_(g) for t, g in zip(total, part, strict=True)]
    return total


@torch.no_grad()
def sliced_forward(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                   size: int | None) -> torch.Tensor:
    """torch.cat of fn over slices of x (no gradients): the same rows as fn(x) for a model whose
    samples do not interact (check with slices_safely), computed cache-sized."""
    if size is None or size >= len(x):
        return fn(x)
    return torch.cat([fn(x[i:i + size]) for i in range(0, len(x), size)])
