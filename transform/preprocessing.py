"""The Transform step: raw tf.Examples of the data contract to fixed-size model inputs.

Deterministic work only (random augmentation belongs to the trainer's input pipeline): decode
the JPEG and the palette PNG, resize keeping the aspect ratio so the longer side is
``image_size``, pad bottom/right to a square (image with a neutral value, label with 255), and
count pixels per class over the analyzed split. Image and label are computed by separate ops
so that the serving graph, fed image bytes alone, keeps the image path and prunes the label.

Every function here is plain TensorFlow on one example, so it runs the same eagerly, inside
``tf.data`` and inside the Transform graph.
"""

from typing import Optional

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft

from pipeline import features
from transform import palette

DEFAULT_IMAGE_SIZE = 512
# Neutral grey: 0 after the usual x / 127.5 - 1 scaling, so padding carries no signal.
IMAGE_PAD_VALUE = 127.5


def _palette_table() -> tuple:
    """512-entry tables keyed by the top 3 bits of R, G and B: class id, and "is a VOC colour".

    A VOC colour uses only the top 3 bits of each channel, so those 9 bits identify it; the
    low 5 bits must be zero. 1 KB instead of the 64 MB 256^3 table of the seed tutorials.
    """
    ids = np.full(512, features.IGNORE_LABEL, np.int32)
    valid = np.zeros(512, bool)
    for index in palette.VALID_INDICES:
        r, g, b = (int(v) >> 5 for v in palette.VOC_COLORMAP[index])
        key = (r << 6) | (g << 3) | b
        ids[key], valid[key] = index, True
    return ids, valid


_KEY_TO_ID, _KEY_IS_VOC = _palette_table()


def decode_mask(png: tf.Tensor) -> tuple:
    """Palette PNG bytes -> (class ids ``[H, W]`` int32 in 0-20 or 255, out-of-palette pixel count).

    ``decode_png`` expands the palette to RGB; the colour is then inverted arithmetically. A
    colour that is not a class or void becomes 255 and is counted, never silently background.
    """
    rgb = tf.cast(tf.io.decode_png(png, channels=3), tf.int32)
    # key = (r >> 5) << 6 | (g >> 5) << 3 | (b >> 5), in one multiply-add over the channels.
    key = tf.reduce_sum(tf.bitwise.right_shift(rgb, 5) * tf.constant([64, 8, 1]), axis=-1)
    low_bits = tf.reduce_max(tf.bitwise.bitwise_and(rgb, 0x1F), axis=-1)
    off_palette = tf.logical_or(
        tf.not_equal(low_bits, 0), tf.logical_not(tf.gather(tf.constant(_KEY_IS_VOC), key))
    )
    ids = tf.where(off_palette, features.IGNORE_LABEL, tf.gather(tf.constant(_KEY_TO_ID), key))
    return ids, tf.reduce_sum(tf.cast(off_palette, tf.int32))


def decode_image(jpeg: tf.Tensor) -> tf.Tensor:
    """JPEG bytes -> ``[H, W, 3]`` uint8; grayscale and CMYK JPEGs come out as RGB."""
    return tf.io.decode_jpeg(jpeg, channels=3)


def resized_shape(height: tf.Tensor, width: tf.Tensor, size: int) -> tuple:
    """The ``(h, w)`` that keeps the aspect ratio with the longer side equal to ``size``."""
    scale = tf.cast(size, tf.float64) / tf.cast(tf.maximum(height, width), tf.float64)
    h = tf.clip_by_value(tf.cast(tf.round(tf.cast(height, tf.float64) * scale), tf.int32), 1, size)
    w = tf.clip_by_value(tf.cast(tf.round(tf.cast(width, tf.float64) * scale), tf.int32), 1, size)
    return h, w


def resize_and_pad_image(image: tf.Tensor, size: int, pad_value: float = IMAGE_PAD_VALUE) -> tf.Tensor:
    """``[H, W, 3]`` -> ``[size, size, 3]`` float32: bilinear resize, pad bottom/right."""
    shape = tf.shape(image)
    h, w = resized_shape(shape[0], shape[1], size)
    resized = tf.image.resize(tf.cast(image, tf.float32), tf.stack([h, w]), method="bilinear")
    padded = tf.pad(resized - pad_value, [[0, size - h], [0, size - w], [0, 0]]) + pad_value
    return tf.ensure_shape(padded, [size, size, 3])


