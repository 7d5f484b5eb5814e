"""Long-tailed split tests against the hand-computed tables of long_tail_data.md sections 3-5.

Run: .venv/bin/python -m pytest tests/unit/test_long_tail.py -q   (about a second, CPU only)
"""

from __future__ import annotations

import numpy as np
import pytest

from ltdistill.data.long_tail import Split, lt_counts, make_split, select_indices, shot_groups

IFS = (10, 20, 50, 100, 200)

# --- section 4.1: CIFAR-10-LT, every row ------------------------------------------------------
CIFAR10_LT = {
    10: [5000, 3871, 2997, 2320, 1796, 1391, 1077, 834, 645, 500],
    20: [5000, 3584, 2569, 1842, 1320, 946, 678, 486, 348, 250],
    50: [5000, 3237, 2096, 1357, 878, 568, 368, 238, 154, 100],
    100: [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50],
    200: [5000, 2775, 1540, 854, 474, 263, 146, 81, 45, 25],
}
CIFAR10_TOTALS = {10: 20431, 20: 17023, 50: 13996, 100: 12406, 200: 11203}
CIFAR100_TOTALS = {10: 19573, 20: 15907, 50: 12608, 100: 10847, 200: 9502}
TINY_TOTALS = {10: 39072, 20: 31711, 50: 25082, 100: 21549, 200: 18836}

# (imbalance factor, first class of the row) -> the spec's row of ten (CIFAR-100) or twenty (Tiny)
CIFAR100_ROWS = {
    (10, 0): [500, 488, 477, 466, 455, 445, 434, 424, 415, 405],
    (20, 90): [32, 31, 30, 29, 29, 28, 27, 26, 25, 25],
    (50, 70): [31, 30, 29, 27, 26, 25, 24, 23, 22, 22],
    (100, 0): [500, 477, 455, 434, 415, 396, 378, 361, 344, 328],
    (100, 90): [7, 7, 6, 6, 6, 6, 5, 5, 5, 5],
    (200, 40): [58, 55, 52, 50, 47, 44, 42, 40, 38, 36],
    (200, 90): [4, 3, 3, 3, 3, 3, 2, 2, 2, 2],
}
TINY_ROWS = {
    (10, 180): [62, 61, 60, 60, 59, 58, 58, 57, 56, 56, 55, 54, 54, 53, 52, 52, 51, 51, 50, 50],
    (100, 100): [49, 48, 47, 46, 45, 44, 43, 42, 41, 40, 39, 38, 37, 36, 35, 34, 34, 33, 32, 31],
    (200, 0): [500, 486, 474, 461, 449, 437, 426, 414, 404, 393, 383, 373, 363, 353, 344, 335,
               326, 317, 309, 301],
}

# --- section 4.4: (classes, n_max, IF) -> Kang many/medium/few, OLTR many/medium/few -----------
SHOT_GROUPS = {
    (10, 5000, 50): ((9, 1, 0), (10, 0, 0)),
    (10, 5000, 100): ((8, 2, 0), (8, 2, 0)),
    (10, 5000, 200): ((7, 3, 0), (7, 3, 0)),
    (100, 500, 10): ((69, 31, 0), (70, 30, 0)),
    (100, 500, 50): ((41, 41, 18), (41, 40, 19)),
    (100, 500, 100): ((35, 35, 30), (35, 34, 31)),
    (100, 500, 200): ((30, 31, 39), (31, 29, 40)),
    (200, 500, 20): ((107, 93, 0), (107, 93, 0)),
    (200, 500, 50): ((82, 82, 36), (82, 80, 38)),
    (200, 500, 100): ((70, 70, 60), (70, 67, 63)),
    (200, 500, 200): ((61, 60, 79), (61, 59, 80)),
}

# --- section 5: CIFAR-10 LT test counts (n_max_test = 1000) -----------------------------------
CIFAR10_LT_TEST = {
    10: [1000, 774, 599, 464, 359, 278, 215, 166, 129, 100],
    20: [1000, 716, 513, 368, 264, 189, 135, 97, 69, 50],
    50: [1000, 647, 419, 271, 175, 113, 73, 47, 30, 20],
    100: [1000, 599, 359, 215, 129, 77, 46, 27, 16, 10],
    200: [1000, 555, 308, 170, 94, 52, 29, 16, 9, 5],
}
CIFAR10_LT_TEST_TOTALS = {10: 4084, 20: 3401, 50: 2795, 100: 2478, 200: 2238}


