"""Independent numpy references for the segmentation scores, written the VOC devkit's way.

Per class, with boolean masks over the non-void pixels, so they share no code (and no
``bincount`` trick) with ``evaluation.iou``, which they check.
"""

import numpy as np

from core import features
from core.dataset_spec import VOC_SPEC


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


# Sums in another order (a graph's fused kernels against eager ops, one CPU's kernels against
# another's) move a logit by about 1e-6: two computations of the same masks may then disagree
# only where the two most probable classes are that close.
NEAR_TIE = 1e-4


def assert_same_masks_but_near_ties(got_ids, expected_ids, expected_probabilities, tie: float = NEAR_TIE):
    """``got_ids == expected_ids`` except at pixels where the expected probabilities of the
    two most probable classes are within ``tie`` and ``got_ids`` picked the other of the two."""
    got, want = np.asarray(got_ids), np.asarray(expected_ids)
    assert got.shape == want.shape, (got.shape, want.shape)
    differ = got != want
    if not differ.any():
        return
    probabilities = np.asarray(expected_probabilities)[differ]
    best = probabilities.max(axis=-1)
    chosen = np.take_along_axis(probabilities, got[differ].astype(np.int64)[:, None], axis=-1)[:, 0]
    gaps = best - chosen
    assert (
        gaps < tie
    ).all(), f"{int(differ.sum())} pixels differ; the widest by {gaps.max():.2e} in probability"
