"""Shared fixtures: tiny generated long-tailed data in the package's own types.

Run everything with `./run.sh test`; one layer with e.g. `pytest tests/unit`."""

from __future__ import annotations

import pytest
import torch

from ltdistill.allocator import tune_allocator
from ltdistill.data.base import RawDataset
from ltdistill.data.long_tail import make_split
from ltdistill.data.prepared import prepare
from ltdistill.data.preprocess import make_preprocessing

torch.set_num_threads(1)
tune_allocator()  # as every job does (jobs.start): faster CPU tensors, same results


def make_raw(num_classes: int = 4, per_class: int = 16, test_per_class: int = 4, size: int = 8,
             channels: int = 1, seed: int = 0) -> RawDataset:
    """Class-dependent blobs: class c has a bright square at a class-specific position, so tiny
    networks can learn it quickly."""
    g = torch.Generator().manual_seed(seed)

    def images(n_per: int) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for c in range(num_classes):
            x = torch.randint(0, 60, (n_per, channels, size, size), generator=g)
            r, col = (2 * c) % (size - 2), (3 * c) % (size - 2)
            x[:, :, r:r + 3, col:col + 3] += 180
            xs.append(x.clamp(0, 255).to(torch.uint8))
            ys.append(torch.full((n_per,), c, dtype=torch.long))
        return torch.cat(xs), torch.cat(ys)

    tr_x, tr_y = images(per_class)
    te_x, te_y = images(test_per_class)
    return RawDataset("toy", tr_x, tr_y, te_x, te_y, [f"class{c}" for c in range(num_classes)],
                      (0.3,) * channels, (0.3,) * channels)


@pytest.fixture(scope="session")
def toy_raw() -> RawDataset:
    return make_raw()


@pytest.fixture(scope="session")
def toy_data(toy_raw):
    """IF 8 over 4 classes of 16 images: counts [16, 8, 4, 2]; the tail (2) is smaller than the
    contract test's IPC 3, so the IPC policies are exercised."""
    split = make_split("toy", toy_raw.train_labels.numpy(), toy_raw.test_labels.numpy(), 4, 8,
                       lt_test=True, many_above=10, few_below=3)
    prep = make_preprocessing("normalise", toy_raw.mean, toy_raw.std)
    return prepare(toy_raw, split, prep)