def balanced_labels(num_classes: int, per_class: int, interleaved: bool = True) -> np.ndarray:
    """Labels of a balanced dataset; interleaved so class positions differ from dataset indices."""
    if interleaved:
        return np.tile(np.arange(num_classes), per_class)
    return np.repeat(np.arange(num_classes), per_class)


# ----------------------------------------------------------------------------------------------
# counts


@pytest.mark.parametrize("imb", IFS)
def test_cifar10_lt_counts_every_row(imb):
    counts = lt_counts(5000, 10, imb)
    assert counts == CIFAR10_LT[imb]
    assert sum(counts) == CIFAR10_TOTALS[imb]


@pytest.mark.parametrize("imb", IFS)
def test_cifar100_and_tiny_totals(imb):
    c100, tiny = lt_counts(500, 100, imb), lt_counts(500, 200, imb)
    assert sum(c100) == CIFAR100_TOTALS[imb]
    assert sum(tiny) == TINY_TOTALS[imb]
    # head is n_max, tail is n_max / IF (an exact integer for these IFs)
    assert c100[0] == tiny[0] == 500 and c100[-1] == tiny[-1] == 500 // imb


@pytest.mark.parametrize(("key", "row"), list(CIFAR100_ROWS.items()))
def test_cifar100_rows(key, row):
    imb, start = key
    assert lt_counts(500, 100, imb)[start:start + 10] == row


@pytest.mark.parametrize(("key", "row"), list(TINY_ROWS.items()))
def test_tiny_rows(key, row):
    imb, start = key
    assert lt_counts(500, 200, imb)[start:start + 20] == row


@pytest.mark.parametrize("imb", IFS)
def test_equivalent_spellings_of_the_profile(imb):
    """Section 2: IF^(-c/(C-1)), 1/IF^(c/(C-1)) and the DAMED float imbalance_rate agree."""
    for n_max, classes in ((5000, 10), (500, 100), (500, 200)):
        ours = lt_counts(n_max, classes, imb)
        a = [int(n_max * imb ** (-c / (classes - 1))) for c in range(classes)]
        b = [int(n_max / imb ** (c / (classes - 1))) for c in range(classes)]
        rate = {10: 0.1, 20: 0.05, 50: 0.02, 100: 0.01, 200: 0.005}[imb]
        d = [int(n_max * rate ** (c / (classes - 1))) for c in range(classes)]
        assert ours == a == b == d


def test_imagenet_exp_nominal_totals():
    assert sum(lt_counts(1281, 1000, 5)) == 636370
    assert sum(lt_counts(1281, 1000, 10)) == 500399


def test_counts_if_one_and_bad_arguments():
    assert lt_counts(7, 4, 1) == [7, 7, 7, 7]
    for bad_if in (0, -3, 0.5, 2.5):
        with pytest.raises(ValueError, match="imbalance_factor"):
            lt_counts(100, 10, bad_if)
    for bad_n in (0, -1):
        with pytest.raises(ValueError, match="n_max"):
            lt_counts(bad_n, 10, 10)


# ----------------------------------------------------------------------------------------------
# shot groups


@pytest.mark.parametrize(("key", "expected"), list(SHOT_GROUPS.items()))
def test_shot_group_sizes(key, expected):
    classes, n_max, imb = key
    counts = lt_counts(n_max, classes, imb)
    for preset, sizes in zip(("kang", "oltr"), expected, strict=True):
        groups = shot_groups(counts, preset=preset)
        assert (groups.count("many"), groups.count("medium"), groups.count("few")) == sizes


def test_shot_group_boundaries():
    counts = [101, 100, 21, 20, 19]
    assert shot_groups(counts) == ["many", "medium", "medium", "medium", "few"]
    assert shot_groups(counts, preset="oltr") == ["many", "many", "medium", "few", "few"]
    with pytest.raises(ValueError, match="Known presets"):
        shot_groups(counts, preset="nope")


# ----------------------------------------------------------------------------------------------
# LT test counts (section 5)


@pytest.mark.parametrize("imb", IFS)
def test_cifar10_lt_test_counts(imb):
    counts = lt_counts(1000, 10, imb)
    assert counts == CIFAR10_LT_TEST[imb]
    assert sum(counts) == CIFAR10_LT_TEST_TOTALS[imb]


def test_cifar100_if200_test_clamp_through_make_split():
    train = balanced_labels(100, 500)
    test = balanced_labels(100, 100)
    raw = lt_counts(100, 100, 200)
    assert sum(raw) == 1862 and raw.count(0) == 13
    split = make_split("cifar100", train, test, 100, 200, lt_test=True, test_floor=1)
    test_counts = [len(ix) for ix in split.test_indices]
    assert sum(test_counts) == 1875
    assert min(test_counts) == 1
    assert len(split.notes["test_clamped_classes"]) == 13
    assert split.notes["test_clamped_classes"] == [c for c, n in enumerate(raw) if n == 0]
    # test indices are test-set indices of the right class
    flat = split.flat_test_indices()
    assert len(set(flat.tolist())) == len(flat) and flat.max() < len(test)


