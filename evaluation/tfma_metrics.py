"""TFMA metrics for semantic segmentation: the VOC scores, and the CxC confusion matrix as a plot.

Used by the Evaluator through ``tfma.MetricConfig(module="evaluation.tfma_metrics", ...)``
(``eval_config.py``). The model is called through its ``serving_examples`` signature, which
returns each image's mask at its original resolution (``class_ids`` padded to the batch's
largest image, with ``height`` and ``width``), and the ground truth is the raw example's PNG,
so scores are at original resolution as the VOC benchmark defines them.

Every metric takes ``num_classes`` (C) and ``class_names`` from the dataset spec, through the
``MetricConfig``'s JSON (``eval_config.make_eval_config``): the matrix is ``[C, C]``, the
per-class IoUs are sub-keys ``class_id`` 0 to C-1 (TFMA's own convention for per-class
metrics; a ``SubKey`` holds no name), and the names travel in the EvalConfig the Evaluator
writes beside its results, so the evaluation says which class each id is.

Where the time goes: the preprocessor runs once per example, before TFMA fans examples out to
their slices, and reduces the image pair to its ``[C, C]`` confusion matrix with one
``bincount``. The combiner then only adds small matrices, once per slice an example falls in
(overall, its source, each class it contains). TFMA's ``SemanticSegmentationConfusionMatrix``
instead compares full images four times per class in its combiner, for every slice.

Every score, and the confusion-matrix plot, is derived from the one matrix computation; TFMA
runs it once however many of these metrics are configured (computations are de-duplicated by
combiner, keys and preprocessor), and once per model when a baseline is compared. The summed
matrix itself has a private name (leading ``_``), which TFMA computes but does not write.

The confusion matrix reaches users as a TFMA plot, in the form of TFMA's own
``MultiClassConfusionMatrixPlot``: a ``PlotKey`` whose value is a
``MultiClassConfusionMatrixAtThresholds`` with one matrix (threshold 0: every pixel has a
predicted class) of entries (true class, predicted class, pixel count). That is a form TFMA's
viewer draws (``tfma.view.render_plot``, "Multi-class Confusion Matrix"); an array metric is
only a text cell in ``render_slicing_metrics``'s table and is not a plot at all.
"""

import io
from typing import Any, Dict, Iterator, List, Optional, Sequence

import apache_beam as beam
import numpy as np
from PIL import Image
from tensorflow_model_analysis.metrics import metric_types
from tensorflow_model_analysis.proto import metrics_for_slice_pb2
from tensorflow_model_analysis.utils import util

from core import dataset_spec, features
from core.metrics import (
    CLASS_IOU,
    CLASS_IOU_GUARD,
    CONFUSION_MATRIX,
    FREQUENCY_WEIGHTED_IOU,
    MEAN_IOU,
    PIXEL_ACCURACY,
    class_iou,
)
from core.signatures import CLASS_IDS, ERROR, HEIGHT, SERVING_EXAMPLES, WIDTH
from evaluation import iou

# The metrics' names (core/metrics.py): CONFUSION_MATRIX is the plot, CLASS_IOU one value per
# class (sub_key class_id).
# The summed [C, C] matrix every output derives from. Private (leading "_"): TFMA computes it
# but does not write it (0.47.1: evaluators/metrics_plots_and_validations_evaluator.py,
# _remove_private_metrics). Not named like the plot: PlotKey and MetricKey compare as tuples
# (metrics/metric_types.py, MetricKey.__eq__), so equal names would be one dict key.
_PIXEL_MATRIX = "_segmentation_pixel_confusion_matrix"


def decode_mask(png: bytes) -> np.ndarray:
    """Class ids ``[H, W]`` of a record's mask (ingestion's canonical palette PNG, any dataset's
    colours): PIL's palette indices are the ids."""
    return np.asarray(Image.open(io.BytesIO(png)))


def _single(value: Any) -> Any:
    """The one value of a TFMA feature (numpy array of one element) or of a scalar."""
    array = np.asarray(value)
    return array.reshape(-1)[0] if array.ndim else array.item()


