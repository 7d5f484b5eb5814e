"""Batched augmentations of the recover-and-relabel family, every random number drawn from an
explicit CPU generator: RandomResizedCrop and flip (differentiable, via affine grids), padded
random crop, random roll jitter, MixUp/CutMix boxes and a per-sample RandAugment on uint8 batches.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)


def sample_crop_boxes(n: int, height: int, width: int, scale: tuple[float, float],
                      ratio: tuple[float, float], g: torch.Generator,
                      attempts: int = 10) -> torch.Tensor:
    """torchvision's RandomResizedCrop box rule, vectorised: (n, 4) float boxes (top, left, h, w)
    in pixels. Up to `attempts` draws of area fraction ~ U(scale) and log aspect ratio ~
    U(log ratio); the first draw that fits is kept, else the central crop clamped to `ratio`."""
    area = float(height * width)
    target = area * _uniform(n * attempts, scale[0], scale[1], g).view(n, attempts)
    log_r = _uniform(n * attempts, math.log(ratio[0]), math.log(ratio[1]), g).view(n, attempts)
    r = torch.exp(log_r)
    w = torch.round(torch.sqrt(target * r))
    h = torch.round(torch.sqrt(target / r))
    ok = (w > 0) & (h > 0) & (w <= width) & (h <= height)  # n x attempts
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), -1))
    u_top = torch.rand(n, generator=g, dtype=torch.float64)
    u_left = torch.rand(n, generator=g, dtype=torch.float64)
    boxes = torch.empty(n, 4, dtype=torch.float64)
    for i in range(n):  # small loop over the batch; the random draws above are already made
        if first[i] >= 0:
            hh, ww = h[i, first[i]], w[i, first[i]]
        else:  # fallback: central crop with the aspect ratio clamped into `ratio`
            in_ratio = width / height
            if in_ratio < ratio[0]:
                ww, hh = float(width), round(width / ratio[0])
            elif in_ratio > ratio[1]:
                hh, ww = float(height), round(height * ratio[1])
            else:
                hh, ww = float(height), float(width)
            hh, ww = torch.tensor(float(hh)), torch.tensor(float(ww))
        top = torch.floor(u_top[i] * (height - hh + 1))
        left = torch.floor(u_left[i] * (width - ww + 1))
        boxes[i] = torch.stack([top, left, hh, ww])
    return boxes


def crop_resize(x: torch.Tensor, boxes: torch.Tensor, size: int | None = None,
                flip: torch.Tensor | None = None) -> torch.Tensor:
    """Crop box (top, left, h, w) of every image and resize it bilinearly to size x size
    (default: the input size), optionally mirrored; differentiable w.r.t. x.
    x: B x C x H x W, boxes: B x 4, flip: (B,) bool."""
    b, c, hgt, wid = x.shape
    size = size or wid
    bx = boxes.to(torch.float64)
    # box centre and half-extent in normalised [-1, 1] coordinates (align_corners=False)
    cy = (bx[:, 0] + bx[:, 2] / 2) / hgt * 2 - 1
    cx = (bx[:, 1] + bx[:, 3] / 2) / wid * 2 - 1
    sy, sx = bx[:, 2] / hgt, bx[:, 3] / wid
    if flip is not None:
        sx = torch.where(flip.to(torch.bool).cpu(), -sx, sx)
    theta = torch.zeros(b, 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 2] = sx, cx
    theta[:, 1, 1], theta[:, 1, 2] = sy, cy
    grid = F.affine_grid(theta.to(x.device, x.dtype), [b, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_resized_crop(x: torch.Tensor, g: torch.Generator, scale=(0.08, 1.0),
                        ratio=(3 / 4, 4 / 3), flip: bool = False,
                        size: int | None = None) -> torch.Tensor:
    """Per-sample RandomResizedCrop (+ optional 50 % horizontal flip), differentiable."""
    b, _, h, w = x.shape
    boxes = sample_crop_boxes(b, h, w, tuple(scale), tuple(ratio), g)
    do_flip = torch.rand(b, generator=g) < 0.5 if flip else None
    return crop_resize(x, boxes, size, do_flip)


def random_flip(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    do = (torch.rand(x.shape[0], generator=g) < 0.5).to(x.device).view(-1, 1, 1, 1)
    return torch.where(do, x.flip(-1), x)


def random_crop_pad(x: torch.Tensor, g: torch.Generator, padding: int = 4) -> torch.Tensor:
    """RandomCrop(size, padding) with zero padding (in the tensor's own space), per sample."""
    if padding <= 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, [padding] * 4)
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=g)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=g)
    rows = (torch.arange(h).view(1, h) + dy.view(-1, 1)).to(x.device)
    cols = (torch.arange(w).view(1, w) + dx.view(-1, 1)).to(x.device)
    bi = torch.arange(b, device=x.device).view(b, 1, 1)
    out = padded.permute(0, 2, 3, 1)[bi, rows.view(b, h, 1), cols.view(b, 1, w)]
    return out.permute(0, 3, 1, 2).contiguous()


