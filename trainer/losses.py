"""Pixel-wise cross-entropy that ignores the void label (255), with optional class weights."""

from typing import Optional, Sequence

import tensorflow as tf
import tf_keras as keras

from core import features


@keras.utils.register_keras_serializable(package="deeplab_tfx")
class IgnoreLabelCrossEntropy(keras.losses.Loss):
    """Sparse softmax cross-entropy over pixels whose label is not ``ignore_label``.

    Returns one value per image: the sum over its valid pixels divided by its pixel count, so
    Keras' per-replica averaging over the *global* batch gives the same loss and gradients on
    one device and under any distribution strategy. A pixel labelled 255 contributes exactly
    nothing: neither its logits nor its label (clamped to 0 before the lookup) reach the loss.
    """

    def __init__(
        self,
        class_weights: Optional[Sequence[float]] = None,
        ignore_label: int = features.IGNORE_LABEL,
        name: str = "ignore_label_cross_entropy",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        self.class_weights = list(class_weights) if class_weights is not None else None
        self.ignore_label = ignore_label

    def call(self, y_true, y_pred):
        labels = tf.cast(y_true, tf.int32)
        if labels.shape.rank == y_pred.shape.rank:
            labels = labels[..., 0]
        valid = tf.not_equal(labels, self.ignore_label)
        safe = tf.where(valid, labels, 0)
        per_pixel = tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=safe, logits=tf.cast(y_pred, tf.float32)
        )
        weights = tf.cast(valid, tf.float32)
        if self.class_weights is not None:
            weights *= tf.gather(tf.constant(self.class_weights, tf.float32), safe)
        pixels = tf.cast(tf.reduce_prod(tf.shape(labels)[1:]), tf.float32)
        return tf.reduce_sum(tf.reshape(per_pixel * weights, [tf.shape(labels)[0], -1]), axis=1) / pixels

    def get_config(self):
        return {
            **super().get_config(),
            "class_weights": self.class_weights,
            "ignore_label": self.ignore_label,
        }


def class_weights_from_counts(counts: dict, num_classes: int, power: float = 0.5) -> list:
    """Inverse-frequency weights ``(total / count) ** power``, normalised to mean 1 over the
    ``num_classes`` classes (the dataset spec's: one weight per logit channel).

    ``counts`` is what ``transform.preprocessing.read_class_counts`` returns; classes never seen
    get the largest weight seen rather than infinity.
    """
    pixels = [counts.get(str(c), 0) for c in range(num_classes)]
    total = sum(pixels)
    raw = [(total / n) ** power if n else 0.0 for n in pixels]
    top = max(raw) or 1.0
    raw = [r or top for r in raw]
    mean = sum(raw) / len(raw)
    return [r / mean for r in raw]
