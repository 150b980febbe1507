"""Independent numpy references for the segmentation scores, written the VOC devkit's way.

Per class, with boolean masks over the non-void pixels, so they share no code (and no
``bincount`` trick) with ``evaluation.iou``, which they check.
"""

import numpy as np

from pipeline import features
from pipeline.dataset_spec import VOC_SPEC


def class_counts(pairs, n: int = VOC_SPEC.num_classes) -> tuple:
    """``(tp, fp, fn, labelled)`` per class of ``n``, summed over ``(truth, prediction)`` image pairs."""
    tp, fp, fn, labelled = (np.zeros(n, np.int64) for _ in range(4))
    for truth, prediction in pairs:
        valid = truth != features.IGNORE_LABEL
        for c in range(n):
            is_truth, is_pred = (truth == c) & valid, (prediction == c) & valid
            tp[c] += np.sum(is_truth & is_pred)
            fp[c] += np.sum(~is_truth & is_pred)
            fn[c] += np.sum(is_truth & ~is_pred)
            labelled[c] += np.sum(is_truth)
    return tp, fp, fn, labelled


def scores(pairs, n: int = VOC_SPEC.num_classes) -> dict:
    """Per-class IoU (NaN where a class occurs nowhere), mean IoU, pixel accuracy, fw-IoU."""
    tp, fp, fn, labelled = class_counts(pairs, n)
    union = tp + fp + fn
    class_iou = np.full(len(tp), np.nan)
    class_iou[union > 0] = tp[union > 0] / union[union > 0]
    present = union > 0
    return {
        "class_iou": class_iou,
        "mean_iou": float(np.mean(class_iou[present])),
        "pixel_accuracy": float(tp.sum() / labelled.sum()),
        "frequency_weighted_iou": float(np.sum(labelled[present] / labelled.sum() * class_iou[present])),
    }