def random_roll(x: torch.Tensor, g: torch.Generator, max_shift: int) -> torch.Tensor:
    """SRe2L-style jitter: one random cyclic shift in [-max_shift, max_shift] per axis for the
    whole batch (as the reference torch.roll on the batch)."""
    if max_shift <= 0:
        return x
    sy, sx = torch.randint(-max_shift, max_shift + 1, (2,), generator=g).tolist()
    return torch.roll(x, shifts=(sy, sx), dims=(2, 3))


def cutmix_box(height: int, width: int, lam: float, g: torch.Generator) -> tuple[int, int, int, int]:
    """One CutMix box (y0, y1, x0, x1) for mixing weight lam: side sqrt(1 - lam) of the image,
    uniform centre, clipped to the image."""
    cut = math.sqrt(max(0.0, 1.0 - lam))
    ch, cw = int(height * cut), int(width * cut)
    cy = int(torch.randint(0, height, (1,), generator=g))
    cx = int(torch.randint(0, width, (1,), generator=g))
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, height)
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, width)
    return y0, y1, x0, x1


def paste_box(dst: torch.Tensor, src: torch.Tensor, box: tuple[int, int, int, int]) -> tuple[torch.Tensor, float]:
    """dst with src pasted into box; returns (mixed, lam_adjusted = kept area fraction of dst)."""
    y0, y1, x0, x1 = box
    out = dst.clone()
    out[:, :, y0:y1, x0:x1] = src[:, :, y0:y1, x0:x1]
    h, w = dst.shape[-2:]
    return out, 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)


def beta_sample(alpha: float, g: torch.Generator) -> float:
    """λ ~ Beta(alpha, alpha) from the explicit generator (torch's Beta sampler cannot take one):
    uniform for alpha = 1, else G1 / (G1 + G2) with two Gamma(alpha) variates."""
    if alpha == 1.0:
        return float(torch.rand(1, generator=g, dtype=torch.float64))
    g1 = _gamma(alpha, g)
    return g1 / (g1 + _gamma(alpha, g))


def _gamma(a: float, g: torch.Generator) -> float:
    """Marsaglia-Tsang Gamma(a, 1) with normals and uniforms from `g`."""
    boost = 1.0
    if a < 1.0:
        boost = float(torch.rand(1, generator=g, dtype=torch.float64)) ** (1.0 / a)
        a += 1.0
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    while True:
        z = float(torch.randn(1, generator=g, dtype=torch.float64))
        v = (1.0 + c * z) ** 3
        if v <= 0:
            continue
        u = float(torch.rand(1, generator=g, dtype=torch.float64))
        if math.log(u) < 0.5 * z * z + d - d * v + d * math.log(v):
            return d * v * boost


# --- RandAugment (torchvision defaults: 2 ops, magnitude 9 of 31 bins), per sample ----------

RA_OPS = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness",
          "Color", "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize")
_SIGNED = {"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color",
           "Contrast", "Sharpness"}


def ra_magnitude(op: str, magnitude: int, num_bins: int, height: int, width: int) -> float:
    """The value of bin `magnitude` for `op`, as torchvision's RandAugment defines its space."""
    frac = magnitude / (num_bins - 1)
    if op in ("ShearX", "ShearY"):
        return 0.3 * frac
    if op == "TranslateX":
        return 150.0 / 331.0 * width * frac
    if op == "TranslateY":
        return 150.0 / 331.0 * height * frac
    if op == "Rotate":
        return 30.0 * frac
    if op in ("Brightness", "Color", "Contrast", "Sharpness"):
        return 0.9 * frac
    if op == "Posterize":
        return float(8 - round(magnitude / ((num_bins - 1) / 4)))
    if op == "Solarize":
        return 255.0 * (1 - frac)
    return 0.0


def rand_augment(x: torch.Tensor, g: torch.Generator, num_ops: int = 2, magnitude: int = 9,
                 num_bins: int = 31) -> torch.Tensor:
    """RandAugment on a uint8 batch B x C x H x W with an independent op choice per sample.
    Samples that drew the same (op, sign) are transformed together with torchvision's op."""
    from torchvision.transforms.autoaugment import InterpolationMode, _apply_op

    if x.dtype != torch.uint8:
        raise TypeError("rand_augment expects uint8 images")
    b, _, h, w = x.shape
    out = x.clone()
    for _ in range(num_ops):
        ops = torch.randint(0, len(RA_OPS), (b,), generator=g)
        signs = torch.randint(0, 2, (b,), generator=g)
        for key in sorted(set(zip(ops.tolist(), signs.tolist(), strict=True))):
            op = RA_OPS[key[0]]
            sel = torch.nonzero((ops == key[0]) & (signs == key[1])).flatten()
            mag = ra_magnitude(op, magnitude, num_bins, h, w)
            if op in _SIGNED and key[1] == 1:
                mag = -mag
            out[sel] = _apply_op(out[sel], op, mag, InterpolationMode.NEAREST, None)
    return out
