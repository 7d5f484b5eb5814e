"""GSAM ("Surrogate Gap Guided Sharpness-Aware Minimization", Zhuang et al., ICLR 2022) over a base
optimiser, as the FTD/DATM/DAMED expert buffers use it (constant rho, adaptive scaling)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch


class GSAM:
    """One `step(loss_fn)` per batch; `loss_fn()` must evaluate the loss on the SAME (already
    augmented) batch every time it is called.

    1. g = grad L(w).  2. e = rho * T^2 g / (||T g|| + eps), T = |w| (adaptive) or 1.
    3. g_p = grad L(w + e).  4. g_par = (<g, g_p> / ||g_p||^2) g_p, g_perp = g - g_par.
    5. restore w; the base optimiser steps with d = g_p - alpha * g_perp (its weight decay and
       momentum apply as usual)."""

    def __init__(self, params: Iterable[torch.nn.Parameter], base_optimizer: torch.optim.Optimizer,
                 rho: float = 0.01, alpha: float = 0.3, adaptive: bool = True,
                 eps: float = 1e-12) -> None:
        self.params = [p for p in params if p.requires_grad]
        if not self.params:
            raise ValueError("GSAM needs at least one trainable parameter")
        self.base = base_optimizer
        self.rho, self.alpha, self.adaptive, self.eps = float(rho), float(alpha), adaptive, eps

    @staticmethod
    def _backward(loss_fn: Callable[[], torch.Tensor]) -> torch.Tensor:
        loss = loss_fn()
        loss.backward()
        return loss.detach()

    def _grads(self, loss_fn: Callable[[], torch.Tensor],
               backward: Callable[[Callable[[], torch.Tensor]], torch.Tensor] | None,
               ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        for p in self.params:
            p.grad = None
        loss = (backward or self._backward)(loss_fn)
        return loss.detach(), [p.grad.detach().clone() if p.grad is not None
                               else torch.zeros_like(p) for p in self.params]

    @staticmethod
    def _dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
        return sum((x * y).sum() for x, y in zip(a, b, strict=True))

    def step(self, loss_fn: Callable[[], torch.Tensor],
             backward: Callable[[Callable[[], torch.Tensor]], torch.Tensor] | None = None,
             ) -> torch.Tensor:
        """Take one GSAM step; returns the loss at the unperturbed weights. `backward(loss_fn)`,
        when given, replaces `loss_fn().backward()` (it must leave the gradients of the mean loss
        in `.grad` and return the detached loss), e.g. microbatch.sliced_backward."""
        loss, g = self._grads(loss_fn, backward)
        with torch.no_grad():
            scaled = [p.abs() * gi if self.adaptive else gi for p, gi in zip(self.params, g, strict=True)]
            norm = self._dot(scaled, scaled).sqrt()
            e = [self.rho * (p.pow(2) if self.adaptive else 1.0) * gi / (norm + self.eps)
                 for p, gi in zip(self.params, g, strict=True)]
            for p, ei in zip(self.params, e, strict=True):
                p.add_(ei)
        _, gp = self._grads(loss_fn, backward)
        with torch.no_grad():
            for p, ei in zip(self.params, e, strict=True):
                p.sub_(ei)
            coef = self._dot(g, gp) / (self._dot(gp, gp) + self.eps)
            for p, gi, gpi in zip(self.params, g, gp, strict=True):
                perp = gi - coef * gpi
                p.grad = gpi - self.alpha * perp
        self.base.step()
        return loss
