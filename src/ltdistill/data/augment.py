"""Differentiable Siamese Augmentation (DSA): vectorised, differentiable colour/crop/cutout/flip/
scale/rotate ops whose random parameters come from an explicit CPU generator (never the global RNG)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from ..seeding import derive_seed

__all__ = ["DSAParams", "dsa", "siamese_seed_for", "GROUPS", "parse_strategy",
           "brightness", "saturation", "contrast", "translate", "cutout", "flip", "affine"]


@dataclass(frozen=True)
class DSAParams:
    """DSA configuration (spec models_and_augmentation.md §3.1); `mode` S = one group per call."""

    strategy: str = "color_crop_cutout_flip_scale_rotate"
    mode: str = "S"
    prob_flip: float = 0.5
    ratio_scale: float = 1.2
    ratio_rotate: float = 15.0
    ratio_crop_pad: float = 0.125
    ratio_cutout: float = 0.5
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5
    align_corners: bool = True


# --------------------------------------------------------------------------------------------
# Pure ops with explicit parameters (differentiable w.r.t. x; parameters are tensors on x.device)
# --------------------------------------------------------------------------------------------


def brightness(x: torch.Tensor, u: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """x + (u - 0.5) * strength; x: B x C x H x W, u: (B,) in [0, 1)."""
    return x + (u.to(x.dtype).view(-1, 1, 1, 1) - 0.5) * strength


def saturation(x: torch.Tensor, u: torch.Tensor, strength: float = 2.0) -> torch.Tensor:
    """(x - m) * (strength * u) + m with m the per-pixel channel mean; u: (B,)."""
    m = x.mean(dim=1, keepdim=True)  # B x 1 x H x W
    return (x - m) * (u.to(x.dtype).view(-1, 1, 1, 1) * strength) + m


def contrast(x: torch.Tensor, u: torch.Tensor, offset: float = 0.5) -> torch.Tensor:
    """(x - m) * (u + offset) + m with m the per-sample mean over C, H, W; u: (B,)."""
    m = x.mean(dim=(1, 2, 3), keepdim=True)  # B x 1 x 1 x 1
    return (x - m) * (u.to(x.dtype).view(-1, 1, 1, 1) + offset) + m


def translate(x: torch.Tensor, th: torch.Tensor, tw: torch.Tensor) -> torch.Tensor:
    """output(i, j) = x(i + th, j + tw), zero where that falls outside the image (the DSA 'crop':
    zero-pad by 1 px and clamp the source index into the padded frame); th, tw: (B,) integers."""
    b, _, h, w = x.shape
    padded = F.pad(x, [1, 1, 1, 1])  # B x C x (H+2) x (W+2)
    rows = (torch.arange(h, device=x.device).view(1, h) + th.view(-1, 1) + 1).clamp(0, h + 1)
    cols = (torch.arange(w, device=x.device).view(1, w) + tw.view(-1, 1) + 1).clamp(0, w + 1)
    bi = torch.arange(b, device=x.device).view(b, 1, 1)  # B x 1 x 1
    # advanced indexing on the channels-last view: B x H x W x C, then back to B x C x H x W
    out = padded.permute(0, 2, 3, 1)[bi, rows.view(b, h, 1), cols.view(b, 1, w)]
    return out.permute(0, 3, 1, 2)


def cutout(x: torch.Tensor, ch: torch.Tensor, cw: torch.Tensor, kh: int, kw: int) -> torch.Tensor:
    """Zero rows [ch - kh//2, ch - kh//2 + kh) x cols [cw - kw//2, cw - kw//2 + kw), clipped to the
    image, by multiplying with a mask; ch, cw: (B,) integer centres."""
    _, _, h, w = x.shape
    r0 = (ch - kh // 2).view(-1, 1)  # B x 1
    c0 = (cw - kw // 2).view(-1, 1)
    r = torch.arange(h, device=x.device).view(1, h)
    c = torch.arange(w, device=x.device).view(1, w)
    in_r = (r >= r0) & (r < r0 + kh)  # B x H
    in_c = (c >= c0) & (c < c0 + kw)  # B x W
    mask = ~(in_r.unsqueeze(2) & in_c.unsqueeze(1))  # B x H x W, False inside the square
    return x * mask.unsqueeze(1).to(x.dtype)


def flip(x: torch.Tensor, do_flip: torch.Tensor) -> torch.Tensor:
    """Mirror along the width axis the samples where do_flip (B,) is True."""
    return torch.where(do_flip.view(-1, 1, 1, 1), x.flip(3), x)


def affine(x: torch.Tensor, theta: torch.Tensor, align_corners: bool = True) -> torch.Tensor:
    """Batched affine_grid + bilinear grid_sample with zero padding; theta: B x 2 x 3."""
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=align_corners)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros",
                         align_corners=align_corners)


# --------------------------------------------------------------------------------------------
# Random parameter draws: always on CPU from the generator, then moved to x.device
# --------------------------------------------------------------------------------------------


class _Draw:
    """Draws per-sample values, or one value (sample 0) broadcast to the batch when Siamese."""

    def __init__(self, g: torch.Generator, batch: int, siamese: bool,
                 device: torch.device) -> None:
        self.g, self.batch, self.siamese, self.device = g, batch, siamese, device

    def _n(self) -> int:
        return 1 if self.siamese else self.batch

    def uniform(self) -> torch.Tensor:
        u = torch.rand(self._n(), generator=self.g, dtype=torch.float32)  # (n,) on CPU
        return u.expand(self.batch).to(self.device)  # (B,) float32

    def randint(self, low: int, high: int) -> torch.Tensor:
        v = torch.randint(low, high, (self._n(),), generator=self.g)  # (n,) int64 on CPU
        return v.expand(self.batch).to(self.device)


def _op_brightness(x: torch.Tensor, p: DSAParams, d: _Draw) -> torch.Tensor:
    return brightness(x, d.uniform(), p.brightness)


def _op_saturation(x: torch.Tensor, p: DSAParams, d: _Draw) -> torch.Tensor:
    return saturation(x, d.uniform(), p.saturation)


def _op_contrast(x: torch.Tensor, p: DSAParams, d: _Draw) -> torch.Tensor:
    return contrast(x, d.uniform(), p.contrast)


def _op_crop(x: torch.Tensor, p: DSAParams, d: _Draw) -> torch.Tensor:
    sh = int(x.shape[2] * p.ratio_crop_pad + 0.5)  # 4 px at 32, 8 px at 64
    sw = int(x.shape[3] * p.ratio_crop_pad + 0.5)
    th = d.randint(-sh, sh + 1)
    tw = d.randint(-sw, sw + 1)
    return translate(x, th, tw)


def _op_cutout(x: torch.Tensor, p: DSAParams, d: _Draw) -> torch.Tensor:
    h, w = x.shape[2], x.shape[3]
    kh = int(h * p.ratio_cutout + 0.5)  # 16 at 32 px
    kw = int(w * p.ratio_cutout + 0.5)
    ch = d.randint(0, h + (1 - kh % 2))  # {0, ..., H - 1 + (1 - kh mod 2)}
    cw = d.randint(0, w + (1 - kw % 2))
    return cutout(x, ch, cw, kh, kw)


def _op_flip(x: torch.Tensor, p: DSAParams, d: _Draw) -> torch.Tensor:
    return flip(x, d.uniform() < p.prob_flip)


def _op_scale(x: torch.Tensor, p: DSAParams, d: _Draw) -> torch.Tensor:
    lo = 1.0 / p.ratio_scale
    sx = d.uniform() * (p.ratio_scale - lo) + lo  # (B,) in [1/1.2, 1.2)
    sy = d.uniform() * (p.ratio_scale - lo) + lo
    zero = torch.zeros_like(sx)
    theta = torch.stack([torch.stack([sx, zero, zero], 1),
                         torch.stack([zero, sy, zero], 1)], 1)  # B x 2 x 3
    return affine(x, theta, p.align_corners)


def _op_rotate(x: torch.Tensor, p: DSAParams, d: _Draw) -> torch.Tensor:
    ang = (d.uniform() - 0.5) * 2 * p.ratio_rotate / 180 * math.pi  # (B,) radians
    cos, sin, zero = ang.cos(), ang.sin(), torch.zeros_like(ang)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1),
                         torch.stack([sin, cos, zero], 1)], 1)  # B x 2 x 3
    return affine(x, theta, p.align_corners)


#: strategy group -> ops applied in sequence ('color' = brightness, saturation, contrast)
GROUPS = {
    "color": (_op_brightness, _op_saturation, _op_contrast),
    "crop": (_op_crop,),
    "cutout": (_op_cutout,),
    "flip": (_op_flip,),
    "scale": (_op_scale,),
    "rotate": (_op_rotate,),
}


def parse_strategy(strategy: str) -> list[str]:
    """Split a strategy string on '_' into known groups; '' and 'none' give an empty list."""
    if strategy is None or strategy.strip().lower() in ("", "none"):
        return []
    groups = [s for s in strategy.split("_") if s]
    unknown = [s for s in groups if s not in GROUPS]
    if unknown:
        raise ValueError(f"unknown DSA op(s) {unknown}. Known: {', '.join(GROUPS)}")
    return groups


def dsa(x: torch.Tensor, params: DSAParams = DSAParams(), generator: torch.Generator | None = None,
        siamese_seed: int | None = None) -> torch.Tensor:
    """Apply DSA to x (B x C x H x W). With `siamese_seed` every draw (op group and parameters)
    comes from a local generator seeded with it and sample 0's values are broadcast, so equal
    seeds give the identical transform on batches of any size; otherwise parameters are per
    sample from `generator` (a CPU generator; a fresh default-seeded one if None)."""
    groups = parse_strategy(params.strategy)
    if not groups:
        return x
    if params.mode not in ("S", "M"):
        raise ValueError(f"unknown DSA mode '{params.mode}'. Known: S, M")
    if siamese_seed is not None:
        g = torch.Generator(device="cpu")
        g.manual_seed(int(siamese_seed) % 2**64)
    else:
        g = generator if generator is not None else torch.Generator(device="cpu")
    d = _Draw(g, x.shape[0], siamese_seed is not None, x.device)
    if params.mode == "S":
        groups = [groups[int(torch.randint(len(groups), (1,), generator=g).item())]]
    for name in groups:
        for op in GROUPS[name]:
            x = op(x, params, d)
    return x


def siamese_seed_for(run_seed: int, iteration: int, cls: int) -> int:
    """The Siamese seed shared by the real and synthetic batch of class `cls` at `iteration`."""
    return derive_seed("dsa-siamese", int(run_seed), int(iteration), int(cls))
