"""The Evaluator's ``tfma.EvalConfig``, built from the one pipeline config.

Metrics come from ``evaluation.tfma_metrics`` (VOC scores at original resolution, and the
confusion matrix as a TFMA plot, which ``tfma.view.render_plot`` draws); slices are
overall, by ``image/source`` (``DatasetSpec.sources()``: VOC or SBD, or the dataset's name) and
by class present (``image/segmentation/class/present``, so one slice per class: "mean IoU on
images that contain class 3"). The blessing thresholds apply to the overall slice only: a rare
class's slice is too small to gate on. They are the mean IoU's (a floor, and a change against the
blessed baseline) and, per class, a change against the baseline's IoU of that class
(``class_guards``), so that a retrain that loses one class is not blessed on its mean.

The classes are the dataset spec's: every segmentation metric gets its ``num_classes`` and
``class_names`` in its ``MetricConfig.config`` (JSON), so per-class IoUs and the confusion
matrix have exactly that dataset's classes, and the EvalConfig the Evaluator stores with its
results names them.
"""

import json
from typing import Optional

import tensorflow_model_analysis as tfma

from core import dataset_spec, features
from core.config import EvaluatorConfig
from core.signatures import SERVING_EXAMPLES
from evaluation import tfma_metrics

METRICS_MODULE = tfma_metrics.__name__
SLICE_FEATURES = (features.SOURCE_KEY, features.CLASSES_PRESENT_KEY)


def mean_iou_threshold(config: EvaluatorConfig) -> tfma.MetricThreshold:
    """At least ``min_mean_iou``, and at most ``max_mean_iou_drop`` below the blessed baseline."""
    return tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(lower_bound={"value": config.min_mean_iou}),
        change_threshold=tfma.GenericChangeThreshold(
            direction=tfma.MetricDirection.HIGHER_IS_BETTER, absolute={"value": -config.max_mean_iou_drop}
        ),
    )


def class_iou_threshold(config: EvaluatorConfig) -> tfma.MetricThreshold:
    """At most ``max_class_iou_drop`` below the blessed baseline's IoU of the same class."""
    return tfma.MetricThreshold(
        change_threshold=tfma.GenericChangeThreshold(
            direction=tfma.MetricDirection.HIGHER_IS_BETTER, absolute={"value": -config.max_class_iou_drop}
        ),
    )


def class_guards(config: EvaluatorConfig, spec: dataset_spec.DatasetSpec, overall: tfma.SlicingSpec) -> list:
    """One ``SegmentationClassIoUGuard`` per class, each held to ``class_iou_threshold`` on the
    overall slice (classes under ``min_class_pixels`` labelled pixels exempt)."""
    guards = []
    for class_id, name in enumerate(spec.class_names):
        guard = tfma.MetricConfig(
            class_name=tfma_metrics.SegmentationClassIoUGuard.__name__,
            module=METRICS_MODULE,
            config=json.dumps(
                {
                    "name": tfma_metrics.guard_name(name),
                    "num_classes": spec.num_classes,
                    "class_names": list(spec.class_names),
                    "class_id": class_id,
                    "min_pixels": config.min_class_pixels,
                }
            ),
        )
        guard.per_slice_thresholds.add(slicing_specs=[overall], threshold=class_iou_threshold(config))
        guards.append(guard)
    return guards


def metric_classes_config(spec: dataset_spec.DatasetSpec) -> str:
    """The segmentation metrics' ``MetricConfig.config``: the spec's class count and names."""
    return json.dumps({"num_classes": spec.num_classes, "class_names": list(spec.class_names)})


def class_names(eval_config: tfma.EvalConfig) -> tuple:
    """The class names an EvalConfig made by ``make_eval_config`` was made for (index: class id)."""
    for spec in eval_config.metrics_specs:
        for metric in spec.metrics:
            if metric.module == METRICS_MODULE and metric.config:
                return tuple(json.loads(metric.config)["class_names"])
    raise ValueError(
        "the EvalConfig has no segmentation metric with class names (not made by make_eval_config)"
    )


def min_class_pixels(eval_config: tfma.EvalConfig) -> Optional[int]:
    """The per-class guard's exemption floor in an EvalConfig (None where it has no guard: made
    before the guard existed)."""
    for spec in eval_config.metrics_specs:
        for metric in spec.metrics:
            if metric.class_name == tfma_metrics.SegmentationClassIoUGuard.__name__:
                return int(json.loads(metric.config)["min_pixels"])
    return None


def make_eval_config(config: EvaluatorConfig, spec: dataset_spec.DatasetSpec) -> tfma.EvalConfig:
    """The EvalConfig for models of ``spec``'s classes (the dataset spec of the Examples)."""
    overall = tfma.SlicingSpec()
    metrics = [tfma.MetricConfig(class_name="ExampleCount")]
    classes = metric_classes_config(spec)
    for metric_class in tfma_metrics.METRIC_CLASSES:
        metric = tfma.MetricConfig(class_name=metric_class.__name__, module=METRICS_MODULE, config=classes)
        if metric_class is tfma_metrics.SegmentationMeanIoU:
            metric.per_slice_thresholds.add(slicing_specs=[overall], threshold=mean_iou_threshold(config))
        metrics.append(metric)
    metrics += class_guards(config, spec, overall)
    return tfma.EvalConfig(
        # TF_GENERIC: call the signature. Left to guess, TFMA sees a model that reloads as Keras
        # (its layers are registered) and takes the Keras path, which its Beam workers, which do
        # not import the trainer, cannot rebuild.
        model_specs=[
            tfma.ModelSpec(
                signature_name=SERVING_EXAMPLES,
                inference_batch_size=config.batch_size,
                model_type=tfma.TF_GENERIC,
            )
        ],
        slicing_specs=[overall] + [tfma.SlicingSpec(feature_keys=[key]) for key in SLICE_FEATURES],
        metrics_specs=[tfma.MetricsSpec(metrics=metrics)],
        options=tfma.Options(include_default_metrics={"value": False}),
    )
