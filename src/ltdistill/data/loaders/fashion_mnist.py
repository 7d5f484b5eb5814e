"""Fashion-MNIST from its four idx files (gzipped or plain), parsed and validated here."""

from __future__ import annotations

import gzip
import logging
import zlib
from pathlib import Path

import numpy as np
import torch

from ..base import DATASETS, RawDataset
from ._common import DatasetFormatError, missing_error, unique_dirs

log = logging.getLogger("ltdistill")

CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot"]
MEAN, STD = (0.2861,), (0.3530,)

#: where the Debian package dataset-fashion-mnist installs the files (searched after root)
SYSTEM_DIRS: tuple[Path, ...] = (Path("/usr/share/datasets/fashion-mnist"),)

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049  # 0x0803: uint8, 3 dims; 0x0801: uint8, 1 dim

HOW = ("apt-get install dataset-fashion-mnist (installs /usr/share/datasets/fashion-mnist), or set "
       "datasets.fashion_mnist.root to a folder holding the four idx files (plain or .gz, e.g. "
       "from https://github.com/zalandoresearch/fashion-mnist), or enable download")


def read_idx(path: str | Path, expected_magic: int) -> np.ndarray:
    """Parse one idx file: big-endian int32 magic and dims, then uint8 data of exactly that size."""
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                raw = fh.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetFormatError(f"cannot read idx file {path} (damaged gzip or I/O error: {exc}); "
                                 "replace it with an intact copy") from exc
    if len(raw) < 4:
        raise DatasetFormatError(f"idx file {path} is truncated: {len(raw)} bytes, no header")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected_magic:
        raise DatasetFormatError(f"idx file {path} has magic number {magic}, expected "
                                 f"{expected_magic}; the file is corrupted or not this idx type")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetFormatError(f"idx file {path} is truncated inside its header")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    size = int(np.prod(dims))
    if len(raw) - header != size:
        raise DatasetFormatError(f"idx file {path} holds {len(raw) - header} data bytes but its "
                                 f"header {dims} says {size}; the file is truncated or corrupted")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find_file(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def find_idx_dir(root: Path | None) -> tuple[dict[str, Path] | None, list[Path]]:
    """First searched folder holding all four files, and the list of folders searched."""
    searched = unique_dirs([root, root / "FashionMNIST" / "raw" if root else None, *SYSTEM_DIRS])
    for folder in searched:
        found = {key: _find_file(folder, stem) for key, stem in FILES.items()}
        if all(found.values()):
            return found, searched  # type: ignore[return-value]
    return None, searched


def _download(root: Path | None) -> None:
    if root is None:
        raise missing_error("fashion_mnist", [], "download needs a folder: set "
                            "datasets.fashion_mnist.root. Otherwise: " + HOW)
    from torchvision.datasets import FashionMNIST

    log.info("downloading Fashion-MNIST into %s with torchvision", root)
    try:
        for train in (True, False):
            FashionMNIST(str(root), train=train, download=True)
    except Exception as exc:  # noqa: BLE001 - any network or archive failure means "missing"
        raise missing_error("fashion_mnist", [root], HOW, f"download failed ({exc})") from exc


@DATASETS.register("fashion_mnist")
def load_fashion_mnist(root: Path | None, download: bool = False) -> RawDataset:
    """Search root, root/FashionMNIST/raw, the Debian location, then (if allowed) download."""
    files, searched = find_idx_dir(root)
    if files is None and download:
        _download(root)
        files, searched = find_idx_dir(root)
    if files is None:
        raise missing_error("fashion_mnist", searched, HOW,
                            f"no folder holds all four idx files ({', '.join(FILES.values())}; "
                            "plain or .gz)")
    arrays = {key: read_idx(path, IMAGES_MAGIC if key.endswith("images") else LABELS_MAGIC)
              for key, path in files.items()}
    for split in ("train", "test"):
        x, y = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if x.shape[0] != y.shape[0] or x.shape[1:] != (28, 28):
            raise DatasetFormatError(f"fashion_mnist {split}: {x.shape} images do not match "
                                     f"{y.shape[0]} labels of 28x28 images ({files[f'{split}_images']})")
        if y.size and int(y.max()) >= len(CLASS_NAMES):
            raise DatasetFormatError(f"fashion_mnist {split}: label {int(y.max())} out of range in "
                                     f"{files[f'{split}_labels']}")
    folder = files["train_images"].parent
    log.info("fashion_mnist: read idx files from %s", folder)
    return RawDataset(
        name="fashion_mnist",
        train_images=torch.from_numpy(arrays["train_images"].copy()).unsqueeze(1),
        train_labels=torch.from_numpy(arrays["train_labels"].astype(np.int64)),
        test_images=torch.from_numpy(arrays["test_images"].copy()).unsqueeze(1),
        test_labels=torch.from_numpy(arrays["test_labels"].astype(np.int64)),
        class_names=list(CLASS_NAMES), mean=MEAN, std=STD,
        extra={"source": str(folder), "format": "idx"},
    )
