"""Evaluation of image sets: Protocol A training, prediction, metrics and DD-Ranking scores."""

from .evaluate import evaluate_image_set, select_lr
from .metrics import (
    balanced_top1,
    class_std,
    confusion_matrix,
    hlr,
    ior,
    lrs,
    macro_prf,
    mean_per_class,
    metrics_from_predictions,
    per_class_accuracy,
    shot_group_accuracy,
)
from .train import TrainRecipe, lr_schedule, predict, predict_logits, train_classifier

__all__ = [
    "TrainRecipe",
    "balanced_top1",
    "class_std",
    "confusion_matrix",
    "evaluate_image_set",
    "hlr",
    "ior",
    "lr_schedule",
    "lrs",
    "macro_prf",
    "mean_per_class",
    "metrics_from_predictions",
    "per_class_accuracy",
    "predict",
    "predict_logits",
    "select_lr",
    "shot_group_accuracy",
    "train_classifier",
]
