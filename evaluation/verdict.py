"""The Evaluator's blessing decision in plain words, read back from its validation output."""

import tensorflow_model_analysis as tfma

from core import metrics
from evaluation import tfma_metrics

_CONFIG_KEY = {False: "evaluator.min_mean_iou", True: "evaluator.max_mean_iou_drop"}


def _describe(failure) -> str:
    key = failure.metric_key
    name = "mean IoU" if key.name == metrics.MEAN_IOU else key.name
    value = failure.metric_value.double_value.value
    threshold = failure.metric_threshold
    guarded = tfma_metrics.guarded_class(key.name)
    if guarded is not None:
        allowed = -threshold.change_threshold.absolute.value
        return (
            f"class {guarded!r}: its IoU is {-value:.4f} below the baseline's "
            f"(at most {allowed:.4f} allowed per class, evaluator.max_class_iou_drop)"
        )
    if key.is_diff:
        allowed = -threshold.change_threshold.absolute.value
        return (
            f"{name} is {-value:.4f} below the baseline's "
            f"(at most {allowed:.4f} allowed, {_CONFIG_KEY[True]})"
        )
    bound = threshold.value_threshold.lower_bound.value
    return f"{name} {value:.4f} is below the required {bound:.4f} ({_CONFIG_KEY[False]})"


def reasons(evaluation_uri: str) -> list:
    """Why a model was not blessed: one sentence per failed threshold; empty when it was."""
    result = tfma.load_validation_result(evaluation_uri)
    if result.validation_ok:
        return []
    found = []
    for per_slice in result.metric_validations_per_slice:
        found += [_describe(failure) for failure in per_slice.failures]
    for missing in result.missing_slices:
        found.append(f"the eval split has no examples for slice {missing}")
    return found or ["the Evaluator did not bless it (see its validation output)"]
