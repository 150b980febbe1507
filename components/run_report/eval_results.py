"""The Evaluator's output as plain Python: overall scores, confusion matrix, per-slice scores.

Reads the evaluation with ``tfma.load_eval_result``, the same call the README shows users: the
scores from its metrics, the confusion matrix from its plots, and the classes from the EvalConfig
stored with them (``eval_config.class_names``).
"""

from typing import Optional

import numpy as np
import tensorflow_model_analysis as tfma

from core import metrics
from evaluation import eval_config, tfma_metrics

# TFMA's JSON name of the MultiClassConfusionMatrixAtThresholds plot (``tfma.view`` uses it too).
_MULTI_CLASS_PLOT = "multiClassConfusionMatrixAtThresholds"


def _value(values: dict, name: str):
    entry = values.get(name)
    if entry is None or "doubleValue" not in entry:
        return None
    return float(entry["doubleValue"])


def _matrix(plots: Optional[dict], num_classes: int) -> Optional[np.ndarray]:
    """The ``[C, C]`` pixel counts of one slice's confusion-matrix plot (``tfma_metrics``).

    ``load_eval_result`` gives plots as proto JSON, ``{"": {"": plot}}`` per slice, where fields
    equal to 0 (class 0, an empty cell, the threshold) are left out.
    """
    plot = ((plots or {}).get("") or {}).get("") or {}
    if _MULTI_CLASS_PLOT not in plot:
        return None
    [at_threshold] = plot[_MULTI_CLASS_PLOT]["matrices"]
    matrix = np.zeros((num_classes, num_classes), np.int64)
    for entry in at_threshold.get("entries", []):
        matrix[entry.get("actualClassId", 0), entry.get("predictedClassId", 0)] = entry.get(
            "numWeightedExamples", 0
        )
    return matrix


def _candidate(config: tfma.EvalConfig) -> Optional[str]:
    """The evaluated model's name where the Evaluator also had a baseline ("candidate"), else None."""
    if len(config.model_specs) < 2:
        return None
    return next(spec.name for spec in config.model_specs if not spec.is_baseline)


def _scores(per_output: dict, plots: Optional[dict], num_classes: int) -> dict:
    """One slice's metrics (``load_eval_result``'s ``{"": {sub_key: {name: value}}}``)."""
    by_sub_key = per_output[""]
    overall = by_sub_key[""]
    class_iou = [None] * num_classes
    for sub_key, values in by_sub_key.items():
        if sub_key.startswith("classId:"):
            class_iou[int(sub_key.split(":")[1])] = _value(values, metrics.CLASS_IOU)
    return {
        "examples": int(_value(overall, "example_count") or 0),
        metrics.MEAN_IOU: _value(overall, metrics.MEAN_IOU),
        metrics.PIXEL_ACCURACY: _value(overall, metrics.PIXEL_ACCURACY),
        metrics.FREQUENCY_WEIGHTED_IOU: _value(overall, metrics.FREQUENCY_WEIGHTED_IOU),
        metrics.CLASS_IOU: class_iou,
        metrics.CONFUSION_MATRIX: _matrix(plots, num_classes),
    }


def class_guard(evaluation_uri: str, result, candidate: Optional[str]) -> dict:
    """The per-class guard (``eval_config.class_guards``): ``min_class_pixels``, and the baseline's
    overall IoU per class (``baseline_class_iou``, None without a baseline), for the report's
    per-class change."""
    min_pixels = eval_config.min_class_pixels(result.config)
    if not candidate:
        return {"min_class_pixels": min_pixels, "baseline_class_iou": None, "guard_failed": []}
    names = eval_config.class_names(result.config)
    baseline = tfma.load_eval_result(evaluation_uri, model_name=tfma.BASELINE_KEY)
    overall = dict(baseline.slicing_metrics).get(())
    scores = _scores(overall, None, len(names)) if overall else None
    return {
        "min_class_pixels": min_pixels,
        "baseline_class_iou": scores[metrics.CLASS_IOU] if scores else None,
        "guard_failed": guard_failures(evaluation_uri),
    }


def guard_failures(evaluation_uri: str) -> list:
    """The classes whose guard failed in the Evaluator's validation, by name."""
    failed = {
        tfma_metrics.guarded_class(f.metric_key.name)
        for per_slice in tfma.load_validation_result(evaluation_uri).metric_validations_per_slice
        for f in per_slice.failures
    }
    return sorted(failed - {None})


def load(evaluation_uri: str) -> dict:
    """``{"class_names", "overall": scores, "slices": [{"feature", "value", **scores}...],
    "min_class_pixels", "baseline_class_iou"}`` of the candidate model; ``class_iou`` and
    ``confusion_matrix`` are over ``class_names``, the classes the evaluation was configured with."""
    result = tfma.load_eval_result(evaluation_uri)
    names = eval_config.class_names(result.config)
    candidate = _candidate(result.config)
    if candidate:
        # Two models: TFMA finds the candidate's metrics by itself (through its diff metrics)
        # but gives plots only for a named model (TFMA 0.47.1, view/util.py,
        # convert_plots_proto_to_dict).
        result = tfma.load_eval_result(evaluation_uri, model_name=candidate)
    plots = dict(result.plots)
    out = {
        "class_names": names,
        "overall": None,
        "slices": [],
        **class_guard(evaluation_uri, result, candidate),
    }
    for slice_key, per_output in result.slicing_metrics:
        scores = _scores(per_output, plots.get(slice_key), len(names))
        if not slice_key:
            out["overall"] = scores
        else:
            ((feature, value),) = slice_key
            out["slices"].append({"feature": feature, "value": value, **scores})
    out["slices"].sort(key=lambda s: (s["feature"], str(s["value"])))
    return out
