"""Metric names shared by the Keras training history, TFMA's metrics and the run report."""

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
