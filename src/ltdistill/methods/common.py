"""Shared helpers for methods: the IPC > n_c policies and feature extraction with a trained net."""

from __future__ import annotations

import torch

POLICIES = ("inherent", "duplicate", "noise")


def fill_class(images: torch.Tensor, ranked: torch.Tensor, ipc: int, policy: str,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick IPC images of one class from `images` (n_c x C x H x W) in `ranked` order.

    inherent: min(IPC, n_c) images. duplicate: slot k uses ranked[k mod n_c]. noise: the n_c real
    images, then N(0, 1) images for the remaining slots (drawn from `generator`)."""
    n = len(ranked)
    if n == 0:
        raise ValueError("a class with no real images cannot be filled")
    if policy == "inherent" or ipc <= n:
        return images[ranked[: min(ipc, n)]].clone()
    if policy == "duplicate":
        slots = torch.arange(ipc) % n
        return images[ranked[slots]].clone()
    if policy == "noise":
        extra = torch.randn((ipc - n, *images.shape[1:]), generator=generator)
        return torch.cat([images[ranked].clone(), extra.to(images.dtype)])
    raise ValueError(f"unknown ipc_policy '{policy}'. Known policies: {', '.join(POLICIES)}")


@torch.no_grad()
def embed_images(model: torch.nn.Module, images: torch.Tensor, device: torch.device,
                 batch_size: int = 512) -> torch.Tensor:
    """Penultimate features (model.embed) in eval mode, no augmentation; returns CPU float32."""
    model = model.to(device).eval()
    out = [model.embed(images[i:i + batch_size].to(device)).float().cpu()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else torch.empty(0)


def class_slices(labels: torch.Tensor, num_classes: int) -> list[torch.Tensor]:
    """Indices of each class in `labels` (in their stored order)."""
    return [torch.nonzero(labels == c, as_tuple=False).flatten() for c in range(num_classes)]
