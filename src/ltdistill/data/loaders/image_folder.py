"""Any user dataset laid out as train/<class>/ and test/<class>/ image folders."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from ..base import DATASETS, DatasetMissingError, RawDataset
from ._common import (
    GREY_MODES,
    IMAGE_EXTENSIONS,
    DatasetFormatError,
    channel_stats,
    image_mode,
    labels_tensor,
    list_class_dirs,
    list_images,
    load_images,
    missing_error,
)

log = logging.getLogger("ltdistill")

HOW = ("create <root>/train/<class>/ and <root>/test/<class>/ folders of images "
       f"({', '.join(IMAGE_EXTENSIONS)}) and set datasets.image_folder.root to <root>")


def _split_files(split_dir: Path, classes: list[str]) -> tuple[list[Path], list[int]]:
    paths: list[Path] = []
    labels: list[int] = []
    for c, name in enumerate(classes):
        files = list_images(split_dir / name)
        if not files:
            raise DatasetFormatError(f"image_folder: class folder {split_dir / name} holds no images "
                                     f"({', '.join(IMAGE_EXTENSIONS)})")
        paths += files
        labels += [c] * len(files)
    return paths, labels


def _classes(root: Path) -> list[str]:
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise DatasetMissingError(f"image_folder: {root / split} is missing; expected "
                                      f"{root}/train/<class>/ and {root}/test/<class>/. {HOW}")
    classes = list_class_dirs(root / "train")
    if not classes:
        raise DatasetFormatError(f"image_folder: {root / 'train'} has no class folders")
    test_classes = set(list_class_dirs(root / "test"))
    for name in classes:
        if name not in test_classes:
            raise DatasetFormatError(f"image_folder: class '{name}' is in {root / 'train'} but "
                                     f"has no folder in {root / 'test'}")
    for name in sorted(test_classes - set(classes)):
        raise DatasetFormatError(f"image_folder: class '{name}' is in {root / 'test'} but has no "
                                 f"folder in {root / 'train'}")
    return classes


def _infer_channels(paths: Sequence[Path]) -> int:
    """1 if every image is greyscale, else 3 (mixed modes are converted to RGB)."""
    modes = {image_mode(p)[0] for p in paths}  # header only; also names unreadable files
    if modes <= GREY_MODES:
        return 1
    if modes & GREY_MODES:
        log.info("image_folder: mixed image modes %s; converting every image to RGB", sorted(modes))
    return 3


def _per_channel(value: float | Sequence[float], channels: int, key: str) -> tuple[float, ...]:
    values = (float(value),) * channels if isinstance(value, (int, float)) else tuple(map(float, value))
    if len(values) != channels:
        raise ValueError(f"image_folder: {key} needs {channels} values (one per channel), got {values}")
    return values


@DATASETS.register("image_folder")
def load_image_folder(root: Path | None, download: bool = False, image_size: int | None = None,
                      channels: int | None = None, mean: float | Sequence[float] | None = None,
                      std: float | Sequence[float] | None = None,
                      name: str = "image_folder") -> RawDataset:
    """Sorted class folders and sorted image files; classes follow the sorted folder names.

    image_size: resize the short side and centre-crop to a square (otherwise every image must
    share one size). channels: 1 or 3 (default: 1 if all images are greyscale, else 3).
    mean/std: default computed from the train images (per channel, in [0, 1])."""
    if download:
        log.warning("image_folder: nothing to download; reading %s", root)
    if root is None or not root.is_dir():
        raise missing_error("image_folder", [root] if root else [], HOW)
    if channels not in (None, 1, 3):
        raise ValueError(f"image_folder: channels must be 1 or 3, got {channels}")
    if image_size is not None and image_size < 1:
        raise ValueError(f"image_folder: image_size must be >= 1, got {image_size}")
    classes = _classes(root)
    train_paths, train_labels = _split_files(root / "train", classes)
    test_paths, test_labels = _split_files(root / "test", classes)
    if channels is None:
        channels = _infer_channels(train_paths + test_paths)
    train_x = load_images(train_paths, channels, image_size, f"{name} train")
    test_x = load_images(test_paths, channels, image_size, f"{name} test")
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DatasetFormatError(
            f"image_folder: train images ({train_paths[0]}) are {tuple(train_x.shape[1:])} but test "
            f"images ({test_paths[0]}) are {tuple(test_x.shape[1:])}; set image_size")
    own = channel_stats(train_x) if mean is None or std is None else None
    mean_t = _per_channel(mean, channels, "mean") if mean is not None else own[0]
    std_t = _per_channel(std, channels, "std") if std is not None else own[1]
    if min(std_t) <= 0:
        raise ValueError(f"image_folder: std {std_t} has a zero channel (constant images?); "
                         "pass std explicitly")
    return RawDataset(
        name=name, train_images=train_x, train_labels=labels_tensor(train_labels),
        test_images=test_x, test_labels=labels_tensor(test_labels), class_names=classes,
        mean=mean_t, std=std_t,
        extra={"source": str(root), "format": "image-folder", "image_size": image_size,
               "mean_std_from_train": mean is None or std is None},
    )
