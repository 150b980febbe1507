"""The Transform step: raw tf.Examples of the data contract to fixed-size model inputs.

Deterministic work only (random augmentation belongs to the trainer's input pipeline): decode
the JPEG and the palette PNG, resize keeping the aspect ratio so the longer side is
``image_size``, pad bottom/right to a square (image with a neutral value, label with 255), and
count pixels per class over the analyzed split. Image and label are computed by separate ops,
so the image never depends on the mask: at serving time, fed image bytes alone, TFT runs the
graph with an empty mask and drops the label, which tolerates that empty mask.

Every function here is plain TensorFlow on one example, so it runs the same eagerly, inside
``tf.data`` and inside the Transform graph.
"""

from typing import Optional

import tensorflow as tf
import tensorflow_transform as tft

from pipeline import features
from transform import palette

DEFAULT_IMAGE_SIZE = 512
# Neutral grey: 0 after the usual x / 127.5 - 1 scaling, so padding carries no signal.
IMAGE_PAD_VALUE = 127.5


def mask_codes(png: tf.Tensor) -> tf.Tensor:
    """Palette PNG bytes -> ``[H, W]`` int32 codes: class 0-20, 255 void, 256 off-palette.

    As few passes over the pixels as possible, since on CPU each costs about a third of the
    decode itself: ``decode_png`` to RGBA, a free ``bitcast`` of each pixel's 4 bytes to
    one int32, one ``floormod`` + gather into ``palette.COLOR_TABLE`` (1 KB), one XOR and one
    ``minimum`` (see ``palette._color_table`` for why the XOR is the class id).
    """
    packed = tf.bitcast(tf.io.decode_png(png, channels=4), tf.int32)
    entry = tf.gather(tf.constant(palette.COLOR_TABLE), tf.math.floormod(packed, palette.COLOR_MODULUS))
    x = tf.bitcast(tf.bitwise.bitwise_xor(entry, packed), tf.uint32)
    # Codes fit in 9 bits, so reinterpreting them as int32 is free where a cast is a pass.
    return tf.bitcast(tf.minimum(x, tf.constant(palette.OFF_PALETTE, tf.uint32)), tf.int32)


def codes_to_ids(codes: tf.Tensor) -> tf.Tensor:
    """Codes -> class ids: an off-palette colour becomes 255 (ignored), never background."""
    return tf.minimum(codes, features.IGNORE_LABEL)


def decode_mask(png: tf.Tensor) -> tuple:
    """Palette PNG bytes -> (class ids ``[H, W]`` int32 in 0-20 or 255, off-palette pixel count)."""
    codes = mask_codes(png)
    return codes_to_ids(codes), tf.reduce_sum(tf.cast(tf.equal(codes, palette.OFF_PALETTE), tf.int32))


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


def class_histogram(codes: tf.Tensor) -> tf.Tensor:
    """Pixel counts ``[NUM_CLASSES + 2]`` from mask codes: classes 0-20, void, off-palette."""
    counts = tf.math.bincount(
        tf.reshape(codes, [-1]),
        minlength=palette.OFF_PALETTE + 1,
        maxlength=palette.OFF_PALETTE + 1,
        dtype=tf.int64,
    )
    return tf.concat([counts[: features.NUM_CLASSES], counts[features.IGNORE_LABEL :]], axis=0)


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

    ``custom_config``: ``image_size`` (default 512); ``normalize_image`` (default False): scale
    the image by the per-channel pixel mean and std of the analyzed split, padding with 0.
    Without mask features (serving), only the image outputs are produced.
    """
    config = custom_config or {}
    size = int(config.get("image_size", DEFAULT_IMAGE_SIZE))
    jpeg = _flat(inputs[features.IMAGE_KEY])

    original = tf.map_fn(
        lambda b: tf.cast(tf.image.extract_jpeg_shape(b)[:2], tf.int64),
        jpeg,
        fn_output_signature=tf.TensorSpec([2], tf.int64),
    )
    image_spec = tf.TensorSpec([size, size, 3], tf.float32)
    if config.get("normalize_image", False):

        def image_and_moments(b):
            decoded = tf.cast(decode_image(b), tf.float32)
            pixels = tf.reshape(decoded, [-1, 3])
            moments = tf.stack([tf.reduce_sum(pixels, 0), tf.reduce_sum(tf.square(pixels), 0)])
            return resize_and_pad_image(decoded, size), moments, tf.cast(tf.shape(pixels)[0], tf.float32)

        image, moments, pixel_count = tf.map_fn(
            image_and_moments,
            jpeg,
            fn_output_signature=(
                image_spec,
                tf.TensorSpec([2, 3], tf.float32),
                tf.TensorSpec([], tf.float32),
            ),
        )
        image = normalize_image(image, original, moments, pixel_count, size)
    else:
        image = tf.map_fn(
            lambda b: resize_and_pad_image(decode_image(b), size), jpeg, fn_output_signature=image_spec
        )
    outputs = {
        features.IMAGE: image,
        features.ORIGINAL_HEIGHT: original[:, 0],
        features.ORIGINAL_WIDTH: original[:, 1],
    }
    if features.MASK_KEY not in inputs:
        return outputs

    def label_and_counts(png):
        # At serving time TFT runs this whole graph with the unfed mask set to b"" and then
        # drops the label: answer an all-void 1x1 mask instead of failing to decode nothing.
        codes = tf.cond(
            tf.equal(tf.strings.length(png), 0),
            lambda: tf.fill([1, 1], features.IGNORE_LABEL),
            lambda: mask_codes(png),
        )
        label = resize_and_pad_label(codes_to_ids(codes), size)
        return tf.cast(label, tf.int64), class_histogram(codes)

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


def normalize_image(image, original, moments, pixel_count, size: int) -> tf.Tensor:
    """``(image - mean) / std`` per channel over every pixel of the analyzed split; padding -> 0.

    Full-pass analyzers on the images at their original resolution, so resizing does not
    weight small images up. The padded area is set to 0 (the new neutral value) afterwards.
    """
    total = tft.sum(moments, reduce_instance_dims=False)  # [2, 3]: sums and sums of squares
    count = tft.sum(pixel_count)
    mean = total[0] / count
    std = tf.sqrt(tf.maximum(total[1] / count - tf.square(mean), 1e-6))
    h, w = resized_shape(original[:, 0], original[:, 1], size)
    rows = tf.range(size)[None, :, None] < tf.cast(h, tf.int32)[:, None, None]
    cols = tf.range(size)[None, None, :] < tf.cast(w, tf.int32)[:, None, None]
    valid = tf.logical_and(rows, cols)[..., None]
    return tf.where(valid, (image - mean) / std, 0.0)


def read_class_counts(tft_output: tft.TFTransformOutput) -> dict:
    """``{token: pixels}`` from the Transform output (tokens "0".."20", "255", "out_of_palette")."""
    counts = dict.fromkeys(HISTOGRAM_TOKENS, 0)
    path = tft_output.vocabulary_file_by_name(features.CLASS_COUNTS_VOCABULARY)
    with tf.io.gfile.GFile(path) as f:
        for line in f:
            frequency, _, token = line.rstrip("\n").partition(" ")
            counts[token] = int(round(float(frequency)))
    return counts
