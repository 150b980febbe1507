"""Segmentation scores from a confusion matrix, as the Pascal VOC benchmark defines them.

One ``[C, C]`` matrix (rows: ground truth, columns: prediction) holds everything the scores
need, and it adds up: per-image matrices sum to the dataset's, so a Beam combiner, the report
and the tests all share these functions. Pixels labelled ``IGNORE_LABEL`` (VOC's void borders)
are left out of the matrix, so they change no score.
"""

import numpy as np

from pipeline import features


def confusion_matrix(
    labels: np.ndarray,
    predictions: np.ndarray,
    num_classes: int = features.NUM_CLASSES,
    ignore_label: int = features.IGNORE_LABEL,
) -> np.ndarray:
    """``[C, C]`` int64 pixel counts of (true class, predicted class), void pixels excluded.

    One ``bincount`` over ``true * C + predicted`` instead of a pass per class: the work is one
    read of each mask, whatever the number of classes.
    """
    if labels.shape != predictions.shape:
        raise ValueError(f"prediction shape {predictions.shape} differs from label shape {labels.shape}")
    labels = labels.astype(np.int64, copy=False).ravel()
    predictions = predictions.astype(np.int64, copy=False).ravel()
    keep = labels != ignore_label
    labels, predictions = labels[keep], predictions[keep]
    for name, values in (("label", labels), ("prediction", predictions)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"{name} class ids must be in [0, {num_classes}) or {ignore_label}")
    counts = np.bincount(labels * num_classes + predictions, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def class_iou(matrix: np.ndarray) -> np.ndarray:
    """IoU of each class: TP / (TP + FP + FN); NaN for a class absent from labels and predictions."""
    matrix = np.asarray(matrix, np.float64)
    true_positives = np.diag(matrix)
    union = matrix.sum(axis=0) + matrix.sum(axis=1) - true_positives
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, true_positives / union, np.nan)


def scores(matrix: np.ndarray) -> dict:
    """``class_iou`` (per class), ``mean_iou``, ``pixel_accuracy``, ``frequency_weighted_iou``.

    Mean IoU averages over the classes that occur in the labels or the predictions (the VOC
    devkit's and mmsegmentation's convention); a class that never occurs is neither right nor
    wrong. Frequency-weighted IoU weights each class by its share of labelled pixels.
    """
    matrix = np.asarray(matrix, np.float64)
    total = matrix.sum()
    ious = class_iou(matrix)
    present = ~np.isnan(ious)
    frequency = matrix.sum(axis=1) / total if total else np.zeros(len(matrix))
    return {
        "class_iou": ious,
        "mean_iou": float(ious[present].mean()) if present.any() else float("nan"),
        "pixel_accuracy": float(np.trace(matrix) / total) if total else float("nan"),
        "frequency_weighted_iou": float((frequency[present] * ious[present]).sum())
        if total
        else float("nan"),
    }