def test_tiny_test_clamp_totals():
    for imb, raw_total, zeros, clamped in ((100, 2063, 30, 2093), (200, 1793, 53, 1846)):
        raw = lt_counts(50, 200, imb)
        assert (sum(raw), raw.count(0)) == (raw_total, zeros)
        assert sum(lt_counts(50, 200, imb, floor=1)) == clamped


def test_lt_test_uses_damed_even_for_ldam_training():
    train, test = balanced_labels(10, 50), balanced_labels(10, 20)
    split = make_split("toy", train, test, 10, 10, selection="ldam", lt_test=True)
    expected = select_indices(test, lt_counts(20, 10, 10, floor=1), "damed")
    assert split.test_indices == expected
    assert split.notes["test_selection"] == "damed"


def test_test_per_class_caps_both_test_splits():
    train, test = balanced_labels(10, 50), balanced_labels(10, 20)
    split = make_split("toy", train, test, 10, 10, lt_test=True, test_per_class=5)
    assert [len(ix) for ix in split.balanced_test_indices] == [5] * 10
    # the LT test profile starts from 5 instead of 20: 5 * 10^(-c/9), floored at 1
    assert [len(ix) for ix in split.test_indices] == lt_counts(5, 10, 10, floor=1)
    assert [len(ix) for ix in split.test_indices][:2] == [5, 3]


# ----------------------------------------------------------------------------------------------
# damed selection (section 3.1)


def test_damed_is_prefix_of_randomstate42_permutation_within_class():
    labels = balanced_labels(10, 300)
    counts = lt_counts(300, 10, 100)
    kept = select_indices(labels, counts, "damed")
    for c, n in enumerate(counts):
        positions = np.flatnonzero(labels == c)
        perm = np.random.RandomState(42).permutation(len(positions))
        assert kept[c] == positions[perm[:n]].tolist()


def test_damed_nested_across_ifs():
    labels = balanced_labels(10, 400)
    by_if = {imb: select_indices(labels, lt_counts(400, 10, imb), "damed") for imb in IFS}
    for lo, hi in zip(IFS, IFS[1:], strict=False):
        for c in range(10):
            assert by_if[hi][c] == by_if[lo][c][:len(by_if[hi][c])]


def test_damed_classes_independent():
    """Class 1's selection does not change when class 0 loses images or changes its count, and
    classes of equal size keep the same within-class positions."""
    labels = balanced_labels(3, 100, interleaved=False)
    base = select_indices(labels, [80, 40, 40], "damed")
    # same within-class positions for classes 1 and 2 (equal size, equal count)
    assert [i - 100 for i in base[1]] == [i - 200 for i in base[2]]
    fewer = np.concatenate([np.zeros(30, dtype=int), np.full(100, 1), np.full(100, 2)])
    other = select_indices(fewer, [10, 40, 40], "damed")
    assert [i - 30 for i in other[1]] == [i - 100 for i in base[1]]


def test_damed_keeps_all_of_a_short_class():
    labels = np.array([0] * 10 + [1] * 3)
    kept = select_indices(labels, [5, 8], "damed")
    assert len(kept[0]) == 5 and sorted(kept[1]) == [10, 11, 12]


# ----------------------------------------------------------------------------------------------
# ldam selection (section 3.2)


def _ldam_reference(labels: np.ndarray, counts: list[int]) -> list[list[int]]:
    """LDAM-DRW: seed the global legacy RNG with 0 once, shuffle each class's ascending indices."""
    state = np.random.get_state()
    try:
        np.random.seed(0)
        out = []
        for c, n in enumerate(counts):
            idx = np.where(labels == c)[0]
            np.random.shuffle(idx)
            out.append(idx[:n].tolist())
        return out
    finally:
        np.random.set_state(state)


def test_ldam_matches_global_stream_reference():
    labels = balanced_labels(10, 200)
    counts = lt_counts(200, 10, 50)
    assert select_indices(labels, counts, "ldam") == _ldam_reference(labels, counts)


