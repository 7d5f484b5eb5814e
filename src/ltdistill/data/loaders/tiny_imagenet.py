"""Tiny-ImageNet-200 from the official tiny-imagenet-200/ folder, with the val set (built from
val_annotations.txt) as the test split, and the val re-organisation used by the Snakemake rule."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from ..base import DATASETS, RawDataset
from ._common import (
    DatasetFormatError,
    labels_tensor,
    list_class_dirs,
    list_images,
    load_images,
    missing_error,
    unique_dirs,
)

log = logging.getLogger("ltdistill")

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
FOLDER = "tiny-imagenet-200"
HOW = ("download http://cs231n.stanford.edu/tiny-imagenet-200.zip, unzip it, and set "
       "datasets.tiny_imagenet.root to the folder containing tiny-imagenet-200/ (or to that "
       "folder itself); torchvision has no downloader for it")


def find_tiny_dir(root: Path | None) -> Path:
    """The tiny-imagenet-200 folder (root itself or root/tiny-imagenet-200)."""
    searched = unique_dirs([root / FOLDER if root else None, root])
    for folder in searched:
        if (folder / "train").is_dir() and (folder / "val" / "val_annotations.txt").is_file():
            return folder
    raise missing_error("tiny_imagenet", searched, HOW,
                        "no folder holds train/ and val/val_annotations.txt")


def tiny_classes(folder: Path) -> list[str]:
    """Sorted wnids of train/, checked against wnids.txt (same set; its order is not used)."""
    classes = list_class_dirs(folder / "train")
    if not classes:
        raise DatasetFormatError(f"tiny_imagenet: {folder / 'train'} has no class folders")
    wnids_file = folder / "wnids.txt"
    if wnids_file.is_file():
        listed = {w.strip() for w in wnids_file.read_text().splitlines() if w.strip()}
        if listed != set(classes):
            only_txt = sorted(listed - set(classes))[:5]
            only_dir = sorted(set(classes) - listed)[:5]
            raise DatasetFormatError(
                f"tiny_imagenet: {wnids_file} and {folder / 'train'} disagree: listed but no folder "
                f"{only_txt}, folder but not listed {only_dir}")
    else:
        log.warning("tiny_imagenet: %s is missing; using the train/ folder names", wnids_file)
    return classes


def read_val_annotations(folder: Path, classes: list[str]) -> list[tuple[str, str]]:
    """(file name, wnid) per line of val/val_annotations.txt (tab-separated), validated."""
    path = folder / "val" / "val_annotations.txt"
    known = set(classes)
    rows = []
    seen: set[str] = set()
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 2:
            raise DatasetFormatError(f"{path}:{i}: expected tab-separated 'file<TAB>wnid<TAB>box', "
                                     f"got {line!r}")
        name, wnid = parts[0].strip(), parts[1].strip()
        if wnid not in known:
            raise DatasetFormatError(f"{path}:{i}: wnid {wnid} has no train/ folder")
        if name in seen:
            raise DatasetFormatError(f"{path}:{i}: {name} is listed twice")
        seen.add(name)
        rows.append((name, wnid))
    if not rows:
        raise DatasetFormatError(f"{path} lists no images")
    return rows


def _val_files(folder: Path, classes: list[str]) -> tuple[list[Path], list[int]]:
    """Val images class-major, file names sorted within a class (as a folder loader orders the
    re-organised val_by_class/), so LT test positions match that layout."""
    index = {w: c for c, w in enumerate(classes)}
    rows = sorted(read_val_annotations(folder, classes), key=lambda r: (index[r[1]], r[0]))
    paths = [folder / "val" / "images" / name for name, _ in rows]
    absent = [p for p in paths if not p.is_file()]
    if absent:
        raise DatasetFormatError(f"tiny_imagenet: {len(absent)} val images listed in "
                                 f"val_annotations.txt are missing, e.g. {absent[0]}")
    return paths, [index[w] for _, w in rows]


def _train_files(folder: Path, classes: list[str]) -> tuple[list[Path], list[int]]:
    paths: list[Path] = []
    labels: list[int] = []
    for c, wnid in enumerate(classes):
        images_dir = folder / "train" / wnid / "images"
        files = list_images(images_dir) if images_dir.is_dir() else []
        if not files:
            raise DatasetFormatError(f"tiny_imagenet: class folder {images_dir} has no images")
        paths += files
        labels += [c] * len(files)
    return paths, labels


def _readable_names(folder: Path, classes: list[str]) -> list[str]:
    words = folder / "words.txt"
    if not words.is_file():
        return list(classes)
    table = dict(line.split("\t", 1) for line in words.read_text().splitlines() if "\t" in line)
    return [table.get(w, w).strip() for w in classes]


@DATASETS.register("tiny_imagenet")
def load_tiny_imagenet(root: Path | None, download: bool = False) -> RawDataset:
    """Train: train/<wnid>/images/*.JPEG; test: the val set; classes = sorted wnids; RGB 64x64."""
    if download:
        log.warning("tiny_imagenet: automatic download is not supported; looking on disk")
    folder = find_tiny_dir(root)
    classes = tiny_classes(folder)
    train_paths, train_labels = _train_files(folder, classes)
    test_paths, test_labels = _val_files(folder, classes)
    train_x = load_images(train_paths, 3, None, "tiny_imagenet train")
    test_x = load_images(test_paths, 3, None, "tiny_imagenet val")
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DatasetFormatError(f"tiny_imagenet: train images are {tuple(train_x.shape[1:])} but "
                                 f"val images are {tuple(test_x.shape[1:])}")
    return RawDataset(
        name="tiny_imagenet", train_images=train_x, train_labels=labels_tensor(train_labels),
        test_images=test_x, test_labels=labels_tensor(test_labels), class_names=classes,
        mean=MEAN, std=STD,
        extra={"source": str(folder), "format": "tiny-imagenet-200", "test_split": "val",
               "readable_names": _readable_names(folder, classes)},
    )


def _place(src: Path, dst: Path, mode: str) -> None:
    if mode == "copy":
        shutil.copy2(src, dst)
    elif mode == "symlink":
        dst.symlink_to(src.resolve())
    else:  # hard link, falling back to a copy across file systems
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)


def reorganise_val(root: str | Path, out_dir: str | Path, mode: str = "link",
                   expected_per_class: int | None = 50) -> dict:
    """Write (link or copy) every val image into out_dir/<wnid>/ and check the counts.

    Builds the folder next to out_dir and renames it into place only when complete. Checks one
    folder per train class and, per class, the number of annotated images (and expected_per_class
    when given: 50 in the official archive). Returns the class list and per-class counts."""
    if mode not in ("link", "copy", "symlink"):
        raise ValueError(f"reorganise_val: unknown mode '{mode}'. Known: link, copy, symlink")
    folder = find_tiny_dir(Path(root))
    classes = tiny_classes(folder)
    paths, labels = _val_files(folder, classes)
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    for wnid in classes:
        (tmp / wnid).mkdir(parents=True)
    for path, c in zip(paths, labels, strict=True):
        _place(path, tmp / classes[c] / path.name, mode)
    counts = {w: len(list_images(tmp / w)) for w in classes}
    expected = {w: labels.count(c) for c, w in enumerate(classes)}
    bad = {w: n for w, n in counts.items()
           if n != expected[w] or (expected_per_class is not None and n != expected_per_class)}
    if bad:
        shutil.rmtree(tmp)
        want = expected_per_class if expected_per_class is not None else "the annotated number"
        raise DatasetFormatError(f"reorganise_val: {len(bad)} classes do not hold {want} images, "
                                 f"e.g. {dict(list(bad.items())[:5])}")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    log.info("tiny_imagenet: wrote %d val images into %d class folders under %s",
             len(paths), len(classes), out_dir)
    return {"classes": classes, "per_class": counts, "total": len(paths)}
