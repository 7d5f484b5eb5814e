"""Hand-checkable tests of the evaluation metrics and the HLR/IOR/LRS scores."""

import json
import math

import numpy as np
import pytest

from ltdistill.evaluation import metrics as M


def test_confusion_matrix_entries():
    y_true = [0, 0, 0, 1, 1, 2]
    y_pred = [0, 1, 0, 1, 2, 0]
    cm = M.confusion_matrix(y_true, y_pred, 3)
    expected = np.array([[2, 1, 0],
                         [0, 1, 1],
                         [1, 0, 0]])
    np.testing.assert_array_equal(cm, expected)
    assert cm.dtype == np.int64


def test_confusion_matrix_rejects_bad_labels():
    with pytest.raises(ValueError, match="outside"):
        M.confusion_matrix([0, 3], [0, 1], 3)
    with pytest.raises(ValueError, match="length"):
        M.confusion_matrix([0, 1], [0], 3)


def test_confusion_matrix_accepts_tensors():
    torch = pytest.importorskip("torch")
    cm = M.confusion_matrix(torch.tensor([0, 1]), torch.tensor([1, 1]), 2)
    np.testing.assert_array_equal(cm, [[0, 1], [0, 1]])


def test_per_class_accuracy_and_top1():
    cm = M.confusion_matrix([0, 0, 0, 1, 1, 2], [0, 1, 0, 1, 2, 0], 4)  # class 3 has no images
    acc = M.per_class_accuracy(cm)
    np.testing.assert_allclose(acc[:3], [2 / 3, 1 / 2, 0.0])
    assert math.isnan(acc[3])
    assert M.balanced_top1(cm) == pytest.approx(3 / 6)
    assert M.mean_per_class(acc) == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)


def test_class_std_is_population_std_ignoring_nan():
    acc = np.array([0.0, 0.5, 1.0, np.nan])
    # mean 0.5; squared deviations 0.25, 0, 0.25 -> variance 1/6 with ddof 0
    assert M.class_std(acc) == pytest.approx(math.sqrt(1 / 6))
    assert math.isnan(M.class_std([np.nan, np.nan]))


def test_two_stage_paper_acc_std_example():
    acc = np.array([90.6, 90.4, 62.4, 51.2, 32.4, 18.2, 15.4, 11.8, 3.7, 0.3]) / 100
    assert M.mean_per_class(acc) * 100 == pytest.approx(37.64, abs=1e-9)
    assert M.class_std(acc) * 100 == pytest.approx(32.40, abs=0.005)
    assert np.std(acc * 100, ddof=1) == pytest.approx(34.16, abs=0.005)  # the convention we avoid


def test_shot_groups_empty_group_is_nan():
    acc = [0.9, 0.7, 0.2, 0.1]
    out = M.shot_group_accuracy(acc, ["many", "many", "few", "few"])
    assert out["many"] == pytest.approx(0.8)
    assert out["few"] == pytest.approx(0.15)
    assert math.isnan(out["medium"])


def test_shot_groups_unweighted_and_validated():
    acc = [1.0, 0.0, 0.5]
    out = M.shot_group_accuracy(acc, ["many", "medium", "medium"])
    assert out["medium"] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="unknown shot group"):
        M.shot_group_accuracy(acc, ["many", "mid", "few"])
    with pytest.raises(ValueError, match="entries"):
        M.shot_group_accuracy(acc, ["many"])


