"""Evaluation metrics as pure numpy functions: confusion matrix, per-class and shot-group
accuracy, macro precision/recall/F1, and the DD-Ranking-style HLR/IOR/LRS scores (fractions)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

GROUP_NAMES = ("many", "medium", "few")


def _as_int_array(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.equal(np.mod(arr, 1), 0)):
            raise ValueError(f"{name} must hold integer class indices")
    return arr.astype(np.int64)


def confusion_matrix(y_true: Any, y_pred: Any, num_classes: int) -> np.ndarray:
    """C x C int64 counts; rows are true classes, columns predicted classes."""
    t = _as_int_array(y_true, "y_true")
    p = _as_int_array(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length ({t.size} vs {p.size})")
    for name, a in (("y_true", t), ("y_pred", p)):
        if a.size and (a.min() < 0 or a.max() >= num_classes):
            raise ValueError(f"{name} holds labels outside [0, {num_classes})")
    flat = np.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes).astype(np.int64)


def _check_cm(cm: Any) -> np.ndarray:
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {cm.shape}")
    return cm.astype(np.float64)


def per_class_accuracy(cm: Any) -> np.ndarray:
    """a_c = correct_c / N_test,c (the recall of class c); NaN for a class with no test images."""
    cm = _check_cm(cm)
    support = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.diag(cm) / support
    acc[support == 0] = np.nan
    return acc


def balanced_top1(cm: Any) -> float:
    """Plain (micro) top-1 accuracy: trace / total. On a balanced test set this equals the mean
    per-class accuracy. NaN for an empty matrix."""
    cm = _check_cm(cm)
    total = cm.sum()
    return float(np.trace(cm) / total) if total > 0 else math.nan


def mean_per_class(acc: Any) -> float:
    """Unweighted mean of the class accuracies, ignoring classes without test images (NaN)."""
    acc = np.asarray(acc, dtype=np.float64)
    valid = acc[~np.isnan(acc)]
    return float(valid.mean()) if valid.size else math.nan


def class_std(acc: Any) -> float:
    """Population standard deviation (ddof = 0) of the class accuracies, ignoring NaN."""
    acc = np.asarray(acc, dtype=np.float64)
    valid = acc[~np.isnan(acc)]
    return float(valid.std(ddof=0)) if valid.size else math.nan


def shot_group_accuracy(acc: Any, groups: Sequence[str]) -> dict[str, float]:
    """{many, medium, few}: the unweighted mean of the class accuracies in each group (classes
    assigned by their LT training count). An empty group, or one whose classes have no test
    images, gives NaN, never 0."""
    acc = np.asarray(acc, dtype=np.float64)
    groups = list(groups)
    if len(groups) != acc.size:
        raise ValueError(f"groups has {len(groups)} entries but there are {acc.size} classes")
    unknown = sorted(set(groups) - set(GROUP_NAMES))
    if unknown:
        raise ValueError(f"unknown shot group(s) {unknown}; expected one of {GROUP_NAMES}")
    out = {}
    for g in GROUP_NAMES:
        members = acc[[i for i, name in enumerate(groups) if name == g]]
        out[g] = mean_per_class(members)
    return out


def per_class_prf(cm: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class precision, recall and F1 with zero_division = 0: a class never predicted has
    precision 0, a class absent from y_true has recall 0, and F1 = 0 when P + R = 0."""
    cm = _check_cm(cm)
    tp = np.diag(cm)
    predicted = cm.sum(axis=0)
    support = cm.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return precision, recall, f1


def macro_prf(cm: Any) -> dict[str, float]:
    """Macro precision / recall / F1 over all C classes (zero_division = 0), as fractions. This
    matches sklearn's precision_recall_fscore_support(average='macro', zero_division=0,
    labels=range(C))."""
    p, r, f = per_class_prf(cm)
    return {"precision": float(p.mean()), "recall": float(r.mean()), "f1": float(f.mean())}


def _nan_to_none(values: np.ndarray) -> list[float | None]:
    return [None if math.isnan(v) else float(v) for v in values]