class _ImageConfusion(metric_types.Preprocessor):
    """One example -> its ``[C, C]`` confusion matrix (ground truth PNG vs predicted ids)."""

    def __init__(self, num_classes: int, ignore_label: int, model_name: str = ""):
        super().__init__(name=f"_segmentation_image_confusion_{num_classes}_{ignore_label}_{model_name}")
        self._num_classes = num_classes
        self._ignore_label = ignore_label
        self._model_name = model_name

    def process(self, extracts: Dict[str, Any]) -> Iterator[np.ndarray]:
        extracts = util.StandardExtracts(extracts)
        raw = extracts.get_features() or {}
        predictions = extracts.get_predictions(self._model_name)
        name = raw.get(features.FILENAME_KEY)
        where = _single(name).decode() if name is not None else "an eval example"
        if features.MASK_KEY not in raw:
            raise ValueError(f"{where}: the example has no {features.MASK_KEY!r} feature to score against")
        if not isinstance(predictions, dict) or CLASS_IDS not in predictions:
            raise ValueError(
                f"{where}: the model's predictions have no {CLASS_IDS!r} output; evaluate the "
                f"{SERVING_EXAMPLES!r} signature of a deeplab-tfx model"
            )
        refused = predictions.get(ERROR)
        if refused is not None and len(_single(refused)):
            raise ValueError(f"{where}: the model refused the example's image: {_single(refused).decode()}")
        truth = decode_mask(_single(raw[features.MASK_KEY]))
        height, width = int(_single(predictions[HEIGHT])), int(_single(predictions[WIDTH]))
        if truth.shape != (height, width):
            raise ValueError(
                f"{where}: mask is {truth.shape[1]}x{truth.shape[0]} but the prediction is {width}x{height}"
            )
        predicted = np.asarray(predictions[CLASS_IDS])[:height, :width]
        beyond = predicted[(predicted >= self._num_classes) & (predicted != self._ignore_label)]
        if beyond.size:
            # A model of another dataset: above all the baseline, when one pipeline was run on two
            # datasets and the resolver gave it the other dataset's latest blessed model.
            model = f"model {self._model_name!r}" if self._model_name else "the model"
            raise ValueError(
                f"{where}: {model} predicts class id {int(beyond.max())} but the dataset has "
                f"{self._num_classes} classes: it was trained on another dataset. Run each dataset as "
                "a pipeline of its own (pipeline_name, pipeline_root), so that its baseline is its own"
            )
        yield iou.confusion_matrix(truth, predicted, self._num_classes, self._ignore_label)


class _SumMatrices(beam.CombineFn):
    """Adds per-image confusion matrices; outputs ``{key: [C, C] int64}``."""

    def __init__(self, key: metric_types.MetricKey, num_classes: int):
        self._key = key
        self._num_classes = num_classes

    def create_accumulator(self) -> np.ndarray:
        return np.zeros((self._num_classes, self._num_classes), np.int64)

    def add_input(self, accumulator: np.ndarray, matrices: List[np.ndarray]) -> np.ndarray:
        for matrix in matrices if isinstance(matrices, list) else [matrices]:
            accumulator += matrix
        return accumulator

    def merge_accumulators(self, accumulators) -> np.ndarray:
        accumulators = iter(accumulators)
        result = next(accumulators)
        for accumulator in accumulators:
            result = result + accumulator
        return result

    def extract_output(self, accumulator: np.ndarray) -> Dict[metric_types.MetricKey, np.ndarray]:
        return {self._key: accumulator}


def confusion_matrix_plot(matrix: np.ndarray) -> metrics_for_slice_pb2.MultiClassConfusionMatrixAtThresholds:
    """``matrix`` (rows: true class, columns: predicted class) as TFMA's multi-class plot proto.

    One matrix, at threshold 0, as TFMA's ``MultiClassConfusionMatrixPlot`` has by default: our
    predictions are arg-max class ids, so no pixel goes without a prediction. Every (true,
    predicted) pair gets an entry, zeros included, so the viewer shows all classes whichever
    occur in a slice. ``num_weighted_examples`` is a double: pixel counts below 2**53 are exact.
    """
    plot = metrics_for_slice_pb2.MultiClassConfusionMatrixAtThresholds()
    at_threshold = plot.matrices.add(threshold=0.0)
    for (actual, predicted), count in np.ndenumerate(matrix):
        at_threshold.entries.add(
            actual_class_id=actual, predicted_class_id=predicted, num_weighted_examples=float(count)
        )
    return plot