def test_damed_supplement_all_class_zero_example():
    counts = [1000, 555, 308, 170, 94, 52, 29, 16, 9, 5]
    y_true = np.repeat(np.arange(10), counts)
    assert y_true.size == 2238
    y_pred = np.zeros_like(y_true)
    groups = ["many"] * 4 + ["medium"] * 3 + ["few"] * 3
    m = M.metrics_from_predictions(y_true, y_pred, 10, groups)
    assert m["top1"] == pytest.approx(1000 / 2238)
    assert m["macro_precision"] == pytest.approx((1000 / 2238) / 10)
    assert round(m["macro_precision"], 4) == 0.0447
    assert m["macro_recall"] == pytest.approx(0.10)
    p0 = 1000 / 2238
    assert m["macro_f1"] == pytest.approx(2 * p0 / (1 + p0) / 10)
    assert round(m["macro_f1"], 4) == 0.0618
    assert m["mean_per_class"] == pytest.approx(0.10)  # macro recall = mean per-class accuracy
    assert m["shot"]["many"] == pytest.approx(0.25)
    assert m["shot"]["few"] == 0.0
    assert m["head_tail_gap"] == pytest.approx(0.25)
    assert m["confusion_matrix"][0][0] == 1000 and m["confusion_matrix"][9][0] == 5
    json.dumps(M.json_ready(m), allow_nan=False)


def test_macro_prf_zero_division_and_sklearn_agreement():
    y_true = [0, 0, 1, 1, 2, 2]
    y_pred = [0, 1, 1, 1, 0, 0]  # class 2 never predicted
    cm = M.confusion_matrix(y_true, y_pred, 3)
    p, r, f = M.per_class_prf(cm)
    np.testing.assert_allclose(p, [1 / 3, 2 / 3, 0.0])
    np.testing.assert_allclose(r, [1 / 2, 1.0, 0.0])
    np.testing.assert_allclose(f, [2 * (1 / 3) * 0.5 / (1 / 3 + 0.5), 0.8, 0.0])
    macro = M.macro_prf(cm)
    sk = pytest.importorskip("sklearn.metrics")
    sp, sr, sf, _ = sk.precision_recall_fscore_support(y_true, y_pred, labels=[0, 1, 2],
                                                       average="macro", zero_division=0)
    assert (macro["precision"], macro["recall"], macro["f1"]) == pytest.approx((sp, sr, sf))


def test_metrics_json_ready_replaces_nan():
    m = M.metrics_from_predictions([0, 0], [0, 1], 3, ["many", "few", "few"])
    ready = M.json_ready(m)
    assert ready["per_class"] == [0.5, None, None]
    assert ready["shot"]["medium"] is None
    json.dumps(ready, allow_nan=False)


def test_hlr_ior_lrs_values():
    assert M.hlr(0.8, 0.3) == pytest.approx(0.5)
    assert M.ior(0.45, 0.30) == pytest.approx(0.15)
    e = math.e
    assert M.lrs(0.0, 0.0) == pytest.approx((1 - math.exp(-1)) / (e - math.exp(-1)))
    # alpha = 0.5 * 0.15 - 0.5 * 0.5 = -0.175
    assert M.lrs(0.5, 0.15) == pytest.approx((math.exp(-0.175) - math.exp(-1)) / (e - math.exp(-1)))
    assert M.lrs(-1.0, 1.0) == pytest.approx(1.0)  # alpha = 1
    assert M.lrs(1.0, -1.0) == pytest.approx(0.0)  # alpha = -1
    assert M.lrs(0.2, 0.0, w=1.0) == pytest.approx(M.lrs(0.0, 0.0))  # HLR ignored when w = 1


def test_scores_reject_percentages():
    with pytest.raises(ValueError, match="percentage"):
        M.hlr(80.0, 30.0)
    with pytest.raises(ValueError, match="percentage"):
        M.ior(0.4, 35.0)
    with pytest.raises(ValueError, match="percentage"):
        M.lrs(52.0, -47.0)
    with pytest.raises(ValueError):
        M.hlr(-0.1, 0.2)


def test_ars_and_ior_per_group():
    # beta = 0.5 * (0.5 - 0.4) + 0.5 * (0.3 - 0.3) = 0.05
    expected = (math.exp(0.05) - math.exp(-1)) / (math.e - math.exp(-1))
    assert M.ars(0.5, 0.4, 0.3, 0.3) == pytest.approx(expected)
    out = M.ior_per_group({"many": 0.6, "medium": 0.4, "few": float("nan")},
                          {"many": 0.5, "medium": 0.5, "few": 0.1})
    assert out["many"] == pytest.approx(0.1) and out["medium"] == pytest.approx(-0.1)
    assert math.isnan(out["few"])