def resize_and_pad_label(ids: tf.Tensor, size: int) -> tf.Tensor:
    """``[H, W]`` class ids -> ``[size, size]``: nearest-neighbour resize, pad with 255."""
    shape = tf.shape(ids)
    h, w = resized_shape(shape[0], shape[1], size)
    resized = tf.image.resize(ids[..., None], tf.stack([h, w]), method="nearest")[..., 0]
    padded = tf.pad(resized, [[0, size - h], [0, size - w]], constant_values=features.IGNORE_LABEL)
    return tf.ensure_shape(padded, [size, size])


def class_histogram(ids: tf.Tensor, off_palette: tf.Tensor) -> tf.Tensor:
    """Pixel counts ``[NUM_CLASSES + 2]``: classes 0-20, void (255), then out-of-palette pixels.

    Out-of-palette pixels are also 255 in ``ids``; they are taken out of the void count so the
    two are reported apart.
    """
    counts = tf.math.bincount(tf.reshape(ids, [-1]), minlength=256, maxlength=256, dtype=tf.int64)
    void = counts[features.IGNORE_LABEL] - tf.cast(off_palette, tf.int64)
    return tf.concat([counts[: features.NUM_CLASSES], [void, tf.cast(off_palette, tf.int64)]], axis=0)


HISTOGRAM_TOKENS = tuple(str(c) for c in range(features.NUM_CLASSES)) + (
    str(features.IGNORE_LABEL),
    features.OUT_OF_PALETTE_TOKEN,
)


def _flat(tensor: tf.Tensor) -> tf.Tensor:
    """Raw FixedLen([1]) features arrive as ``[batch, 1]``; the maps below want ``[batch]``."""
    return tf.reshape(tensor, [-1])


# TFX Transform calls this.
def preprocessing_fn(inputs: dict, custom_config: Optional[dict] = None) -> dict:
    """Raw features -> ``image``, ``label``, ``original_height``, ``original_width``.

    ``custom_config``: ``image_size`` (default 512). Without mask features (serving), only the
    image outputs are produced.
    """
    size = int((custom_config or {}).get("image_size", DEFAULT_IMAGE_SIZE))
    jpeg = _flat(inputs[features.IMAGE_KEY])
    outputs = {
        features.IMAGE: tf.map_fn(
            lambda b: resize_and_pad_image(decode_image(b), size),
            jpeg,
            fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32),
        ),
    }
    original = tf.map_fn(
        lambda b: tf.cast(tf.image.extract_jpeg_shape(b)[:2], tf.int64),
        jpeg,
        fn_output_signature=tf.TensorSpec([2], tf.int64),
    )
    outputs[features.ORIGINAL_HEIGHT] = original[:, 0]
    outputs[features.ORIGINAL_WIDTH] = original[:, 1]
    if features.MASK_KEY not in inputs:
        return outputs

    def label_and_counts(png):
        # At serving time TFT runs this whole graph with the unfed mask set to b"" and then
        # drops the label: answer an all-void 1x1 mask instead of failing to decode nothing.
        ids, off_palette = tf.cond(
            tf.equal(tf.strings.length(png), 0),
            lambda: (tf.fill([1, 1], features.IGNORE_LABEL), tf.constant(0)),
            lambda: decode_mask(png),
        )
        return tf.cast(resize_and_pad_label(ids, size), tf.int64), class_histogram(ids, off_palette)

    label, counts = tf.map_fn(
        label_and_counts,
        _flat(inputs[features.MASK_KEY]),
        fn_output_signature=(
            tf.TensorSpec([size, size], tf.int64),
            tf.TensorSpec([len(HISTOGRAM_TOKENS)], tf.int64),
        ),
    )
    outputs[features.LABEL] = label
    # Full pass over the analyzed split: pixel count per class (and void, out-of-palette), as a
    # weighted vocabulary file written with the transform graph. Per-image weights are exact in
    # float32 (< 2^24 pixels) and Beam sums them in Python floats.
    tokens = tf.tile(tf.constant(HISTOGRAM_TOKENS)[None], [tf.shape(counts)[0], 1])
    tft.vocabulary(
        tokens,
        weights=tf.cast(counts, tf.float32),
        store_frequency=True,
        vocab_filename=features.CLASS_COUNTS_VOCABULARY,
    )
    return outputs


def read_class_counts(tft_output: tft.TFTransformOutput) -> dict:
    """``{token: pixels}`` from the Transform output (tokens "0".."20", "255", "out_of_palette")."""
    counts = dict.fromkeys(HISTOGRAM_TOKENS, 0)
    path = tft_output.vocabulary_file_by_name(features.CLASS_COUNTS_VOCABULARY)
    with tf.io.gfile.GFile(path) as f:
        for line in f:
            frequency, _, token = line.rstrip("\n").partition(" ")
            counts[token] = int(round(float(frequency)))
    return counts
