"""Deterministic seed derivation: every random stream comes from (run seed, named keys)."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch


def derive_seed(*keys: object) -> int:
    """Map any tuple of keys (ints, strings) to a 63-bit seed, stable across runs and machines."""
    text = "\x1f".join(repr(k) for k in keys)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def generator(*keys: object, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch.Generator seeded from derive_seed(*keys)."""
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(*keys))
    return g


def seed_everything(seed: int) -> None:
    """Seed the global RNGs (for library code that cannot take a generator)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def configure_determinism(deterministic: bool = True) -> None:
    """Ask torch for deterministic kernels (CPU is deterministic already; matters on CUDA)."""
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    if torch.backends.cudnn.is_available():
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic
