"""The two "ImageNet-LT" datasets: `imagenet_lt_exp` (an exponential subset of an ImageNet
train/<wnid>/ folder) and `imagenet_lt_oltr` (the OLTR split files), resized to a small square."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..base import DATASETS, RawDataset
from ..long_tail import lt_counts
from ._common import (
    DatasetFormatError,
    labels_tensor,
    list_class_dirs,
    list_images,
    load_images,
    missing_error,
)

log = logging.getLogger("ltdistill")

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
N_MAX_EXP = 1281  # int(1,281,167 / 1000), spec long_tail_data.md section 7.3(a)
RESIZE = "short side to image_size (bilinear, antialias), then centre crop"

HOW_EXP = ("obtain ILSVRC-2012 from https://image-net.org (registration required; no automatic "
           "download) and set datasets.imagenet_lt_exp.root to a folder with train/<wnid>/*.JPEG "
           "and val/<wnid>/*.JPEG (re-organise the flat val set into wnid folders with the "
           "devkit's ground truth)")
HOW_OLTR = ("set datasets.imagenet_lt_oltr.root to the ImageNet folder the split paths are relative "
            "to, and split_dir to the folder holding ImageNet_LT_train.txt and ImageNet_LT_test.txt "
            "(shipped with zhmiao/OpenLongTailRecognition-OLTR and vendored in "
            "facebookresearch/classifier-balancing under data/ImageNet_LT/); ImageNet itself comes "
            "from https://image-net.org (no automatic download)")


def _class_files(split_dir: Path, classes: list[str]) -> list[list[Path]]:
    files = []
    for wnid in classes:
        found = list_images(split_dir / wnid)
        if not found:
            raise DatasetFormatError(f"imagenet: class folder {split_dir / wnid} has no images")
        files.append(found)
    return files


def _exp_folder(root: Path | None) -> tuple[Path, list[str]]:
    if root is None or not (root / "train").is_dir() or not (root / "val").is_dir():
        raise missing_error("imagenet_lt_exp", [f"{root}/train", f"{root}/val"] if root else [],
                            HOW_EXP, "no ImageNet folder with train/ and val/")
    classes = list_class_dirs(root / "train")
    val_classes = list_class_dirs(root / "val")
    if not classes:
        raise DatasetFormatError(f"imagenet_lt_exp: {root / 'train'} has no class folders")
    if val_classes != classes:
        missing = sorted(set(classes) - set(val_classes))[:5]
        raise DatasetFormatError(
            f"imagenet_lt_exp: {root / 'val'} must hold one folder per train class; missing "
            f"{missing or 'none'}, extra {sorted(set(val_classes) - set(classes))[:5] or 'none'} "
            "(a flat ILSVRC val folder must first be re-organised into wnid folders)")
    return root, classes


def _damed_files(files: list[list[Path]], imbalance_factor: int, n_max: int) -> list[list[Path]]:
    """Pre-apply the damed selection on the sorted file list of each class (same images the split
    would keep from the full folder, so only those are decoded)."""
    counts = lt_counts(n_max, len(files), imbalance_factor)
    kept = []
    for class_files, n in zip(files, counts, strict=True):
        draw = np.random.RandomState(42).choice(len(class_files), min(n, len(class_files)),
                                                replace=False)
        kept.append([class_files[i] for i in draw])
    return kept


def _flatten(files: list[list[Path]]) -> tuple[list[Path], list[int]]:
    paths = [p for class_files in files for p in class_files]
    labels = [c for c, class_files in enumerate(files) for _ in class_files]
    return paths, labels


@DATASETS.register("imagenet_lt_exp")
def load_imagenet_lt_exp(root: Path | None, download: bool = False, image_size: int = 64,
                         max_per_class: int | None = None, imbalance_factor: int | None = None,
                         n_max: int = N_MAX_EXP) -> RawDataset:
    """ImageNet train/<wnid>/ and val/<wnid>/ (sorted wnids, sorted file names), image_size px.

    max_per_class: keep the first k sorted files of each class in both splits (quick runs; this
    changes which images a later damed split keeps). imbalance_factor: decode only the images the
    damed split with this IF and n_max keeps; the result is then marked already long-tailed."""
    if download:
        log.warning("imagenet_lt_exp: ImageNet cannot be downloaded automatically")
    if max_per_class is not None and imbalance_factor is not None:
        raise ValueError("imagenet_lt_exp: set max_per_class or imbalance_factor, not both")
    if max_per_class is not None and max_per_class < 1:
        raise ValueError(f"imagenet_lt_exp: max_per_class must be >= 1, got {max_per_class}")
    root, classes = _exp_folder(root)
    train = _class_files(root / "train", classes)
    test = _class_files(root / "val", classes)
    extra = {"source": str(root), "format": "imagenet-folder", "n_max": int(n_max),
             "image_size": image_size, "resize": RESIZE,
             "source_train_per_class": [len(f) for f in train]}
    if imbalance_factor is not None:
        train = _damed_files(train, imbalance_factor, n_max)
        extra.update(already_long_tailed=True, imbalance_factor=int(imbalance_factor),
                     selection="damed")
    elif max_per_class is not None:
        train = [f[:max_per_class] for f in train]
        test = [f[:max_per_class] for f in test]
        extra["max_per_class"] = int(max_per_class)
    train_paths, train_labels = _flatten(train)
    test_paths, test_labels = _flatten(test)
    return RawDataset(
        name="imagenet_lt_exp",
        train_images=load_images(train_paths, 3, image_size, "imagenet_lt_exp train"),
        train_labels=labels_tensor(train_labels),
        test_images=load_images(test_paths, 3, image_size, "imagenet_lt_exp val"),
        test_labels=labels_tensor(test_labels),
        class_names=classes, mean=MEAN, std=STD, extra=extra,
    )


def read_split_file(path: Path) -> tuple[list[str], list[int]]:
    """Lines '<relative path> <label>' of an OLTR split file."""
    rel, labels = [], []
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise DatasetFormatError(f"{path}:{i}: expected '<relative path> <label>', got {line!r}")
        rel.append(parts[0].strip())
        labels.append(int(parts[1]))
    if not rel:
        raise DatasetFormatError(f"{path} lists no images")
    return rel, labels


def _oltr_class_names(rel: list[str], labels: list[int], path: Path) -> list[str]:
    """Class c's name is the parent folder (wnid) of its images; each label needs one folder."""
    num_classes = max(labels) + 1
    present = set(labels)
    if min(labels) < 0 or len(present) != num_classes:
        absent = sorted(set(range(num_classes)) - present)[:5]
        raise DatasetFormatError(f"{path}: labels must cover 0..{num_classes - 1}; missing {absent}")
    names: dict[int, str] = {}
    for r, y in zip(rel, labels, strict=True):
        wnid = Path(r).parent.name or str(y)
        if names.setdefault(y, wnid) != wnid:
            raise DatasetFormatError(f"{path}: label {y} is used for folders {names[y]} and {wnid}")
    return [names[c] for c in range(num_classes)]