def _plot_of(key: metric_types.PlotKey, matrix_key: metric_types.MetricKey):
    """The derived computation's result function for the plot, as TFMA's own
    ``MultiClassConfusionMatrixPlot`` derives its plot from its (private) matrices."""

    def result(metrics: Dict[metric_types.MetricKey, Any]) -> Dict[metric_types.PlotKey, Any]:
        return {key: confusion_matrix_plot(metrics[matrix_key])}

    result.__name__ = f"segmentation_{CONFUSION_MATRIX}_plot"
    return result


def _scores_of(kind: str, key: metric_types.MetricKey, matrix_key: metric_types.MetricKey):
    """The derived computation's result function: one score (or the per-class IoUs) per slice."""

    def result(metrics: Dict[metric_types.MetricKey, Any]) -> Dict[metric_types.MetricKey, Any]:
        values = iou.scores(metrics[matrix_key])
        if kind != CLASS_IOU:
            return {key: values[kind]}
        # Classes that occur in neither labels nor predictions of the slice have no IoU.
        return {
            key._replace(sub_key=metric_types.SubKey(class_id=c)): float(v)
            for c, v in enumerate(values[CLASS_IOU])
            if not np.isnan(v)
        }

    result.__name__ = f"segmentation_{kind}"
    return result


def _score_of(scores, key: metric_types.MetricKey, matrix_key: metric_types.MetricKey):
    """The derived computation's result function for one value, ``scores(matrix)``."""

    def result(metrics: Dict[metric_types.MetricKey, Any]) -> Dict[metric_types.MetricKey, Any]:
        return {key: scores(metrics[matrix_key])}

    result.__name__ = f"segmentation_{key.name}"
    return result


def guarded_iou(matrix: np.ndarray, class_id: int, min_pixels: int) -> float:
    """``class_id``'s IoU where the slice's labels hold at least ``min_pixels`` of it, else 0.0:
    exempt. The labels are the eval split's, the same for the candidate and its baseline, so an
    exempt class reads 0.0 for both and its change is 0: a guard on a few pixels is noise."""
    if matrix[class_id].sum() < min_pixels:
        return 0.0
    return float(class_iou(matrix)[class_id])


def guard_name(class_name: str) -> str:
    return f"{CLASS_IOU_GUARD}/{class_name}"


def guarded_class(metric_name: str) -> Optional[str]:
    """The class whose guard metric (``guard_name``) ``metric_name`` is; None for any other metric."""
    prefix = guard_name("")
    return metric_name[len(prefix) :] if metric_name.startswith(prefix) else None


def _computations(
    kind: str,
    name: str,
    num_classes: int,
    ignore_label: int = features.IGNORE_LABEL,
    model_names: Optional[List[str]] = None,
    example_weighted: bool = False,
    scores=None,
) -> metric_types.MetricComputations:
    """The shared matrix computation and, derived from it, ``kind``'s output (``scores``: the
    result function for a metric that is not one of ``iou.scores``')."""
    computations = []
    for model_name in model_names or [""]:
        matrix_key = metric_types.MetricKey(
            name=_PIXEL_MATRIX, model_name=model_name, example_weighted=example_weighted
        )
        computations.append(
            metric_types.MetricComputation(
                keys=[matrix_key],
                preprocessors=[_ImageConfusion(num_classes, ignore_label, model_name)],
                combiner=_SumMatrices(matrix_key, num_classes),
            )
        )
        if kind == CONFUSION_MATRIX:
            key = metric_types.PlotKey(name=name, model_name=model_name, example_weighted=example_weighted)
            computations.append(metric_types.DerivedMetricComputation([key], _plot_of(key, matrix_key)))
        else:
            key = metric_types.MetricKey(name=name, model_name=model_name, example_weighted=example_weighted)
            result = (
                _scores_of(kind, key, matrix_key) if scores is None else _score_of(scores, key, matrix_key)
            )
            computations.append(metric_types.DerivedMetricComputation([key], result))
    return computations


