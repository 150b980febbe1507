"""The Evaluator's output as plain Python: overall scores, confusion matrix, per-slice scores.

Reads the evaluation with ``tfma.load_eval_result``, the same call the README shows users.
"""

import numpy as np
import tensorflow_model_analysis as tfma

from evaluation import tfma_metrics
from pipeline import features


def _value(metrics: dict, name: str):
    entry = metrics.get(name)
    if entry is None:
        return None
    if "doubleValue" in entry:
        return float(entry["doubleValue"])
    if "arrayValue" in entry:
        array = entry["arrayValue"]
        values = array.get("int64Values") or array.get("doubleValues") or array.get("int32Values")
        return np.asarray([float(v) for v in values]).reshape(array["shape"])
    return None


def _scores(per_output: dict) -> dict:
    """One slice's metrics (``load_eval_result``'s ``{"": {sub_key: {name: value}}}``)."""
    by_sub_key = per_output[""]
    overall = by_sub_key[""]
    class_iou = [None] * features.NUM_CLASSES
    for sub_key, metrics in by_sub_key.items():
        if sub_key.startswith("classId:"):
            class_iou[int(sub_key.split(":")[1])] = _value(metrics, tfma_metrics.CLASS_IOU)
    return {
        "examples": int(_value(overall, "example_count") or 0),
        "mean_iou": _value(overall, tfma_metrics.MEAN_IOU),
        "pixel_accuracy": _value(overall, tfma_metrics.PIXEL_ACCURACY),
        "frequency_weighted_iou": _value(overall, tfma_metrics.FREQUENCY_WEIGHTED_IOU),
        "class_iou": class_iou,
        "confusion_matrix": _value(overall, tfma_metrics.CONFUSION_MATRIX),
    }


def load(evaluation_uri: str) -> dict:
    """``{"overall": scores, "slices": [{"feature", "value", **scores}...]}`` of the candidate model."""
    result = tfma.load_eval_result(evaluation_uri)
    out = {"overall": None, "slices": []}
    for slice_key, per_output in result.slicing_metrics:
        scores = _scores(per_output)
        if not slice_key:
            out["overall"] = scores
        else:
            ((feature, value),) = slice_key
            out["slices"].append({"feature": feature, "value": value, **scores})
    out["slices"].sort(key=lambda s: (s["feature"], str(s["value"])))
    return out
