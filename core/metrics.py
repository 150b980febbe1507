"""Metric names shared by the Keras training history, TFMA's metrics and the run report, and
the per-class IoU of a confusion matrix, which the Evaluator and the Trainer's TensorBoard
summaries both compute."""

import numpy as np

MEAN_IOU = "mean_iou"
PIXEL_ACCURACY = "pixel_accuracy"
FREQUENCY_WEIGHTED_IOU = "frequency_weighted_iou"
CLASS_IOU = "class_iou"  # one value per class
CONFUSION_MATRIX = "confusion_matrix"
# The Evaluator's per-class guard, one metric per class, named ``class_iou_guard/<class name>``
# (evaluation/tfma_metrics.py, SegmentationClassIoUGuard).
CLASS_IOU_GUARD = "class_iou_guard"
# Keras names a metric of the validation data with this prefix in ``fit``'s history.
VALIDATION_PREFIX = "val_"
VAL_MEAN_IOU = VALIDATION_PREFIX + MEAN_IOU


def class_iou(matrix: np.ndarray) -> np.ndarray:
    """IoU of each class of a ``[C, C]`` confusion matrix (rows: truth): TP / (TP + FP + FN);
    NaN for a class absent from labels and predictions."""
    matrix = np.asarray(matrix, np.float64)
    true_positives = np.diag(matrix)
    union = matrix.sum(axis=0) + matrix.sum(axis=1) - true_positives
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, true_positives / union, np.nan)