def check_classes(num_classes: Optional[int], class_names: Optional[Sequence[str]]) -> None:
    """Raises ValueError unless ``num_classes`` is a class count that ids in bytes can hold
    (2 to ``MAX_CLASSES``: 255 is the ignore id) and ``class_names``, when given, has one name
    per class. No default: one dataset's count would size every other dataset's matrix wrong."""
    top = dataset_spec.MAX_CLASSES
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or not 2 <= num_classes <= top:
        raise ValueError(
            f"num_classes={num_classes!r} cannot work: the segmentation metrics need the dataset "
            f"spec's number of classes, 2 to {top} (evaluation.eval_config.make_eval_config passes it)"
        )
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"class_names has {len(class_names)} names for num_classes={num_classes}")


class _SegmentationMetric(metric_types.Metric):
    KIND = ""

    def __init__(
        self,
        name: Optional[str] = None,
        num_classes: Optional[int] = None,
        ignore_label: int = features.IGNORE_LABEL,
        class_names: Optional[Sequence[str]] = None,
    ):
        """``num_classes`` and ``class_names``: the dataset spec's (``class_names`` is carried in
        the metric's config, so the EvalConfig written with the results names the class ids)."""
        check_classes(num_classes, class_names)
        kind = self.KIND

        def create(
            name, num_classes, ignore_label, class_names=None, model_names=None, example_weighted=False
        ):
            return _computations(kind, name, num_classes, ignore_label, model_names, example_weighted)

        super().__init__(
            create,
            name=name or kind,
            num_classes=num_classes,
            ignore_label=ignore_label,
            class_names=list(class_names) if class_names is not None else None,
        )


class SegmentationConfusionMatrixPlot(_SegmentationMetric):
    """The ``[C, C]`` pixel confusion matrix (rows: truth), void excluded, as a TFMA plot.

    In ``tfma.load_eval_result(...).plots``, and drawn by ``tfma.view.render_plot``.
    """

    KIND = CONFUSION_MATRIX


class SegmentationMeanIoU(_SegmentationMetric):
    """Mean over classes of TP / (TP + FP + FN): the VOC benchmark's headline number."""

    KIND = MEAN_IOU


class SegmentationPixelAccuracy(_SegmentationMetric):
    """Correctly labelled pixels over all non-void pixels."""

    KIND = PIXEL_ACCURACY


class SegmentationFrequencyWeightedIoU(_SegmentationMetric):
    """Class IoUs weighted by each class's share of the labelled pixels."""

    KIND = FREQUENCY_WEIGHTED_IOU


class SegmentationClassIoU(_SegmentationMetric):
    """IoU of each class that occurs in the slice, as sub-keys ``class_id``."""

    KIND = CLASS_IOU


class SegmentationClassIoUGuard(metric_types.Metric):
    """One class's IoU as its own metric (``class_iou_guard/<name>``), so that the Evaluator can
    hold each class to a change threshold against the blessed baseline: a retrain whose mean IoU
    holds while one class collapses is not blessed. Classes with fewer than ``min_pixels``
    labelled pixels in the slice are exempt (``guarded_iou``)."""

    def __init__(
        self,
        name: Optional[str] = None,
        num_classes: Optional[int] = None,
        class_names: Optional[Sequence[str]] = None,
        class_id: int = 0,
        min_pixels: int = 1,
        ignore_label: int = features.IGNORE_LABEL,
    ):
        check_classes(num_classes, class_names)
        if not 0 <= class_id < (num_classes or 0):
            raise ValueError(f"class_id {class_id} is not a class of num_classes={num_classes}")

        def create(
            name, num_classes, class_id, min_pixels, ignore_label, class_names=None, model_names=None,
            example_weighted=False,
        ):  # fmt: skip
            def scores(matrix):
                return guarded_iou(matrix, class_id, min_pixels)

            return _computations(
                CLASS_IOU_GUARD, name, num_classes, ignore_label, model_names, example_weighted, scores
            )

        super().__init__(
            create,
            name=name or guard_name(class_names[class_id] if class_names else str(class_id)),
            num_classes=num_classes,
            class_names=list(class_names) if class_names is not None else None,
            class_id=class_id,
            min_pixels=min_pixels,
            ignore_label=ignore_label,
        )


METRIC_CLASSES = (
    SegmentationMeanIoU,
    SegmentationClassIoU,
    SegmentationPixelAccuracy,
    SegmentationFrequencyWeightedIoU,
    SegmentationConfusionMatrixPlot,
)
