"""CIFAR-10 and CIFAR-100 from the official python pickles (cifar-10-batches-py, cifar-100-python)."""

from __future__ import annotations

import importlib
import logging
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..base import DATASETS, RawDataset
from ._common import DatasetFormatError, missing_error, unique_dirs

log = logging.getLogger("ltdistill")

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762)

#: per family: extracted folder name, train files, test file, meta file, label key, names key
LAYOUTS: dict[str, dict[str, Any]] = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"],
        "meta": "batches.meta", "labels": b"labels", "names": b"label_names",
        "url": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "torchvision": "CIFAR10",
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "train": ["train"], "test": ["test"],
        "meta": "meta", "labels": b"fine_labels", "names": b"fine_label_names",
        "url": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "torchvision": "CIFAR100",
    },
}

# The official pickles hold only dicts, lists, bytes and numpy arrays; anything else is refused.
_SAFE_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """pickle.Unpickler restricted to the numpy globals the official CIFAR files use."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        if module.startswith("numpy.core."):  # numpy >= 2 renamed numpy.core to numpy._core
            try:
                return getattr(importlib.import_module("numpy._core" + module[10:]), name)
            except ImportError:
                pass
        return super().find_class(module, name)


def read_pickle(path: Path) -> dict:
    """One official CIFAR pickle, decoded with encoding="bytes" (keys are bytes)."""
    try:
        with open(path, "rb") as fh:
            obj = _ArrayUnpickler(fh, encoding="bytes").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError) as exc:
        raise DatasetFormatError(f"cannot read CIFAR pickle {path} ({type(exc).__name__}: {exc}); "
                                 "replace it with an intact copy of the official archive") from exc
    if not isinstance(obj, dict):
        raise DatasetFormatError(f"CIFAR pickle {path} holds {type(obj).__name__}, expected a dict")
    return obj


def _get(d: dict, key: bytes, path: Path) -> Any:
    for k in (key, key.decode()):
        if k in d:
            return d[k]
    raise DatasetFormatError(f"CIFAR pickle {path} has no key {key!r} (keys: {sorted(map(str, d))})")


def _read_split(folder: Path, files: list[str], label_key: bytes, num_classes: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for name in files:
        path = folder / name
        d = read_pickle(path)
        x = np.asarray(_get(d, b"data", path))
        y = np.asarray(_get(d, label_key, path), dtype=np.int64)
        if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072 or y.shape != (x.shape[0],):
            raise DatasetFormatError(f"CIFAR pickle {path}: data {x.dtype} {x.shape} and labels "
                                     f"{y.shape} do not form N x 3072 uint8 rows with N labels")
        if y.size and (y.min() < 0 or y.max() >= num_classes):
            raise DatasetFormatError(f"CIFAR pickle {path}: labels outside [0, {num_classes})")
        xs.append(x.reshape(-1, 3, 32, 32))  # rows are channel-major: 1024 R, 1024 G, 1024 B
        ys.append(y)
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


def find_cifar_dir(family: str, root: Path | None) -> tuple[Path | None, list[Path]]:
    layout = LAYOUTS[family]
    searched = unique_dirs([root / layout["folder"] if root else None, root])
    needed = [*layout["train"], *layout["test"], layout["meta"]]
    for folder in searched:
        if all((folder / name).is_file() for name in needed):
            return folder, searched
    return None, searched


def _how(family: str) -> str:
    layout = LAYOUTS[family]
    return (f"download and extract {layout['url']} and set datasets.{family}.root to the folder "
            f"containing {layout['folder']}/ (or to that folder itself), or enable download")


def _download(family: str, root: Path | None) -> None:
    if root is None:
        raise missing_error(family, [], f"download needs a folder: set datasets.{family}.root. "
                            "Otherwise: " + _how(family))
    import torchvision.datasets as tvd

    log.info("downloading %s into %s with torchvision", family, root)
    try:
        getattr(tvd, LAYOUTS[family]["torchvision"])(str(root), train=True, download=True)
    except Exception as exc:  # noqa: BLE001 - any network or archive failure means "missing"
        raise missing_error(family, [root], _how(family), f"download failed ({exc})") from exc


def load_cifar(family: str, root: Path | None, download: bool,
               mean: tuple[float, ...], std: tuple[float, ...]) -> RawDataset:
    layout = LAYOUTS[family]
    folder, searched = find_cifar_dir(family, root)
    if folder is None and download:
        _download(family, root)
        folder, searched = find_cifar_dir(family, root)
    if folder is None:
        files = ", ".join([*layout["train"], *layout["test"], layout["meta"]])
        raise missing_error(family, searched, _how(family), f"no folder holds {files}")
    meta_path = folder / layout["meta"]
    names = [n.decode() if isinstance(n, bytes) else str(n)
             for n in _get(read_pickle(meta_path), layout["names"], meta_path)]
    train_x, train_y = _read_split(folder, layout["train"], layout["labels"], len(names))
    test_x, test_y = _read_split(folder, layout["test"], layout["labels"], len(names))
    log.info("%s: read %d train / %d test images from %s", family, len(train_y), len(test_y), folder)
    return RawDataset(name=family, train_images=train_x, train_labels=train_y, test_images=test_x,
                      test_labels=test_y, class_names=names, mean=tuple(mean), std=tuple(std),
                      extra={"source": str(folder), "format": "cifar-python-pickle"})


@DATASETS.register("cifar10")
def load_cifar10(root: Path | None, download: bool = False) -> RawDataset:
    """CIFAR-10: data_batch_1..5, test_batch and batches.meta."""
    return load_cifar("cifar10", root, download, CIFAR10_MEAN, CIFAR10_STD)


@DATASETS.register("cifar100")
def load_cifar100(root: Path | None, download: bool = False, stats: str = "own") -> RawDataset:
    """CIFAR-100 (fine labels): train, test and meta.

    stats: "own" = the CIFAR-100 constants (default); "mtt" = the CIFAR-10 constants that
    mtt-distillation, DATM and DD-Ranking use for CIFAR-100 (spec long_tail_data.md section 8)."""
    if stats == "own":
        mean, std = CIFAR100_MEAN, CIFAR100_STD
    elif stats == "mtt":
        mean, std = CIFAR10_MEAN, CIFAR10_STD
    else:
        raise ValueError(f"cifar100: unknown stats '{stats}'. Known: own, mtt")
    return load_cifar("cifar100", root, download, mean, std)
