"""Dataset loader tests: tiny files in each real on-disk format (idx, CIFAR pickles, the
tiny-imagenet-200 and ImageNet folders, OLTR split files, image folders) read by the real loaders.

Run: .venv/bin/python -m pytest tests/unit/test_loaders.py -q   (a few seconds, CPU only; the real
Fashion-MNIST test needs /usr/share/datasets/fashion-mnist, from apt-get install dataset-fashion-mnist)
"""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ltdistill.data.base import DatasetMissingError, load_dataset
from ltdistill.data.loaders import DatasetFormatError, fashion_mnist
from ltdistill.data.loaders._common import resize_center_crop
from ltdistill.data.loaders.tiny_imagenet import reorganise_val
from ltdistill.data.long_tail import make_split
from ltdistill.registry import UnknownNameError

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture
def no_system_fashion(monkeypatch):
    """Keep the loader away from the Debian copy so a test sees only its own files."""
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIRS", ())


# ----------------------------------------------------------------------------------------------
# writers for the real formats


def write_idx(path: Path, array: np.ndarray, magic: int | None = None) -> None:
    magic = magic if magic is not None else 0x0800 | array.ndim
    raw = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    raw += array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as fh:
            fh.write(raw)
    else:
        path.write_bytes(raw)


def write_fashion(folder: Path, gz: bool, n_train: int = 20, n_test: int = 10) -> dict:
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(n_train, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test, dtype=np.uint8) * 3) % 10,
    }
    for name, arr in arrays.items():
        write_idx(folder / (name + (".gz" if gz else "")), arr)
    return arrays