def metrics_from_predictions(y_true: Any, y_pred: Any, num_classes: int,
                             groups: Sequence[str] | None = None) -> dict[str, Any]:
    """Every metric of evaluation_protocol.md §5 from one confusion matrix, as fractions in
    [0, 1]. Keys: num_images, top1, mean_per_class, per_class (class accuracies), class_std,
    worst_class, macro_precision/recall/f1, shot ({many, medium, few} or None without groups),
    head_tail_gap (many - few), confusion_matrix (rows true). Undefined values (class or group
    without test images) are NaN floats in the scalar fields and None in per_class;
    `json_ready` converts the rest."""
    cm = confusion_matrix(y_true, y_pred, num_classes)
    acc = per_class_accuracy(cm)
    prf = macro_prf(cm)
    shot = shot_group_accuracy(acc, groups) if groups is not None else None
    valid = acc[~np.isnan(acc)]
    out: dict[str, Any] = {
        "num_images": int(cm.sum()),
        "top1": balanced_top1(cm),
        "mean_per_class": mean_per_class(acc),
        "per_class": _nan_to_none(acc),
        "class_std": class_std(acc),
        "worst_class": float(valid.min()) if valid.size else math.nan,
        "macro_precision": prf["precision"],
        "macro_recall": prf["recall"],
        "macro_f1": prf["f1"],
        "shot": shot,
        "head_tail_gap": (shot["many"] - shot["few"]) if shot is not None else math.nan,
        "confusion_matrix": cm.tolist(),
    }
    return out


def json_ready(obj: Any) -> Any:
    """Recursively replace NaN/inf floats by None and numpy scalars by Python ones, so the result
    is strict JSON (readers such as pandas turn null back into NaN)."""
    if isinstance(obj, dict):
        return {k: json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_ready(obj.tolist())
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    return obj


# --- DD-Ranking-style scores (evaluation_protocol.md §7), all on fractions -----------------------

def _check_accuracy(value: float, name: str) -> float:
    v = float(value)
    if math.isnan(v):
        raise ValueError(f"{name} is NaN")
    if v > 1.0 or v < 0.0:
        hint = " (it looks like a percentage; pass a fraction in [0, 1])" if v > 1.0 else ""
        raise ValueError(f"{name} = {v} is not an accuracy fraction in [0, 1]{hint}")
    return v


def _check_difference(value: float, name: str) -> float:
    v = float(value)
    if math.isnan(v):
        raise ValueError(f"{name} is NaN")
    if abs(v) > 1.0:
        raise ValueError(f"{name} = {v} lies outside [-1, 1]; it looks like percentage points. "
                         "HLR and IOR must be differences of accuracy fractions")
    return v


def hlr(acc_full: float, acc_syn_hard: float) -> float:
    """Hard-label recovery: Acc(full LT data, hard labels) - Acc(synthetic set, hard labels).
    Lower is better."""
    return _check_accuracy(acc_full, "acc_full") - _check_accuracy(acc_syn_hard, "acc_syn_hard")


def ior(acc_syn: float, acc_random: float) -> float:
    """Improvement over random: Acc(synthetic set) - Acc(random LT subset, same recipe).
    Higher is better."""
    return _check_accuracy(acc_syn, "acc_syn") - _check_accuracy(acc_random, "acc_random")


def _normalise_score(alpha: float) -> float:
    """(e^a - e^-1) / (e - e^-1): maps a in [-1, 1] onto [0, 1]."""
    return (math.exp(alpha) - math.exp(-1.0)) / (math.e - math.exp(-1.0))


def lrs(hlr_value: float, ior_value: float, w: float = 0.5) -> float:
    """Label-robust score: alpha = w * IOR - (1 - w) * HLR, LRS = (e^alpha - e^-1)/(e - e^-1)."""
    if not 0.0 <= w <= 1.0:
        raise ValueError(f"w must lie in [0, 1], got {w}")
    h = _check_difference(hlr_value, "hlr")
    i = _check_difference(ior_value, "ior")
    return _normalise_score(w * i - (1.0 - w) * h)


def ars(syn_aug: float, rnd_aug: float, syn_noaug: float, rnd_noaug: float,
        gamma: float = 0.5) -> float:
    """Augmentation-robust score: beta = gamma (syn_aug - rnd_aug) + (1 - gamma)(syn_noaug -
    rnd_noaug), normalised like LRS."""
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must lie in [0, 1], got {gamma}")
    beta = gamma * ior(syn_aug, rnd_aug) + (1.0 - gamma) * ior(syn_noaug, rnd_noaug)
    return _normalise_score(beta)


def ior_per_group(syn_groups: dict[str, float],
                  random_groups: dict[str, float]) -> dict[str, float]:
    """IOR per shot group from two shot_group_accuracy dicts; NaN where a group is empty."""
    out = {}
    for g in GROUP_NAMES:
        s, r = syn_groups.get(g), random_groups.get(g)
        if s is None or r is None or math.isnan(s) or math.isnan(r):
            out[g] = math.nan
        else:
            out[g] = ior(s, r)
    return out
