"""Deterministic preprocessing shared by experts, distillation, evaluation and the test set:
mean/std normalisation, or ZCA whitening (eps 0.1, fitted on the LT train split in float64)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..io import load_tensors, save_tensors

KINDS = ("normalise", "zca")


@dataclass
class Preprocessing:
    """Maps uint8 images to the space methods work in, and back to [0, 1] for pictures."""

    kind: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    zca_mean: torch.Tensor | None = None  # (D,) float32
    zca_w: torch.Tensor | None = None  # (D, D) float32, y = (x - mu) W
    zca_winv: torch.Tensor | None = None  # (D, D) float32, x = y W^-1 + mu
    eps: float = 0.1
    digest: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown preprocessing '{self.kind}'. Known: {', '.join(KINDS)}")
        if self.kind == "zca" and self.zca_w is None:
            raise ValueError("zca preprocessing needs fitted matrices (see fit_zca)")

    def apply(self, images: torch.Tensor, batch: int = 4096) -> torch.Tensor:
        """uint8 (or float in [0, 1]) N x C x H x W -> float32 in this space."""
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        if self.kind == "normalise":
            m = torch.tensor(self.mean).view(1, -1, 1, 1)
            s = torch.tensor(self.std).view(1, -1, 1, 1)
            return (x - m) / s
        shape = x.shape
        flat = x.reshape(shape[0], -1)
        out = torch.empty_like(flat)
        for i in range(0, shape[0], batch):  # bounded memory for large sets
            out[i:i + batch] = (flat[i:i + batch] - self.zca_mean) @ self.zca_w
        return out.reshape(shape)

    def to_unit(self, x: torch.Tensor) -> torch.Tensor:
        """Back to [0, 1] pixel space (for image grids and uint8 export), clamped."""
        x = x.detach().float().cpu()
        if self.kind == "normalise":
            m = torch.tensor(self.mean).view(1, -1, 1, 1)
            s = torch.tensor(self.std).view(1, -1, 1, 1)
            return (x * s + m).clamp(0, 1)
        flat = x.reshape(x.shape[0], -1) @ self.zca_winv + self.zca_mean
        return flat.reshape(x.shape).clamp(0, 1)

    def describe(self) -> dict:
        return {"kind": self.kind, "mean": list(self.mean), "std": list(self.std),
                "eps": self.eps if self.kind == "zca" else None, "digest": self.digest}


def fit_zca(images: torch.Tensor, eps: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """kornia-equivalent ZCA: unbiased covariance in float64, W = U diag((S+eps)^-1/2) U^T."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    flat = x.reshape(x.shape[0], -1).double()
    mu = flat.mean(dim=0)
    centred = flat - mu
    cov = centred.T @ centred / (flat.shape[0] - 1)
    evals, evecs = torch.linalg.eigh(cov)
    evals = evals.clamp_min(0)
    w = evecs @ torch.diag((evals + eps).rsqrt()) @ evecs.T
    winv = evecs @ torch.diag((evals + eps).sqrt()) @ evecs.T
    return mu.float(), w.float(), winv.float()


def make_preprocessing(kind: str, mean, std, train_images: torch.Tensor | None = None,
                       eps: float = 0.1) -> Preprocessing:
    if kind == "normalise":
        return Preprocessing("normalise", tuple(mean), tuple(std))
    if kind == "zca":
        if train_images is None:
            raise ValueError("zca needs the LT training images to fit on")
        mu, w, winv = fit_zca(train_images, eps)
        return Preprocessing("zca", tuple(mean), tuple(std), mu, w, winv, eps)
    raise ValueError(f"unknown preprocessing '{kind}'. Known: {', '.join(KINDS)}")


def save_preprocessing(path: str | Path, p: Preprocessing) -> None:
    tensors = {}
    if p.kind == "zca":
        tensors = {"zca_mean": p.zca_mean, "zca_w": p.zca_w, "zca_winv": p.zca_winv}
    save_tensors(path, tensors, {"kind": p.kind, "mean": list(p.mean), "std": list(p.std),
                                 "eps": p.eps})


def load_preprocessing(path: str | Path) -> Preprocessing:
    from ..atomic import sha256_file

    tensors, meta = load_tensors(path)
    return Preprocessing(meta["kind"], tuple(meta["mean"]), tuple(meta["std"]),
                         tensors.get("zca_mean"), tensors.get("zca_w"), tensors.get("zca_winv"),
                         float(meta["eps"]), sha256_file(path)[:16])