def cifar_rows(n: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n images whose channel ch is the constant (offset + i) * 3 + ch, as N x 3072 rows."""
    images = np.zeros((n, 3, 32, 32), dtype=np.uint8)
    for i in range(n):
        for ch in range(3):
            images[i, ch] = ((offset + i) * 3 + ch) % 256
    return images.reshape(n, 3072), images


def write_pickle(path: Path, obj: dict, protocol: int = 2) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=protocol)


def write_cifar10(root: Path) -> tuple[np.ndarray, np.ndarray]:
    folder = root / "cifar-10-batches-py"
    images, labels = [], []
    for b in range(5):
        rows, imgs = cifar_rows(3, offset=3 * b)
        y = [(3 * b + i) % 10 for i in range(3)]
        write_pickle(folder / f"data_batch_{b + 1}", {b"batch_label": b"training batch",
                                                      b"data": rows, b"labels": y,
                                                      b"filenames": [b"x.png"] * 3})
        images.append(imgs)
        labels += y
    rows, _ = cifar_rows(4, offset=100)
    write_pickle(folder / "test_batch", {b"data": rows, b"labels": [9, 8, 7, 6]}, protocol=4)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse",
             b"ship", b"truck"]
    write_pickle(folder / "batches.meta", {b"label_names": names, b"num_cases_per_batch": 3})
    return np.concatenate(images), np.array(labels)


def write_cifar100(root: Path) -> None:
    folder = root / "cifar-100-python"
    rows, _ = cifar_rows(6)
    write_pickle(folder / "train", {b"data": rows, b"fine_labels": [0, 1, 2, 99, 50, 0],
                                    b"coarse_labels": [0] * 6}, protocol=5)
    rows, _ = cifar_rows(2, offset=10)
    write_pickle(folder / "test", {b"data": rows, b"fine_labels": [5, 6], b"coarse_labels": [0, 0]})
    names = [f"class{i:02d}".encode() for i in range(100)]
    write_pickle(folder / "meta", {b"fine_label_names": names, b"coarse_label_names": [b"c"] * 20})


def write_image(path: Path, size: tuple[int, int], colour, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path)


# Tiny-ImageNet wnids; wnids.txt lists them in a non-sorted order on purpose
TINY_WNIDS_TXT_ORDER = ["n03000000", "n01000000", "n02000000"]
TINY_COLOURS = {"n01000000": (250, 0, 0), "n02000000": (0, 250, 0), "n03000000": (0, 0, 250)}


def write_tiny(root: Path, per_class_val: int = 2) -> Path:
    folder = root / "tiny-imagenet-200"
    (folder / "wnids.txt").parent.mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(TINY_WNIDS_TXT_ORDER) + "\n")
    (folder / "words.txt").write_text("n01000000\tone\nn02000000\ttwo\nn03000000\tthree\n")
    for wnid, colour in TINY_COLOURS.items():
        for k in range(3):
            write_image(folder / "train" / wnid / "images" / f"{wnid}_{k}.JPEG", (16, 16), colour)
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text("ignored\n")
    # one greyscale JPEG, as in the real archive
    write_image(folder / "train" / "n02000000" / "images" / "n02000000_3.JPEG", (16, 16), 128, "L")
    lines, k = [], 0
    for _ in range(per_class_val):
        for wnid in reversed(sorted(TINY_COLOURS)):  # annotation order is not class order
            name = f"val_{k}.JPEG"
            write_image(folder / "val" / "images" / name, (16, 16), TINY_COLOURS[wnid])
            lines.append(f"{name}\t{wnid}\t0\t0\t15\t15")
            k += 1
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return folder


# ----------------------------------------------------------------------------------------------
# Fashion-MNIST (idx)


@pytest.mark.parametrize("gz", [False, True])
def test_fashion_idx_plain_and_gz(tmp_path, no_system_fashion, gz):
    arrays = write_fashion(tmp_path, gz)
    data = load_dataset("fashion_mnist", root=tmp_path)
    assert data.train_images.shape == (20, 1, 28, 28) and data.test_images.shape == (10, 1, 28, 28)
    assert data.train_images.dtype == torch.uint8 and data.train_labels.dtype == torch.int64
    assert np.array_equal(data.train_images[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    assert data.test_labels.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    assert data.class_names[0] == "T-shirt/top" and data.class_names[9] == "Ankle boot"
    assert data.mean == (0.2861,) and data.std == (0.3530,)


def test_fashion_torchvision_layout(tmp_path, no_system_fashion):
    write_fashion(tmp_path / "FashionMNIST" / "raw", gz=True)
    assert load_dataset("fashion_mnist", root=tmp_path).train_images.shape[0] == 20


def test_fashion_corrupted_magic(tmp_path, no_system_fashion):
    write_fashion(tmp_path, gz=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(20, np.uint8), magic=2051)
    with pytest.raises(DatasetFormatError, match=r"train-labels-idx1-ubyte has magic number 2051, "
                                                 r"expected 2049"):
        load_dataset("fashion_mnist", root=tmp_path)


def test_fashion_truncated_file(tmp_path, no_system_fashion):
    write_fashion(tmp_path, gz=True)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(DatasetFormatError, match="truncated"):
        load_dataset("fashion_mnist", root=tmp_path)
    path.write_bytes(path.read_bytes()[:50])  # a cut-off gzip stream
    with pytest.raises(DatasetFormatError, match="t10k-images-idx3-ubyte.gz"):
        load_dataset("fashion_mnist", root=tmp_path)


def test_fashion_missing_lists_searched_paths_and_how(tmp_path, no_system_fashion):
    with pytest.raises(DatasetMissingError) as err:
        load_dataset("fashion_mnist", root=tmp_path / "nowhere")
    msg = str(err.value)
    assert str(tmp_path / "nowhere") in msg and str(tmp_path / "nowhere" / "FashionMNIST" / "raw") in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "download" in msg


def test_fashion_download_without_root_is_a_clear_error(no_system_fashion):
    with pytest.raises(DatasetMissingError, match="download needs a folder"):
        load_dataset("fashion_mnist", root=None, download=True)


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_from_debian_location():
    data = load_dataset("fashion_mnist")
    assert data.train_images.shape == (60000, 1, 28, 28)
    assert data.test_images.shape == (10000, 1, 28, 28)
    assert torch.bincount(data.train_labels).tolist() == [6000] * 10
    assert torch.bincount(data.test_labels).tolist() == [1000] * 10
    assert data.extra["source"] == str(DEBIAN_FASHION)


# ----------------------------------------------------------------------------------------------
# CIFAR pickles


def test_cifar10_pickles(tmp_path):
    images, labels = write_cifar10(tmp_path)
    for root in (tmp_path, tmp_path / "cifar-10-batches-py"):
        data = load_dataset("cifar10", root=root)
        assert data.train_images.shape == (15, 3, 32, 32) and data.test_images.shape == (4, 3, 32, 32)
        assert np.array_equal(data.train_images.numpy(), images)  # channel-major rows
        assert data.train_labels.tolist() == labels.tolist()
        assert data.test_labels.tolist() == [9, 8, 7, 6]
        assert data.class_names[0] == "airplane" and data.class_names[9] == "truck"
        assert data.mean == (0.4914, 0.4822, 0.4465) and data.std == (0.2023, 0.1994, 0.2010)
    # pixel (channel 1) of image 4 is (4 * 3 + 1)
    assert int(data.train_images[4, 1, 5, 5]) == 13


def test_cifar100_pickles_and_stats_option(tmp_path):
    write_cifar100(tmp_path)
    data = load_dataset("cifar100", root=tmp_path)
    assert data.num_classes == 100 and data.class_names[99] == "class99"
    assert data.train_labels.tolist() == [0, 1, 2, 99, 50, 0]
    assert data.test_labels.tolist() == [5, 6]
    assert data.mean == (0.5071, 0.4866, 0.4409) and data.std == (0.2673, 0.2564, 0.2762)
    mtt = load_dataset("cifar100", root=tmp_path, stats="mtt")
    assert mtt.mean == (0.4914, 0.4822, 0.4465)
    with pytest.raises(ValueError, match="Known: own, mtt"):
        load_dataset("cifar100", root=tmp_path, stats="other")


def test_cifar_bad_content_is_a_clear_error(tmp_path):
    write_cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    write_pickle(batch, {b"data": np.zeros((3, 100), np.uint8), b"labels": [0, 1, 2]})
    with pytest.raises(DatasetFormatError, match="data_batch_3.*N x 3072"):
        load_dataset("cifar10", root=tmp_path)
    batch.write_bytes(b"\x80\x02}q\x00")  # truncated pickle stream
    with pytest.raises(DatasetFormatError, match="data_batch_3"):
        load_dataset("cifar10", root=tmp_path)


def test_cifar_pickle_refuses_foreign_objects(tmp_path):
    write_cifar10(tmp_path)
    write_pickle(tmp_path / "cifar-10-batches-py" / "test_batch",
                 {b"data": Path("/etc/passwd"), b"labels": []})
    with pytest.raises(DatasetFormatError, match="refusing to load global pathlib"):
        load_dataset("cifar10", root=tmp_path)


def test_cifar_missing_and_download_without_root(tmp_path):
    with pytest.raises(DatasetMissingError) as err:
        load_dataset("cifar100", root=tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "cifar-100-python") in msg and "cifar-100-python.tar.gz" in msg
    with pytest.raises(DatasetMissingError, match="download needs a folder"):
        load_dataset("cifar10", root=None, download=True)


# ----------------------------------------------------------------------------------------------
# Tiny-ImageNet-200


def test_tiny_imagenet_folder(tmp_path):
    write_tiny(tmp_path)
    data = load_dataset("tiny_imagenet", root=tmp_path)
    assert data.class_names == sorted(TINY_COLOURS)  # sorted wnids, not the wnids.txt order
    assert data.train_images.shape == (10, 3, 16, 16)
    assert torch.bincount(data.train_labels).tolist() == [3, 4, 3]
    assert data.test_images.shape == (6, 3, 16, 16)
    assert torch.bincount(data.test_labels).tolist() == [2, 2, 2]
    assert data.extra["readable_names"] == ["one", "two", "three"]
    for images, labels in ((data.train_images, data.train_labels),
                           (data.test_images, data.test_labels)):
        for x, y in zip(images, labels, strict=True):
            mean = x.float().mean(dim=(1, 2))
            if torch.allclose(mean, mean[0].expand(3), atol=3):  # the greyscale image
                assert abs(float(mean[0]) - 128) < 4
                continue
            colour = torch.tensor(TINY_COLOURS[data.class_names[int(y)]], dtype=torch.float32)
            assert torch.allclose(mean, colour, atol=6)
    # val images are class-major, file names sorted within a class
    assert data.test_labels.tolist() == [0, 0, 1, 1, 2, 2]


def test_tiny_imagenet_dir_itself_and_wnids_mismatch(tmp_path):
    folder = write_tiny(tmp_path)
    assert load_dataset("tiny_imagenet", root=folder).num_classes == 3
    (folder / "wnids.txt").write_text("n01000000\nn02000000\nn09999999\n")
    with pytest.raises(DatasetFormatError, match="n09999999"):
        load_dataset("tiny_imagenet", root=folder)


def test_tiny_val_annotation_with_unknown_wnid(tmp_path):
    folder = write_tiny(tmp_path)
    ann = folder / "val" / "val_annotations.txt"
    ann.write_text(ann.read_text() + "val_0.JPEG\tn05555555\t0\t0\t1\t1\n")
    with pytest.raises(DatasetFormatError, match="n05555555 has no train/ folder"):
        load_dataset("tiny_imagenet", root=folder)


def test_tiny_reorganise_val(tmp_path):
    folder = write_tiny(tmp_path)
    out = tmp_path / "val_by_class"
    summary = reorganise_val(folder, out, expected_per_class=2)
    assert summary["classes"] == sorted(TINY_COLOURS) and summary["total"] == 6
    for wnid in TINY_COLOURS:
        files = sorted(p.name for p in (out / wnid).iterdir())
        assert len(files) == 2
    assert (out / "n03000000" / "val_0.JPEG").is_file()  # val_0 is annotated as n03000000
    # rerunning replaces the folder; a wrong expected count fails and leaves no partial output
    reorganise_val(folder, out, mode="copy", expected_per_class=2)
    with pytest.raises(DatasetFormatError, match="do not hold 50 images"):
        reorganise_val(folder, tmp_path / "other")
    assert not (tmp_path / "other").exists()


def test_tiny_missing(tmp_path):
    with pytest.raises(DatasetMissingError, match="tiny-imagenet-200.zip"):
        load_dataset("tiny_imagenet", root=tmp_path)


# ----------------------------------------------------------------------------------------------
# ImageNet folder (imagenet_lt_exp) and OLTR split files (imagenet_lt_oltr)


def write_imagenet(root: Path, per_class: int = 6, classes: int = 4) -> list[str]:
    wnids = [f"n0{i}111111" for i in range(classes)]
    for c, wnid in enumerate(wnids):
        for k in range(per_class):
            size = (40, 20) if k % 2 else (20, 30)  # mixed sizes and orientations
            write_image(root / "train" / wnid / f"{wnid}_{k:03d}.JPEG", size, (10 * c, 5 * k, 0))
        for k in range(2):
            write_image(root / "val" / wnid / f"ILSVRC2012_val_{c}{k}.JPEG", (24, 24), (10 * c, 0, 0))
    return wnids


def test_imagenet_lt_exp_folder(tmp_path):
    wnids = write_imagenet(tmp_path)
    data = load_dataset("imagenet_lt_exp", root=tmp_path, image_size=8)
    assert data.class_names == wnids
    assert data.train_images.shape == (24, 3, 8, 8) and data.test_images.shape == (8, 3, 8, 8)
    assert data.train_labels.tolist() == [c for c in range(4) for _ in range(6)]
    assert data.extra["n_max"] == 1281 and data.mean == (0.485, 0.456, 0.406)
    # sorted file order: image k of class c has green = 5 k
    greens = data.train_images[:6, 1].float().mean(dim=(1, 2))
    assert torch.allclose(greens, torch.arange(6.0) * 5, atol=3)
    small = load_dataset("imagenet_lt_exp", root=tmp_path, image_size=8, max_per_class=2)
    assert small.train_images.shape[0] == 8 and small.test_images.shape[0] == 8
    assert torch.equal(small.train_images[:2], data.train_images[:2])


def test_imagenet_lt_exp_preselection_matches_split(tmp_path):
    write_imagenet(tmp_path)
    full = load_dataset("imagenet_lt_exp", root=tmp_path, image_size=8)
    split = make_split("imagenet_lt_exp", full.train_labels.numpy(), None, 4, 3, n_max=6)
    pre = load_dataset("imagenet_lt_exp", root=tmp_path, image_size=8, imbalance_factor=3, n_max=6)
    assert pre.extra["already_long_tailed"] is True
    idx = torch.as_tensor(split.flat_train_indices())
    assert torch.equal(pre.train_images, full.train_images[idx])
    assert torch.equal(pre.train_labels, full.train_labels[idx])


def test_imagenet_lt_exp_val_must_be_per_class(tmp_path):
    write_imagenet(tmp_path)
    for f in (tmp_path / "val" / "n00111111").iterdir():
        f.unlink()
    (tmp_path / "val" / "n00111111").rmdir()
    with pytest.raises(DatasetFormatError, match="n00111111"):
        load_dataset("imagenet_lt_exp", root=tmp_path, image_size=8)


def test_imagenet_lt_oltr_split_files(tmp_path):
    wnids = write_imagenet(tmp_path)
    split_dir = tmp_path / "splits"
    split_dir.mkdir()
    train = [f"train/{w}/{w}_{k:03d}.JPEG {c}" for c, w in enumerate(wnids) for k in range(5 - c)]
    test = [f"val/{w}/ILSVRC2012_val_{c}{k}.JPEG {c}" for c, w in enumerate(wnids) for k in range(2)]
    (split_dir / "ImageNet_LT_train.txt").write_text("\n".join(train) + "\n")
    (split_dir / "ImageNet_LT_test.txt").write_text("\n".join(test) + "\n")
    data = load_dataset("imagenet_lt_oltr", root=tmp_path, split_dir=split_dir, image_size=8)
    assert data.extra["already_long_tailed"] is True
    assert data.class_names == wnids
    assert torch.bincount(data.train_labels).tolist() == [5, 4, 3, 2]
    assert data.test_images.shape == (8, 3, 8, 8)
    # a missing image and a malformed line are named
    (split_dir / "ImageNet_LT_test.txt").write_text("val/n00111111/absent.JPEG 0\n")
    with pytest.raises(DatasetMissingError, match="absent.JPEG"):
        load_dataset("imagenet_lt_oltr", root=tmp_path, split_dir=split_dir, image_size=8)
    (split_dir / "ImageNet_LT_test.txt").write_text("just-a-path\n")
    with pytest.raises(DatasetFormatError, match="ImageNet_LT_test.txt:1"):
        load_dataset("imagenet_lt_oltr", root=tmp_path, split_dir=split_dir, image_size=8)


def test_imagenet_missing(tmp_path):
    with pytest.raises(DatasetMissingError, match="image-net.org"):
        load_dataset("imagenet_lt_exp", root=tmp_path)
    with pytest.raises(DatasetMissingError, match="ImageNet_LT_train.txt"):
        load_dataset("imagenet_lt_oltr", root=tmp_path)


def test_resize_short_side_then_centre_crop():
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 10, 20))  # a white band on the far left, cropped away
    out = resize_center_crop(img, 8)
    assert out.size == (8, 8)
    assert np.asarray(out).max() < 40


# ----------------------------------------------------------------------------------------------
# image_folder


def write_folder(root: Path, classes=("cat", "dog"), size=(12, 12), mode="RGB", per_class=3):
    rng = np.random.default_rng(1)
    for split in ("train", "test"):
        for name in classes:
            for k in range(per_class):
                shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
                arr = rng.integers(0, 256, shape, dtype=np.uint8)
                path = root / split / name / f"img{k}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr, mode).save(path)


def test_image_folder_happy_path(tmp_path):
    write_folder(tmp_path)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    data = load_dataset("image_folder", root=tmp_path)
    assert data.class_names == ["cat", "dog"]
    assert data.train_images.shape == (6, 3, 12, 12) and data.test_images.shape == (6, 3, 12, 12)
    assert data.train_labels.tolist() == [0, 0, 0, 1, 1, 1]
    x = data.train_images.double() / 255
    assert np.allclose(data.mean, x.mean(dim=(0, 2, 3)).numpy())
    assert np.allclose(data.std, x.std(dim=(0, 2, 3), unbiased=False).numpy())
    fixed = load_dataset("image_folder", root=tmp_path, mean=0.5, std=[0.25, 0.25, 0.25])
    assert fixed.mean == (0.5, 0.5, 0.5) and fixed.std == (0.25, 0.25, 0.25)


def test_image_folder_greyscale_channels_and_resize(tmp_path):
    write_folder(tmp_path, mode="L", size=(10, 14))
    grey = load_dataset("image_folder", root=tmp_path)
    assert grey.channels == 1 and grey.train_images.shape == (6, 1, 14, 10)
    rgb = load_dataset("image_folder", root=tmp_path, channels=3, image_size=6)
    assert rgb.train_images.shape == (6, 3, 6, 6)
    assert torch.equal(rgb.train_images[:, 0], rgb.train_images[:, 2])


def test_image_folder_missing_test_folder(tmp_path):
    write_folder(tmp_path)
    (tmp_path / "test").rename(tmp_path / "val")
    with pytest.raises(DatasetMissingError, match=r"test is missing"):
        load_dataset("image_folder", root=tmp_path)


def test_image_folder_empty_class(tmp_path):
    write_folder(tmp_path)
    for f in (tmp_path / "test" / "dog").iterdir():
        f.unlink()
    with pytest.raises(DatasetFormatError, match=r"test/dog holds no images"):
        load_dataset("image_folder", root=tmp_path)


def test_image_folder_unreadable_image(tmp_path):
    write_folder(tmp_path)
    (tmp_path / "train" / "dog" / "img1.png").write_bytes(b"this is not a png")
    with pytest.raises(DatasetFormatError, match=r"cannot read image .*dog/img1.png"):
        load_dataset("image_folder", root=tmp_path)


def test_image_folder_class_only_in_train(tmp_path):
    write_folder(tmp_path)
    write_image(tmp_path / "train" / "emu" / "a.png", (12, 12), (1, 2, 3))
    with pytest.raises(DatasetFormatError, match="class 'emu' is in .*train but has no folder"):
        load_dataset("image_folder", root=tmp_path)


def test_image_folder_size_mismatch_names_the_file(tmp_path):
    write_folder(tmp_path)
    write_image(tmp_path / "train" / "dog" / "odd.png", (20, 12), (1, 2, 3))
    with pytest.raises(DatasetFormatError, match=r"odd.png is 20x12 .* set the image_size option"):
        load_dataset("image_folder", root=tmp_path)
    assert load_dataset("image_folder", root=tmp_path, image_size=12).train_images.shape[0] == 7


def test_image_folder_missing_root(tmp_path):
    with pytest.raises(DatasetMissingError, match="How to obtain it"):
        load_dataset("image_folder", root=tmp_path / "absent")


# ----------------------------------------------------------------------------------------------
# registry behaviour


def test_unknown_dataset_lists_known_names():
    with pytest.raises(UnknownNameError) as err:
        load_dataset("cifar1000")
    msg = str(err.value)
    for name in ("cifar10", "cifar100", "fashion_mnist", "image_folder", "imagenet_lt_exp",
                 "imagenet_lt_oltr", "tiny_imagenet"):
        assert name in msg


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "fashion_mnist", "image_folder",
                                  "imagenet_lt_exp", "imagenet_lt_oltr", "tiny_imagenet"])
def test_missing_root_says_where_and_how(tmp_path, no_system_fashion, name):
    root = tmp_path / "not-here"
    with pytest.raises(DatasetMissingError) as err:
        load_dataset(name, root=root)
    msg = str(err.value)
    assert str(root) in msg and "How to obtain it" in msg


def test_unknown_loader_option_raises(tmp_path):
    write_cifar10(tmp_path)
    with pytest.raises(TypeError, match="image_size"):
        load_dataset("cifar10", root=tmp_path, image_size=64)
