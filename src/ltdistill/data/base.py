"""Dataset container, registry, and the uint8 tensor cache every downstream rule reads."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..io import load_tensors, save_tensors
from ..registry import Registry


class DatasetMissingError(FileNotFoundError):
    """The dataset files are not where the config says; the message says how to obtain them."""


@dataclass
class RawDataset:
    """A whole dataset in memory as uint8 N x C x H x W tensors (class order is canonical)."""

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
            if x.dtype != torch.uint8 or x.dim() != 4:
                raise ValueError(f"{self.name}: {split} images must be uint8 N x C x H x W, "
                                 f"got {x.dtype} {tuple(x.shape)}")
            if y.shape != (x.shape[0],):
                raise ValueError(f"{self.name}: {split} labels do not match the images")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"{self.name}: mean/std need one value per channel")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return int(self.train_images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train_images.shape[-1])

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "channels": self.channels,
            "image_size": self.image_size,
            "train_per_class": torch.bincount(self.train_labels, minlength=self.num_classes).tolist(),
            "test_per_class": torch.bincount(self.test_labels, minlength=self.num_classes).tolist(),
            "class_names": self.class_names,
            "mean": list(self.mean),
            "std": list(self.std),
        }


#: loader signature: (root: Path | None, download: bool, **options) -> RawDataset
DatasetLoader = Callable[..., RawDataset]
DATASETS: Registry[DatasetLoader] = Registry("dataset")


def load_dataset(name: str, root: str | Path | None = None, download: bool = False,
                 **options: Any) -> RawDataset:
    """Load a registered dataset from its real on-disk format."""
    from . import loaders  # noqa: F401  (registers every dataset family)

    loader = DATASETS.get(name)
    return loader(Path(root) if root else None, download=download, **options)


def save_dataset_cache(path: str | Path, data: RawDataset) -> None:
    tensors = {
        "train_images": data.train_images, "train_labels": data.train_labels,
        "test_images": data.test_images, "test_labels": data.test_labels,
    }
    meta = {"name": data.name, "class_names": data.class_names, "mean": list(data.mean),
            "std": list(data.std), "extra": data.extra}
    save_tensors(path, tensors, meta)


def load_dataset_cache(path: str | Path) -> RawDataset:
    tensors, meta = load_tensors(path)
    return RawDataset(
        name=meta["name"], class_names=list(meta["class_names"]),
        mean=tuple(meta["mean"]), std=tuple(meta["std"]), extra=meta.get("extra", {}), **tensors,
    )