def test_ldam_shared_stream_depends_on_earlier_classes():
    base = np.repeat(np.arange(3), 100)
    shrunk = np.concatenate([np.zeros(60, dtype=int), np.full(100, 1), np.full(100, 2)])
    a = select_indices(base, [50, 50, 50], "ldam")
    b = select_indices(shrunk, [50, 50, 50], "ldam")
    # class 1 has the same 100 images at shifted indices, but its draw differs because class 0
    # consumed a different amount of the shared stream
    assert [i - 100 for i in a[1]] != [i - 60 for i in b[1]]
    # damed is unaffected by the same change
    da = select_indices(base, [50, 50, 50], "damed")
    db = select_indices(shrunk, [50, 50, 50], "damed")
    assert [i - 100 for i in da[1]] == [i - 60 for i in db[1]]


def test_ldam_does_not_touch_the_global_rng():
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    select_indices(balanced_labels(4, 10), [10, 5, 3, 1], "ldam")
    assert np.random.rand() == expected


# ----------------------------------------------------------------------------------------------
# common properties


@pytest.mark.parametrize("selection", ["damed", "ldam"])
def test_indices_disjoint_in_range_right_class_and_deterministic(selection):
    labels = balanced_labels(20, 150)
    counts = lt_counts(150, 20, 20)
    kept = select_indices(labels, counts, selection)
    flat = [i for ix in kept for i in ix]
    assert len(flat) == len(set(flat)) == sum(counts)
    assert min(flat) >= 0 and max(flat) < len(labels)
    for c, ix in enumerate(kept):
        assert len(ix) == counts[c] and all(labels[i] == c for i in ix)
    assert select_indices(labels, counts, selection) == kept


def test_select_indices_rejects_bad_input():
    with pytest.raises(ValueError, match="Known selections"):
        select_indices([0, 1], [1, 1], "random")
    with pytest.raises(ValueError, match="labels must lie"):
        select_indices([0, 1, 2], [1, 1], "damed")
    with pytest.raises(ValueError, match=">= 0"):
        select_indices([0, 1], [1, -1], "damed")


# ----------------------------------------------------------------------------------------------
# make_split and the manifest


def test_make_split_counts_and_groups():
    split = make_split("cifar10", balanced_labels(10, 5000), None, 10, 100)
    assert split.counts == CIFAR10_LT[100]
    assert split.n_max == 5000 and split.test_indices is None
    assert split.groups == ["many"] * 8 + ["medium"] * 2


def test_make_split_if_one_keeps_everything():
    labels = balanced_labels(5, 40)
    split = make_split("toy", labels, None, 5, 1)
    assert sorted(split.flat_train_indices().tolist()) == list(range(len(labels)))


def test_make_split_explicit_n_max_and_capped_classes():
    labels = np.array([0] * 50 + [1] * 10 + [2] * 50)
    split = make_split("toy", labels, None, 3, 2, n_max=40)
    assert split.counts == [40, 10, 20]  # class 1 wants int(40 / sqrt 2) = 28 but has 10
    assert split.notes["capped_classes"] == [1]


@pytest.mark.parametrize("bad_if", [0, -1])
def test_make_split_rejects_if_below_one(bad_if):
    with pytest.raises(ValueError, match="imbalance_factor"):
        make_split("toy", balanced_labels(3, 10), None, 3, bad_if)


@pytest.mark.parametrize("bad_n", [0, -5])
def test_make_split_rejects_n_max_below_one(bad_n):
    with pytest.raises(ValueError, match="n_max"):
        make_split("toy", balanced_labels(3, 10), None, 3, 10, n_max=bad_n)


def test_make_split_empty_class_raises_clearly():
    labels = np.array([0] * 10 + [2] * 10)
    with pytest.raises(ValueError, match=r"classes \[1\] have no training images"):
        make_split("toy", labels, None, 3, 10)


def test_make_split_label_out_of_range_raises():
    with pytest.raises(ValueError, match="training labels must lie"):
        make_split("toy", np.array([0, 1, 2, 3]), None, 3, 10)


def test_make_split_lt_test_needs_test_labels():
    with pytest.raises(ValueError, match="test labels"):
        make_split("toy", balanced_labels(3, 10), None, 3, 2, lt_test=True)


@pytest.mark.parametrize("selection", ["damed", "ldam"])
def test_split_save_load_round_trip(tmp_path, selection):
    split = make_split("cifar10", balanced_labels(10, 100), balanced_labels(10, 20), 10, 50,
                       selection=selection, lt_test=True, group_preset="oltr")
    path = tmp_path / "splits" / "split.json"
    split.save(path)
    again = Split.load(path)
    assert again == split
    assert again.counts == split.counts and again.groups == split.groups
    assert np.array_equal(again.flat_train_indices(), split.flat_train_indices())
    assert np.array_equal(again.flat_test_indices(), split.flat_test_indices())
