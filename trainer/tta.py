"""Test-time augmentation: the logits of several input scales and of the mirrored image, averaged.

An export option (``trainer.tta_scales``, ``trainer.tta_flip``), applied inside every predicting
signature (``export.make_signatures``), so that TF Serving serves and TFMA scores the same
averaged masks; training is unchanged.

The model is built for one input size ``S`` (static shapes let XLA and TF Serving's batching
plan ahead), so each scale gets a model of its own size, ``at_size``: the same layers and
variables re-applied to a larger or smaller input, with only the two weightless resizes that
name a size rebuilt. Shared, not copied: the SavedModel holds each variable once whatever the
number of scales.
"""

import dataclasses
from typing import Sequence

import tensorflow as tf
import tf_keras as keras

from core.choices import TTA_SIZE_MULTIPLE, tta_size


@dataclasses.dataclass(frozen=True)
class TestTimeAugmentation:
    """Which views are averaged: the input resized by each of ``scales`` (1.0: as trained), each
    also mirrored left-right when ``flip``."""

    __test__ = False  # a name pytest would otherwise collect

    scales: Sequence[float] = (1.0,)
    flip: bool = False

    @classmethod
    def of(cls, scales: Sequence[float], flip: bool):
        """From the trainer config's ``tta_scales`` and ``tta_flip``; None when both are off
        (``tta_flip`` alone: the trained scale and its mirror)."""
        if not scales and not flip:
            return None
        return cls(tuple(float(s) for s in scales) or (1.0,), bool(flip))

    def sizes(self, image_size: int) -> list:
        """The input side of each scale (``core.choices.tta_size``), each once, in order."""
        out = []
        for scale in self.scales:
            size = tta_size(scale, image_size)
            if size not in out:
                out.append(size)
        return out


def at_size(model: keras.Model, size: int) -> keras.Model:
    """``model`` (a functional ``[S, S, C] -> [S, S, N]`` model) on ``[size, size, C]`` inputs,
    sharing every layer and variable. Rebuilt: its ``Resizing`` layers, which name sizes
    proportional to ``S``, and nested functional models of the same input size (the backbone),
    whose input checks name ``S``."""
    image_size = model.input_shape[1]
    if size == image_size:
        return model
    if size % TTA_SIZE_MULTIPLE or image_size % TTA_SIZE_MULTIPLE:
        raise ValueError(f"test-time sizes must be multiples of {TTA_SIZE_MULTIPLE}: {image_size} -> {size}")

    def share(layer):
        if isinstance(layer, keras.layers.Resizing):
            # From its own config, so its interpolation and dtype policy stay the model's.
            sized = {"height": layer.height * size // image_size, "width": layer.width * size // image_size}
            return type(layer).from_config({**layer.get_config(), **sized})
        # Graph networks only: a model may carry other Keras objects as attributes (the export
        # attaches the Transform layer), which have no input shape and are not in the graph.
        graph = isinstance(layer, keras.Model) and getattr(layer, "_is_graph_network", False)
        if graph and layer.input_shape[1:3] == (image_size, image_size):
            return at_size(layer, size)
        return layer

    inputs = keras.Input((size, size, model.input_shape[-1]), name=model.input_names[0])
    return keras.models.clone_model(model, input_tensors=inputs, clone_function=share)


class AveragedLogits:
    """``images [B, S, S, 3] -> logits [B, S, S, N]``: the mean of the logits of every view, each
    resized back to ``S`` (bilinear) and un-mirrored."""

    def __init__(self, model: keras.Model, tta: TestTimeAugmentation):
        self.image_size = model.input_shape[1]
        # Built here, outside any tf.function: the models at each size are Keras objects.
        self.models = [at_size(model, size) for size in tta.sizes(self.image_size)]
        self.flip = tta.flip

    def __call__(self, images: tf.Tensor) -> tf.Tensor:
        size = [self.image_size, self.image_size]
        total, views = 0.0, 0
        for net in self.models:
            side = net.input_shape[1]
            scaled = images if side == self.image_size else tf.image.resize(images, [side, side], "bilinear")
            inputs = [scaled] + ([tf.image.flip_left_right(scaled)] if self.flip else [])
            for k, view in enumerate(inputs):
                logits = net(view, training=False)
                if k:
                    logits = tf.image.flip_left_right(logits)
                if side != self.image_size:
                    logits = tf.image.resize(logits, size, "bilinear")
                total += logits
                views += 1
        return total / views