@DATASETS.register("imagenet_lt_oltr")
def load_imagenet_lt_oltr(root: Path | None, download: bool = False, split_dir: str | Path | None = None,
                          image_size: int = 64, test_split: str = "test") -> RawDataset:
    """ImageNet_LT_train.txt and ImageNet_LT_<test_split>.txt (test or val), paths relative to root;
    already long-tailed (1000 classes, 115,846 train images in the official files)."""
    if download:
        log.warning("imagenet_lt_oltr: ImageNet cannot be downloaded automatically")
    if test_split not in ("test", "val"):
        raise ValueError(f"imagenet_lt_oltr: unknown test_split '{test_split}'. Known: test, val")
    sdir = Path(split_dir) if split_dir else root
    files = [sdir / f"ImageNet_LT_{s}.txt" for s in ("train", test_split)] if sdir else []
    if root is None or not root.is_dir() or not files or not all(f.is_file() for f in files):
        raise missing_error("imagenet_lt_oltr", [root, *files] if root else files, HOW_OLTR,
                            "the ImageNet folder or the split files are missing")
    train_rel, train_labels = read_split_file(files[0])
    test_rel, test_labels = read_split_file(files[1])
    classes = _oltr_class_names(train_rel, train_labels, files[0])
    if max(test_labels) >= len(classes) or min(test_labels) < 0:
        raise DatasetFormatError(f"{files[1]}: labels outside the {len(classes)} train classes")
    train_paths = [root / r for r in train_rel]
    test_paths = [root / r for r in test_rel]
    absent = [p for p in train_paths + test_paths if not p.is_file()]
    if absent:
        raise missing_error("imagenet_lt_oltr", absent[:5], HOW_OLTR,
                            f"{len(absent)} images named in the split files are missing under {root}")
    return RawDataset(
        name="imagenet_lt_oltr",
        train_images=load_images(train_paths, 3, image_size, "imagenet_lt_oltr train"),
        train_labels=labels_tensor(train_labels),
        test_images=load_images(test_paths, 3, image_size, f"imagenet_lt_oltr {test_split}"),
        test_labels=labels_tensor(test_labels),
        class_names=classes, mean=MEAN, std=STD,
        extra={"source": str(root), "format": "oltr-split-files", "already_long_tailed": True,
               "split_files": [str(f) for f in files], "image_size": image_size,
               "resize": RESIZE, "test_split": test_split},
    )
