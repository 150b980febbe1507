"""What TensorBoard shows of a run beyond Keras' loss and mean IoU: at every evaluation, the
learning rate, the IoU of each class and a few eval images with their true and predicted masks.

Keras' ``TensorBoard`` callback writes ``train/`` and ``validation/`` under the run directory;
``EvaluationSummaries`` writes ``evaluation/`` beside them, with its own file writer. Not into
``validation/``: TensorBoard polls only the newest event file of a directory for new data
(``--reload_multifile`` is off by default), so two writers open in one directory would hide one
of them from a TensorBoard that watches the run live.

Its scalars and images are logged against the optimizer step, not the epoch (Keras' ``epoch_*``
scalars): steps stay comparable across a resumed run, a short last epoch and configs with other
epoch lengths. Keras' own ``train/epoch_learning_rate`` is another curve: by epoch, and the
schedule at the next step rather than the rate of the last one.
"""

import math
import os
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras

from core import dataset_spec, features, metrics
from trainer import data as data_lib
from transform import palette

SUMMARY_DIR = "evaluation"  # beside Keras' train/ and validation/
LEARNING_RATE = "learning_rate"
MASKS = "masks"  # image | true mask | predicted mask, one picture per eval image
# A normalized image (``transform.normalize_image``: per channel ``(x - mean) / std``) is shown
# as ``128 + 64 x``: 2 standard deviations either side of the mean fill 0-255.
NORMALIZED_SPREAD = 64.0
NORMALIZED_CENTRE = 128.0


class EvaluationSummaries(keras.callbacks.Callback):
    """Writes, at the end of every epoch that Keras evaluated, into ``<log_dir>/evaluation``:

    - ``learning_rate``: the rate of the epoch's last step, as ``history.json`` records it
      (tf_keras 2.16 optimizers return their schedule's value at their last step);
    - ``class_iou/<class name>``: each class's IoU over the eval data, from the confusion
      matrix of Keras' own mean IoU metric: ``fit`` evaluates before it calls ``on_epoch_end``
      and resets the metrics only when the next epoch or evaluation begins (tf_keras 2.16
      ``Model.fit``), so the matrix then holds the whole evaluation. A class absent from both
      the labels and the predictions has no IoU (0 / 0) and is not written: its curve has a gap
      there, and the scalars written average to Keras' ``val_mean_iou``, which leaves such a
      class out the same way;
    - ``masks``: the same eval images every epoch (``images``, ``labels``), each drawn as image |
      true mask | predicted mask side by side in the dataset's palette, void in its ignore
      colour, so that one sees how the model's masks evolve. Not written without images
      (``images`` None or empty: ``trainer.summary_images`` 0, an eval split without records, a
      worker other than the chief): nothing is then predicted nor traced; the scalars still are.

    ``images`` are the model's inputs, ``[N, S, S, 3]`` float: 0-255, or normalized by mean and
    std when ``images_normalized`` (then shown at ``NORMALIZED_CENTRE + NORMALIZED_SPREAD * x``:
    the dataset's mean and std are inside the Transform graph, not here).

    Every worker of a multi-worker job must run it (``enabled`` on the chief only): reading the
    metric's matrix sums its sync-on-read copies over every worker, a collective. Only the chief
    predicts, on its own replicas (``strategy.run``: no collective), and writes. The prediction
    is a ``tf.function`` traced at the first evaluation; every later one costs a forward pass of
    ``N`` images. Measured on the tiny config (MobileNetV2 0.35, 21 classes, 3 images at 128 px)
    on 2 CPU cores shared with another training: 0.77 s at the first evaluation, 0.07-0.12 s at
    each later one; a training step there takes 0.3 s, an evaluation of the eval split seconds.
    """

    def __init__(
        self,
        log_dir: str,
        dataset: dataset_spec.DatasetSpec,
        images: Optional[np.ndarray],
        labels: Optional[np.ndarray],
        images_normalized: bool = False,
        enabled: bool = True,
    ):
        super().__init__()
        self.log_dir, self.dataset, self.images, self.labels = log_dir, dataset, images, labels
        self.images_normalized, self.enabled = images_normalized, enabled
        self._writer = None
        self._predict = None

    @classmethod
    def of_eval_files(
        cls,
        log_dir: str,
        dataset: dataset_spec.DatasetSpec,
        eval_files: Sequence[str],
        tft_output: tft.TFTransformOutput,
        images_normalized: bool = False,
        *,
        count: int,
        enabled: bool = True,
    ) -> "EvaluationSummaries":
        """The callback showing the first ``count`` images of ``eval_files`` (``trainer.
        summary_images``); with ``count`` 0, or on a worker that is not ``enabled``, it reads
        none."""
        reads = enabled and count > 0
        images, labels = first_examples(eval_files, tft_output, count) if reads else (None, None)
        return cls(log_dir, dataset, images, labels, images_normalized, enabled)

    def on_train_begin(self, logs=None):
        if self.enabled:
            self._writer = tf.summary.create_file_writer(os.path.join(self.log_dir, SUMMARY_DIR))

    def on_epoch_end(self, epoch, logs=None):
        if metrics.VAL_MEAN_IOU not in (logs or {}):
            return  # not evaluated: the metric holds the training batches' matrix
        mean_iou = next(m for m in self.model.metrics if m.name == metrics.MEAN_IOU)
        matrix = mean_iou.total_cm.numpy()  # on every worker: a collective under multi-worker
        if not self.enabled:
            return
        step = int(self.model.optimizer.iterations.numpy())
        with self._writer.as_default(step=step):
            tf.summary.scalar(LEARNING_RATE, float(tf.convert_to_tensor(self.model.optimizer.learning_rate)))
            for name, iou in zip(self.dataset.class_names, metrics.class_iou(matrix), strict=True):
                if not math.isnan(iou):
                    tf.summary.scalar(f"{metrics.CLASS_IOU}/{name}", iou)
            if self.shows_images:
                predicted = self._predictions()
                tf.summary.image(MASKS, self.panels(predicted), max_outputs=len(self.images))
        self._writer.flush()

    @property
    def shows_images(self) -> bool:
        return self.images is not None and len(self.images) > 0

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def panels(self, predicted: np.ndarray) -> np.ndarray:
        """``[N, S, 3 S, 3]`` uint8: each image, its true mask and ``predicted`` side by side."""
        colours = self.dataset.palette()
        shown = displayed(self.images, self.images_normalized)
        return np.concatenate(
            [shown, palette.colorize(self.labels, colours), palette.colorize(predicted, colours)], axis=2
        )

    def _predictions(self) -> np.ndarray:
        """``[N, S, S]`` class ids of ``images`` by the model as it is now, on this worker's
        replicas alone: ``strategy.run`` reads each replica's own copy of the sync-on-read
        batch-norm statistics, where a call outside it would average them over every worker,
        a collective the other workers do not join. The copies agree when batch norm is
        synchronized or frozen (the multi-replica default, ``trainer.sync_batch_norm``);
        otherwise the masks are those of the first replica's statistics."""
        if self._predict is None:
            net, strategy = self.model, self.model.distribute_strategy

            def class_ids(images):
                return tf.argmax(net(images, training=False), axis=-1, output_type=tf.int32)

            @tf.function(autograph=False)
            def predict(images):
                return strategy.experimental_local_results(strategy.run(class_ids, args=(images,)))[0]

            self._predict = predict
        return self._predict(tf.constant(self.images, tf.float32)).numpy()


