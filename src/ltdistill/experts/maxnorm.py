"""MaxNorm row projection of a classifier weight ("Long-Tailed Recognition via Weight Balancing",
Alshammari et al., CVPR 2022; DAMED `utils/weight_balancing/MaxNorm.py`)."""

from __future__ import annotations

import torch


def maxnorm_threshold(weight: torch.Tensor, thresh: float) -> float:
    """tau = min_c ||W_c|| + thresh * (max_c ||W_c|| - min_c ||W_c||) over the rows W_c of W."""
    norms = weight.detach().reshape(weight.shape[0], -1).norm(dim=1)
    return float(norms.min() + thresh * (norms.max() - norms.min()))


@torch.no_grad()
def project_rows(weight: torch.Tensor, tau: float) -> torch.Tensor:
    """In place: every row with L2 norm > tau is rescaled to norm tau; others are untouched."""
    flat = weight.reshape(weight.shape[0], -1)
    norms = flat.norm(dim=1)
    scale = torch.where(norms > tau, tau / norms.clamp_min(1e-30), torch.ones_like(norms))
    weight.mul_(scale.view(-1, *([1] * (weight.dim() - 1))))
    return weight


class MaxNorm:
    """The threshold is fixed at the first call, from the weights of that moment; every call then
    projects the rows onto the ball of radius tau. The bias is never constrained."""

    def __init__(self, thresh: float = 0.1) -> None:
        if not 0 <= thresh <= 1:
            raise ValueError(f"maxnorm thresh must lie in [0, 1], got {thresh}")
        self.thresh = float(thresh)
        self.tau: float | None = None

    def __call__(self, weight: torch.Tensor) -> torch.Tensor:
        if self.tau is None:
            self.tau = maxnorm_threshold(weight, self.thresh)
        return project_rows(weight, self.tau)
