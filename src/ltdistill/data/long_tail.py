"""Long-tailed splits: per-class counts n_c = int(n_max * IF^(-c/(C-1))), the `damed` and `ldam`
image selections, shot groups, and the split manifest every downstream rule reads."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import read_json, sha256_file, write_json

SELECTIONS = ("damed", "ldam")


def lt_counts(n_max: int, num_classes: int, imbalance_factor: int, floor: int = 0) -> list[int]:
    """Exponential profile of Cui et al. (CVPR 2019) with truncation, computed in float64.

    `floor` clamps every count to at least that many images (used for LT test sets)."""
    if imbalance_factor < 1 or int(imbalance_factor) != imbalance_factor:
        raise ValueError(f"imbalance_factor must be an integer >= 1, got {imbalance_factor}")
    if n_max < 1:
        raise ValueError(f"n_max must be >= 1, got {n_max}")
    if num_classes == 1:
        return [n_max]
    rate = 1.0 / float(imbalance_factor)
    counts = [int(n_max * rate ** (c / (num_classes - 1))) for c in range(num_classes)]
    return [max(n, floor) for n in counts]


def _class_positions(labels: np.ndarray, num_classes: int) -> list[np.ndarray]:
    return [np.flatnonzero(labels == c) for c in range(num_classes)]


def select_indices(labels: Sequence[int] | np.ndarray, counts: Sequence[int],
                   selection: str = "damed") -> list[list[int]]:
    """Dataset indices kept per class, in kept order.

    damed: per class a fresh legacy RandomState(42).choice(N_c, n_c, replace=False) over the
    class's positions in dataset order (nested across IFs). ldam: one global RandomState seeded
    with 0, shuffling each class's ascending indices in label order, keeping the first n_c.
    A class with fewer images than n_c keeps all of them."""
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= len(counts)):
        raise ValueError(f"labels must lie in [0, {len(counts)}) (one count per class), found "
                         f"{labels.min()}..{labels.max()}")
    if any(n < 0 for n in counts):
        raise ValueError(f"per-class counts must be >= 0, got {list(counts)}")
    positions = _class_positions(labels, len(counts))
    kept: list[list[int]] = []
    if selection == "damed":
        for pos, n in zip(positions, counts, strict=True):
            n = min(n, len(pos))
            draw = np.random.RandomState(42).choice(len(pos), n, replace=False)
            kept.append(pos[draw].tolist())
    elif selection == "ldam":
        rng = np.random.RandomState(0)  # legacy global-stream semantics of LDAM-DRW
        for pos, n in zip(positions, counts, strict=True):
            idx = pos.copy()
            rng.shuffle(idx)
            kept.append(idx[: min(n, len(idx))].tolist())
    else:
        raise ValueError(f"unknown selection '{selection}'. Known selections: {', '.join(SELECTIONS)}")
    return kept


def shot_groups(counts: Sequence[int], many_above: int = 100, few_below: int = 20,
                preset: str = "kang") -> list[str]:
    """'many' / 'medium' / 'few' per class from LT training counts.

    kang: many if n > many_above, few if n < few_below. oltr: many if n >= 100, few if n <= 20."""
    groups = []
    for n in counts:
        if preset == "kang":
            many, few = n > many_above, n < few_below
        elif preset == "oltr":
            many, few = n >= many_above, n <= few_below
        else:
            raise ValueError(f"unknown shot-group preset '{preset}'. Known presets: kang, oltr")
        groups.append("many" if many else "few" if few else "medium")
    return groups


@dataclass
class Split:
    """The manifest of one long-tailed split (train indices per class, optional LT test)."""

    dataset: str
    imbalance_factor: int
    selection: str
    n_max: int
    train_indices: list[list[int]]
    test_indices: list[list[int]] | None = None
    many_above: int = 100
    few_below: int = 20
    group_preset: str = "kang"
    notes: dict = field(default_factory=dict)
    balanced_test_indices: list[list[int]] | None = None  # None = the whole balanced test split

    @property
    def counts(self) -> list[int]:
        return [len(ix) for ix in self.train_indices]

    @property
    def num_classes(self) -> int:
        return len(self.train_indices)

    @property
    def groups(self) -> list[str]:
        return shot_groups(self.counts, self.many_above, self.few_below, self.group_preset)

    def flat_train_indices(self) -> np.ndarray:
        return np.concatenate([np.asarray(ix, dtype=np.int64) for ix in self.train_indices])

    def flat_balanced_test_indices(self) -> np.ndarray | None:
        if self.balanced_test_indices is None:
            return None
        return np.concatenate([np.asarray(ix, dtype=np.int64) for ix in self.balanced_test_indices])

    def flat_test_indices(self) -> np.ndarray | None:
        if self.test_indices is None:
            return None
        return np.concatenate([np.asarray(ix, dtype=np.int64) for ix in self.test_indices])

    def to_json(self) -> dict:
        record = asdict(self)
        record["counts"] = self.counts
        record["groups"] = self.groups
        record["total"] = sum(self.counts)
        if self.test_indices is not None:
            record["test_counts"] = [len(ix) for ix in self.test_indices]
        return record

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Split:
        record = read_json(path)
        fields = {k: record[k] for k in cls.__dataclass_fields__ if k in record}
        return cls(**fields)


def make_split(dataset: str, train_labels: Sequence[int], test_labels: Sequence[int] | None,
               num_classes: int, imbalance_factor: int, selection: str = "damed",
               n_max: int | None = None, lt_test: bool = False, test_floor: int = 1,
               many_above: int = 100, few_below: int = 20, group_preset: str = "kang",
               test_per_class: int | None = None) -> Split:
    """Build the split manifest. n_max defaults to the largest class of the balanced source.

    test_per_class caps the balanced test split at the first k images of each class in dataset
    order, and the head class of the LT test split at k (quick configs only; null = the whole
    test split, the protocol's default)."""
    train_labels = np.asarray(train_labels)
    if train_labels.size and (train_labels.min() < 0 or train_labels.max() >= num_classes):
        raise ValueError(f"{dataset}: training labels must lie in [0, {num_classes}), found "
                         f"{train_labels.min()}..{train_labels.max()}")
    available = np.bincount(train_labels, minlength=num_classes)
    if (available == 0).any():
        empty = np.flatnonzero(available == 0).tolist()
        raise ValueError(f"{dataset}: classes {empty} have no training images; every class needs "
                         "at least one")
    n_max = int(available.max() if n_max is None else n_max)  # n_max=0 must raise, not default
    counts = lt_counts(n_max, num_classes, imbalance_factor)
    notes = {}
    short = [c for c in range(num_classes) if available[c] < counts[c]]
    if short:
        notes["capped_classes"] = short  # a class with fewer images keeps all of them
    train_idx = select_indices(train_labels, counts, selection)
    test_idx = None
    if lt_test:
        if test_labels is None:
            raise ValueError("lt_test needs test labels")
        test_labels = np.asarray(test_labels)
        if test_labels.size and (test_labels.min() < 0 or test_labels.max() >= num_classes):
            raise ValueError(f"{dataset}: test labels must lie in [0, {num_classes})")
        t_max = int(np.bincount(test_labels, minlength=num_classes).max())
        if test_per_class is not None:
            t_max = min(t_max, int(test_per_class))
        raw = lt_counts(t_max, num_classes, imbalance_factor)
        t_counts = [max(n, test_floor) for n in raw]
        notes["test_clamped_classes"] = [c for c, n in enumerate(raw) if n < test_floor]
        # spec long_tail_data.md section 5: the LT test set always uses the damed procedure
        notes["test_selection"] = "damed"
        test_idx = select_indices(test_labels, t_counts, "damed")
    balanced = None
    if test_per_class is not None:
        if test_labels is None or test_per_class < 1:
            raise ValueError(f"test_per_class must be a positive integer, got {test_per_class}")
        labels = np.asarray(test_labels)
        balanced = [np.flatnonzero(labels == c)[:test_per_class].tolist() for c in range(num_classes)]
    return Split(dataset, int(imbalance_factor), selection, n_max, train_idx, test_idx,
                 many_above, few_below, group_preset, notes, balanced)


def split_digest(path: str | Path) -> str:
    return sha256_file(path)
