"""Helpers shared by the dataset loaders: the "how to obtain" error, image discovery, and decoding
with an optional short-side resize and centre crop into a preallocated uint8 tensor."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ...progress import Progress
from ..base import DatasetMissingError

log = logging.getLogger("ltdistill")

#: file extensions read by the folder-based loaders (matched case-insensitively)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")

#: PIL modes that carry no colour; a folder of only these loads as 1 channel by default
GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})


class DatasetFormatError(ValueError):
    """The dataset files exist but are truncated, corrupted or inconsistent with their format."""


def missing_error(dataset: str, searched: Sequence[Path | str], how: str,
                  problem: str = "dataset files not found") -> DatasetMissingError:
    """Build a DatasetMissingError naming every searched location and how to obtain the data."""
    places = [f"  - {p}" for p in searched] or ["  - (no location configured)"]
    return DatasetMissingError("\n".join([f"{dataset}: {problem}. Searched:", *places,
                                          f"How to obtain it: {how}"]))


def unique_dirs(paths: Sequence[Path | None]) -> list[Path]:
    """Drop None and duplicates while keeping the search order."""
    seen: list[Path] = []
    for p in paths:
        if p is not None and p not in seen:
            seen.append(p)
    return seen


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside `folder`, sorted by name (the order folder loaders use)."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def list_class_dirs(folder: Path) -> list[str]:
    """Sorted names of the non-hidden sub-folders of `folder`."""
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def image_mode(path: Path) -> tuple[str, tuple[int, int]]:
    """(PIL mode, (width, height)) from the file header; raise DatasetFormatError naming the file."""
    try:
        with Image.open(path) as img:
            return img.mode, img.size
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DatasetFormatError(f"cannot read image {path}: {exc}") from exc


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to `size` (bilinear; PIL antialiases when shrinking), then centre-crop
    a size x size square (offsets rounded as torchvision's center_crop does)."""
    w, h = img.size
    if (w, h) != (size, size):
        if w <= h:
            new_w, new_h = size, max(size, int(size * h / w))
        else:
            new_w, new_h = max(size, int(size * w / h)), size
        if (new_w, new_h) != (w, h):
            img = img.resize((new_w, new_h), Image.BILINEAR)
        left = int(round((new_w - size) / 2.0))
        top = int(round((new_h - size) / 2.0))
        img = img.crop((left, top, left + size, top + size))
    return img


def decode_image(path: Path, channels: int, size: int | None) -> np.ndarray:
    """One image as uint8 C x H x W, converted to `channels` (1 = L, 3 = RGB)."""
    try:
        with Image.open(path) as img:
            img = img.convert("L" if channels == 1 else "RGB")
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DatasetFormatError(f"cannot read image {path}: {exc}") from exc
    if size is not None:
        img = resize_center_crop(img, size)
    arr = np.array(img, dtype=np.uint8)  # a writable copy, so torch.from_numpy is safe
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def load_images(paths: Sequence[Path], channels: int, size: int | None, label: str) -> torch.Tensor:
    """Decode every path into one preallocated uint8 N x C x H x W tensor, logging progress.

    Without `size` every image must have the size of the first one; a mismatch names both files."""
    if not paths:
        return torch.zeros((0, channels, size or 1, size or 1), dtype=torch.uint8)
    first = decode_image(paths[0], channels, size)
    out = torch.empty((len(paths), *first.shape), dtype=torch.uint8)
    out[0] = torch.from_numpy(first)
    progress = Progress(len(paths), f"loading {label}")
    progress.step()
    for i in range(1, len(paths)):
        arr = decode_image(paths[i], channels, size)
        if arr.shape != first.shape:
            raise DatasetFormatError(
                f"image {paths[i]} is {arr.shape[2]}x{arr.shape[1]} but {paths[0]} is "
                f"{first.shape[2]}x{first.shape[1]}; all images must share one size, or set "
                "the image_size option to resize and centre-crop them")
        out[i] = torch.from_numpy(arr)
        progress.step()
    return out


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and population std of uint8 images scaled to [0, 1] (float64 sums)."""
    c = images.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    for start in range(0, images.shape[0], chunk):
        x = images[start:start + chunk].to(torch.float64).div_(255.0)
        total += x.sum(dim=(0, 2, 3))
        total_sq += x.square().sum(dim=(0, 2, 3))
    n = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / n
    std = (total_sq / n - mean.square()).clamp_min(0).sqrt()
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def labels_tensor(labels: Sequence[int]) -> torch.Tensor:
    return torch.as_tensor(np.asarray(labels, dtype=np.int64))