def displayed(images: np.ndarray, normalized: bool) -> np.ndarray:
    """Model inputs ``[..., 3]`` float as uint8 pixels: 0-255 as they are, normalized ones at
    ``NORMALIZED_CENTRE + NORMALIZED_SPREAD * x``; rounded and clipped."""
    pixels = NORMALIZED_CENTRE + NORMALIZED_SPREAD * images if normalized else images
    return np.clip(np.round(pixels), 0, 255).astype(np.uint8)


def first_examples(eval_files: Sequence[str], tft_output: tft.TFTransformOutput, count: int) -> tuple:
    """``(images [n, S, S, 3] float32, labels [n, S, S] int64)``: the first ``count`` examples
    of ``eval_files`` as the evaluation reads them (``data.make_dataset``, one pipeline), the
    same ones on every run of the same files. ``n`` is smaller when the split has fewer: images
    whose mask is all void are dropped (the fillers of the last batch; an image with no labelled
    pixel has nothing to show either); 0 when it has no records (then the fillers
    do not fill a batch, and the dataset is empty)."""
    dataset = data_lib.make_dataset(list(eval_files), tft_output, count, training=False)
    batch = next(iter(dataset), None)
    if batch is None:
        return tuple(
            np.zeros([0, *spec.shape[1:]], spec.dtype.as_numpy_dtype) for spec in dataset.element_spec
        )
    images, labels = (t.numpy() for t in batch)
    real = (labels != features.IGNORE_LABEL).any(axis=(1, 2))
    return images[real], labels[real]
