"""PreparedData: the LT train split and the test split(s) as float tensors in one preprocessing
space, with counts and shot groups. Every method and every evaluation starts from this."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .base import RawDataset, load_dataset_cache
from .long_tail import Split
from .preprocess import Preprocessing, load_preprocessing


@dataclass
class PreparedData:
    name: str
    train_images: torch.Tensor  # float32 N x C x H x W (LT subset, class-major in manifest order)
    train_labels: torch.Tensor  # int64
    test_images: torch.Tensor  # balanced test split
    test_labels: torch.Tensor
    lt_test_images: torch.Tensor | None
    lt_test_labels: torch.Tensor | None
    counts: list[int]  # n_c of the LT training split
    groups: list[str]  # many / medium / few per class
    class_names: list[str]
    preprocessing: Preprocessing
    split: Split

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return int(self.train_images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train_images.shape[-1])

    def class_images(self, c: int) -> torch.Tensor:
        return self.train_images[self.train_labels == c]


def prepare(raw: RawDataset, split: Split, preprocessing: Preprocessing) -> PreparedData:
    if split.num_classes != raw.num_classes:
        raise ValueError(f"split has {split.num_classes} classes but dataset {raw.name} has "
                         f"{raw.num_classes}; rebuild the split")
    idx = torch.as_tensor(split.flat_train_indices())
    lt_x = lt_y = None
    test_idx = split.flat_test_indices()
    if test_idx is not None:
        t = torch.as_tensor(test_idx)
        lt_x, lt_y = preprocessing.apply(raw.test_images[t]), raw.test_labels[t].long()
    test_x, test_y = raw.test_images, raw.test_labels
    balanced = split.flat_balanced_test_indices()
    if balanced is not None:
        test_x, test_y = test_x[torch.as_tensor(balanced)], test_y[torch.as_tensor(balanced)]
    return PreparedData(
        name=raw.name,
        train_images=preprocessing.apply(raw.train_images[idx]),
        train_labels=raw.train_labels[idx].long(),
        test_images=preprocessing.apply(test_x),
        test_labels=test_y.long(),
        lt_test_images=lt_x, lt_test_labels=lt_y,
        counts=split.counts, groups=split.groups, class_names=list(raw.class_names),
        preprocessing=preprocessing, split=split,
    )


def load_prepared(cache: str | Path, split: str | Path, preprocessing: str | Path) -> PreparedData:
    return prepare(load_dataset_cache(cache), Split.load(split), load_preprocessing(preprocessing))
