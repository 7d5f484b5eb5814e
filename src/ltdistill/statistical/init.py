"""Initialisation of the synthetic set from teacher-scored real crops (statistical_methods.md
§1.5 and §3).

- `multiround` (RLDD): every real image of class c gets m RandomResizedCrops (aspect ratio 1),
  each scored s = -CE(teacher(crop), c). In each round every image offers its best unused crop;
  if the offers exceed the open slots the top-scoring ones are taken, else all of them; rounds
  repeat until the class has IPC images. When m · n_c < IPC, more crops per image are drawn so the
  pool always suffices, so no crop is ever used twice.
- `rded` (RDED, and RLDD's single-round ablation): one round (each image's best crop), then the
  best IPC · factor² crops of the class; a short class cycles through its ranked crops (the
  `duplicate` policy of long_tail_data.md §6); factor > 1 stitches factor x factor crops.
- `random_crop`: a random crop of each image of a random permutation of the class, cycled.
- `noise`: N(0, 1) images in the normalised space (SRe2L).
Ties in score are broken by (image index, crop index); crop boxes come from a seeded sampler and
the chosen (image, box) pairs are returned for the record.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..seeding import generator
from .augment import crop_resize, sample_crop_boxes

INITS = ("multiround", "rded", "random_crop", "noise")


@dataclass
class Pool:
    """Candidate crops of one class: boxes (n x m x 4) on the class images and their scores."""

    boxes: torch.Tensor
    scores: torch.Tensor  # n x m, higher is better (-CE)


def sample_pool_boxes(n: int, m: int, height: int, width: int, scale: tuple[float, float],
                      g: torch.Generator) -> torch.Tensor:
    """n x m crop boxes (top, left, h, w), aspect ratio fixed at 1."""
    return sample_crop_boxes(n * m, height, width, scale, (1.0, 1.0), g).view(n, m, 4)


def make_crops(images: torch.Tensor, image_idx: torch.Tensor, boxes: torch.Tensor,
               size: int) -> torch.Tensor:
    """Crops `boxes` (k x 4) of images[image_idx] resized to size x size."""
    return crop_resize(images[image_idx].float(), boxes, size)


@torch.no_grad()
def score_pool(teacher: nn.Module, images: torch.Tensor, boxes: torch.Tensor, label: int,
               size: int, device: torch.device, batch: int = 512) -> torch.Tensor:
    """-CE(teacher(crop), label) for every crop; returns n x m (CPU float32)."""
    n, m, _ = boxes.shape
    flat_img = torch.arange(n).repeat_interleave(m)
    flat_box = boxes.view(-1, 4)
    teacher = teacher.to(device).eval()
    out = []
    for s in range(0, n * m, batch):
        crops = make_crops(images, flat_img[s:s + batch], flat_box[s:s + batch], size).to(device)
        logits = teacher(crops).float()
        target = torch.full((len(crops),), label, dtype=torch.long, device=device)
        out.append(-F.cross_entropy(logits, target, reduction="none").cpu())
    return torch.cat(out).view(n, m)


def _ranked(scores: torch.Tensor, best: torch.Tensor, candidates: list[int]) -> list[int]:
    """Candidate images sorted by their offered score, descending; ties by image index."""
    return sorted(candidates, key=lambda i: (-float(scores[i, best[i]]), i))


def multiround_select(scores: torch.Tensor, ipc: int, max_rounds: int | None = None) -> list[tuple[int, int]]:
    """(image, crop) pairs in slot order. Round r: each image with an unused crop offers its best
    unused one (lowest crop index on ties); take all offers if they fit the open slots, else the
    top-scoring ones. Stops at IPC picks, after `max_rounds`, or when the pool is exhausted."""
    n, m = scores.shape
    used = torch.zeros(n, m, dtype=torch.bool)
    picks: list[tuple[int, int]] = []
    rounds = 0
    while len(picks) < ipc and (max_rounds is None or rounds < max_rounds):
        avail = [i for i in range(n) if not bool(used[i].all())]
        if not avail:
            break
        masked = scores.masked_fill(used, float("-inf"))
        best = masked.argmax(dim=1)  # first maximum = lowest crop index on ties
        for i in _ranked(masked, best, avail)[: ipc - len(picks)]:
            picks.append((i, int(best[i])))
            used[i, best[i]] = True
        rounds += 1
    return picks


def rded_select(scores: torch.Tensor, k: int) -> list[tuple[int, int]]:
    """RDED: each image's best crop, then the top k over images; a short list is cycled
    (slot j uses ranked[j mod n]), i.e. the `duplicate` policy on ranked crops."""
    ranked = multiround_select(scores, k, max_rounds=1)
    return [ranked[j % len(ranked)] for j in range(k)]


def stitch(crops: torch.Tensor, factor: int) -> torch.Tensor:
    """(k · f²) x C x s x s crops -> k x C x (f s) x (f s), row-major tiles."""
    if factor == 1:
        return crops
    kf, ch, s, _ = crops.shape
    k = kf // (factor * factor)
    grid = crops.view(k, factor, factor, ch, s, s).permute(0, 3, 1, 4, 2, 5)
    return grid.reshape(k, ch, factor * s, factor * s)


def initialise(images: torch.Tensor, labels: torch.Tensor, num_classes: int, ipc: int,
               mode: str, seed: int, teacher: nn.Module | None = None,
               device: torch.device | str = "cpu", num_crops: int = 5,
               crop_scale: tuple[float, float] = (0.08, 1.0), factor: int = 1,
               max_images_per_class: int | None = None,
               score_batch: int = 512) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
    """IPC images for every class. Returns (images N x C x H x W, labels, sources) with sources
    [class, train index, crop index, top, left, h, w] per crop (train index -1 for noise)."""
    if mode not in INITS:
        raise ValueError(f"init must be one of {INITS}, got '{mode}'")
    if factor < 1:
        raise ValueError("factor must be >= 1")
    device = torch.device(device)
    _, ch, h, w = images.shape
    size = w // factor
    out_x, out_y, sources = [], [], []
    for c in range(num_classes):
        g = generator("init", mode, seed, c)
        idx = torch.nonzero(labels == c).flatten()
        if mode == "noise":
            out_x.append(torch.randn((ipc, ch, h, w), generator=g))
            out_y.append(torch.full((ipc,), c, dtype=torch.long))
            sources += [[c, -1, k, 0, 0, 0, 0] for k in range(ipc)]
            continue
        if len(idx) == 0:
            raise ValueError(f"class {c} has no real images to initialise from")
        if max_images_per_class is not None and len(idx) > max_images_per_class:
            idx = idx[torch.randperm(len(idx), generator=g)[:max_images_per_class]].sort().values
        cls_images = images[idx]
        n = len(idx)
        need = ipc * factor * factor
        if mode == "random_crop":
            order = torch.randperm(n, generator=g)
            img_pick = order[torch.arange(need) % n]
            boxes = sample_pool_boxes(need, 1, h, w, crop_scale, g).view(need, 4)
            crops = make_crops(cls_images, img_pick, boxes, size)
            chosen = [(int(img_pick[j]), j, boxes[j]) for j in range(need)]
        else:
            if teacher is None:
                raise ValueError(f"init '{mode}' needs a teacher to score crops")
            m = num_crops if mode == "rded" else max(num_crops, math.ceil(need / n))
            boxes = sample_pool_boxes(n, m, h, w, crop_scale, g)
            scores = score_pool(teacher, cls_images, boxes, c, size, device, score_batch)
            picks = (multiround_select(scores, need) if mode == "multiround"
                     else rded_select(scores, need))
            img_pick = torch.tensor([i for i, _ in picks])
            sel_boxes = torch.stack([boxes[i, j] for i, j in picks])
            crops = make_crops(cls_images, img_pick, sel_boxes, size)
            chosen = [(i, j, boxes[i, j]) for i, j in picks]
        out_x.append(stitch(crops, factor))
        out_y.append(torch.full((ipc,), c, dtype=torch.long))
        sources += [[c, int(idx[i]), j, *[int(v) for v in b.tolist()]] for i, j, b in chosen]
    return torch.cat(out_x), torch.cat(out_y), sources
