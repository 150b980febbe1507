"""Segmentation scores from a confusion matrix, as the Pascal VOC benchmark defines them.

One ``[C, C]`` matrix (rows: ground truth, columns: prediction) holds everything the scores
need, and it adds up: per-image matrices sum to the dataset's, so a Beam combiner, the report
and the tests all share these functions. Pixels labelled ``IGNORE_LABEL`` (VOC's void borders)
are left out of the matrix, so they change no score.
"""

import numpy as np

from core import features, metrics


def confusion_matrix(
    labels: np.ndarray,
    predictions: np.ndarray,
    num_classes: int,
    ignore_label: int = features.IGNORE_LABEL,
) -> np.ndarray:
    """``[C, C]`` int64 pixel counts of (true class, predicted class), void pixels excluded.

    ``num_classes`` (C) is the dataset spec's, and has no default: a default could only be one
    dataset's, and would size every other dataset's matrix wrong without a word.

    One ``bincount`` of ``true << 8 | predicted`` over uint16 codes gives every (true,
    predicted) pair of byte values at once: no pass per class, no boolean masking, and ids
    outside the classes show up as counts outside the ``[C, C]`` corner, so checking them is
    free. 2x faster than masking void pixels out first and binning ``true * C + predicted``.
    """
    if labels.shape != predictions.shape:
        raise ValueError(f"prediction shape {predictions.shape} differs from label shape {labels.shape}")
    labels, predictions = _as_bytes(labels, "label"), _as_bytes(predictions, "prediction")
    codes = labels.astype(np.uint16) << 8
    codes |= predictions
    pairs = np.bincount(codes.ravel(), minlength=1 << 16).reshape(256, 256)
    pairs[ignore_label] = 0  # void ground truth: whatever was predicted there does not count
    matrix = pairs[:num_classes, :num_classes]
    if matrix.sum() != pairs.sum():
        raise ValueError(f"label and prediction class ids must be in [0, {num_classes}) or {ignore_label}")
    return matrix.astype(np.int64)


def _as_bytes(ids: np.ndarray, name: str) -> np.ndarray:
    if ids.dtype == np.uint8:
        return ids
    if ids.size and (ids.min() < 0 or ids.max() > 255):
        raise ValueError(f"{name} class ids must be in [0, 255]")
    return ids.astype(np.uint8)


def scores(matrix: np.ndarray) -> dict:
    """``class_iou`` (per class), ``mean_iou``, ``pixel_accuracy``, ``frequency_weighted_iou``.

    Mean IoU averages over the classes that occur in the labels or the predictions (the VOC
    devkit's and mmsegmentation's convention); a class that never occurs is neither right nor
    wrong. Frequency-weighted IoU weights each class by its share of labelled pixels.
    """
    matrix = np.asarray(matrix, np.float64)
    total = matrix.sum()
    ious = metrics.class_iou(matrix)
    present = ~np.isnan(ious)
    frequency = matrix.sum(axis=1) / total if total else np.zeros(len(matrix))
    return {
        metrics.CLASS_IOU: ious,
        metrics.MEAN_IOU: float(ious[present].mean()) if present.any() else float("nan"),
        metrics.PIXEL_ACCURACY: float(np.trace(matrix) / total) if total else float("nan"),
        metrics.FREQUENCY_WEIGHTED_IOU: float((frequency[present] * ious[present]).sum())
        if total
        else float("nan"),
    }
