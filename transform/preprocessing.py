"""The Transform step: raw tf.Examples of the data contract to fixed-size model inputs.

Deterministic work only (random augmentation belongs to the trainer's input pipeline): decode
the image (JPEG in the records; serving also reads PNG, GIF and BMP) and the palette PNG (by
index), resize keeping the aspect ratio so the longer side is
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

from core import config as config_lib
from core import dataset_spec, features
from core.signatures import IMAGE_ENCODINGS
from transform import palette

# ``custom_config`` key of the number of classes (the dataset spec's), beside TransformConfig's keys.
NUM_CLASSES_KEY = "num_classes"
# Neutral grey: 0 after the usual x / 127.5 - 1 scaling, so padding carries no signal.
IMAGE_PAD_VALUE = 127.5


def mask_indices(png: tf.Tensor) -> tf.Tensor:
    """Ingestion's canonical mask PNG bytes -> ``[H, W]`` uint8 palette indices, at ``decode_png`` speed.

    The PNG's PLTE chunk is replaced, in the bytes, by a 256-entry grey ramp
    (``palette.GREY_RAMP_PLTE``) and the result decoded with ``channels=1``: libpng then gives
    each pixel's index itself, in the one pass of the decode. Indices do not depend on the
    colours, so any palette reads right, a tRNS chunk cannot turn a class into void, and an
    index beyond the PNG's own palette stays visible. Only an 8-bit palette PNG with PLTE right
    after IHDR is read (ingestion writes that, and the data contract says so); anything else
    fails with InvalidArgumentError saying so, and never decodes to something else.
    """
    at = palette.CANONICAL_PLTE_OFFSET
    depth_at, depth_and_type = palette.IHDR_DEPTH_AND_COLOUR_TYPE
    canonical = tf.logical_and(
        tf.equal(tf.strings.substr(png, depth_at, 2), depth_and_type),
        tf.equal(tf.strings.substr(png, at + 4, 4), b"PLTE"),
    )
    check = tf.debugging.assert_equal(
        canonical,
        True,
        message="mask is not an 8-bit palette PNG in ingestion's canonical encoding (IHDR, PLTE, IDAT, IEND)",
    )
    size = tf.io.decode_raw(tf.strings.substr(png, at, 4), tf.uint8)
    length = tf.reduce_sum(tf.cast(size, tf.int32) * tf.constant([1 << 24, 1 << 16, 1 << 8, 1]))
    # In a graph the check must run before the decode, whose own error would say less.
    with tf.control_dependencies([check] if check is not None else []):
        after_plte = tf.strings.substr(png, at + 12 + length, -1)
        swapped = tf.strings.join([tf.strings.substr(png, 0, at), palette.GREY_RAMP_PLTE, after_plte])
    return tf.io.decode_png(swapped, channels=1)[..., 0]


def _no_class(indices: tf.Tensor, num_classes: int) -> tf.Tensor:
    """True where a uint8 index is neither a class (0 to N-1) nor ignored (255), in one compare:
    uint8 subtraction wraps, so ``index - N < 255 - N`` holds exactly for N-254 (any N <= 255)."""
    first = tf.constant(num_classes, tf.uint8)
    return tf.less(indices - first, tf.constant(features.IGNORE_LABEL - num_classes, tf.uint8))


def mask_ids(indices: tf.Tensor, num_classes: int) -> tf.Tensor:
    """Palette indices (uint8) -> class ids (uint8): an index that is no class becomes 255
    (ignored), never background. Elementwise on bytes: cheaper on CPU than a table gather."""
    return tf.where(_no_class(indices, num_classes), tf.constant(features.IGNORE_LABEL, tf.uint8), indices)


def decode_mask(png: tf.Tensor, num_classes: int) -> tuple:
    """Canonical mask PNG bytes -> (class ids ``[H, W]`` uint8 in 0 to N-1 or 255, count of
    pixels whose index is no class)."""
    indices = mask_indices(png)
    return mask_ids(indices, num_classes), tf.reduce_sum(tf.cast(_no_class(indices, num_classes), tf.int32))


UNKNOWN_FORMAT = -1
# Bytes holding every format's width and height but JPEG's (BMP's height ends at byte 26).
_HEADER_BYTES = 26


def decode_image(data: tf.Tensor) -> tf.Tensor:
    """JPEG, PNG, GIF (first frame) or BMP bytes -> ``[H, W, 3]`` uint8.

    ``tf.io.decode_image`` decodes a JPEG with ``decode_jpeg``'s own defaults, so the records'
    JPEGs (training) give the same pixels as before it read other formats (tests/test_export.py
    compares them); grayscale, CMYK and alpha come out as RGB.
    """
    return tf.io.decode_image(data, channels=3, expand_animations=False)


def image_format(data: tf.Tensor) -> tf.Tensor:
    """Encoded bytes -> int32 index into ``IMAGE_ENCODINGS``, ``UNKNOWN_FORMAT`` if none."""
    matches = tf.stack(
        [tf.equal(tf.strings.substr(data, 0, len(magic)), magic) for _, magic in IMAGE_ENCODINGS]
    )
    first = tf.argmax(tf.cast(matches, tf.int32), output_type=tf.int32)
    return tf.where(tf.reduce_any(matches), first, UNKNOWN_FORMAT)


def _little_endian(head: tf.Tensor, offset: int, size: int) -> tf.Tensor:
    weights = tf.constant([256**k for k in range(size)], tf.int64)
    return tf.reduce_sum(head[offset : offset + size] * weights)


def _big_endian(head: tf.Tensor, offset: int, size: int) -> tf.Tensor:
    return _little_endian(tf.reverse(head[offset : offset + size], [0]), 0, size)


def declared_shape(data: tf.Tensor) -> tf.Tensor:
    """Encoded image bytes -> ``[height, width]`` int64 as the header declares them, undecoded.

    For the pixel guard, before ``decode_image`` runs: JPEG's frame header (by
    ``extract_jpeg_shape``, the shape the records have always been read with), PNG's IHDR,
    GIF's logical screen and BMP's info header (TF reads int32 width and height at 18 and 22;
    a negative height is a top-down bitmap). ``[0, 0]`` for an unknown format or a header too
    short to hold the size. For JPEG, PNG and BMP this is what decoding allocates. Not for GIF:
    TF decodes each frame at its own size and sizes the image by its largest frame, so a
    crafted logical screen can understate it and GIF is not protected by the guard. The
    original size of the masks is therefore taken from the decoded image, never from here.
    """
    padded = tf.strings.join([tf.strings.substr(data, 0, _HEADER_BYTES), b"\0" * _HEADER_BYTES])
    head = tf.cast(tf.io.decode_raw(tf.strings.substr(padded, 0, _HEADER_BYTES), tf.uint8), tf.int64)

    def jpeg():
        return tf.cast(tf.image.extract_jpeg_shape(data)[:2], tf.int64)

    def png():
        return tf.stack([_big_endian(head, 20, 4), _big_endian(head, 16, 4)])

    def gif():
        return tf.stack([_little_endian(head, 8, 2), _little_endian(head, 6, 2)])

    def bmp():
        height = _little_endian(head, 22, 4)
        height = tf.where(height >= 2**31, 2**32 - height, height)  # int32 sign, then abs
        return tf.stack([height, _little_endian(head, 18, 4)])

    def unknown():
        return tf.zeros([2], tf.int64)

    readers = {"JPEG": jpeg, "PNG": png, "GIF": gif, "BMP": bmp}
    kind = image_format(data)
    return tf.switch_case(
        tf.where(kind < 0, len(IMAGE_ENCODINGS), kind),
        [readers[name] for name, _ in IMAGE_ENCODINGS] + [unknown],
    )


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


def class_histogram(indices: tf.Tensor, num_classes: int) -> tf.Tensor:
    """Pixel counts ``[N + 2]`` from palette indices: classes 0 to N-1, ignored (255), no class
    (the order of ``histogram_tokens``)."""
    counts = tf.math.bincount(tf.reshape(tf.cast(indices, tf.int32), [-1]), minlength=256, maxlength=256,
                              dtype=tf.int64)  # fmt: skip
    no_class = tf.reduce_sum(counts[num_classes : features.IGNORE_LABEL], keepdims=True)
    return tf.concat([counts[:num_classes], counts[features.IGNORE_LABEL :], no_class], axis=0)


def histogram_tokens(num_classes: int) -> tuple:
    """The class-count vocabulary's tokens: ``"0"`` to ``"N-1"``, ``"255"``, ``"out_of_palette"``."""
    classes = tuple(str(c) for c in range(num_classes))
    return classes + (str(features.IGNORE_LABEL), features.OUT_OF_PALETTE_TOKEN)


def num_classes_of(custom_config: Optional[dict]) -> int:
    """``custom_config["num_classes"]`` (the dataset spec's, passed by the pipeline); checked,
    since the uint8 arithmetic above holds for 2 to 255 classes only."""
    value = (custom_config or {}).get(NUM_CLASSES_KEY)
    if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= dataset_spec.MAX_CLASSES:
        raise ValueError(
            f"Transform custom_config[{NUM_CLASSES_KEY!r}]={value!r} cannot work: the number of "
            f"classes must be an integer in [2, {dataset_spec.MAX_CLASSES}] (255 is the ignore id)"
        )
    return value


def _flat(tensor: tf.Tensor) -> tf.Tensor:
    """Raw FixedLen([1]) features arrive as ``[batch, 1]``; the maps below want ``[batch]``."""
    return tf.reshape(tensor, [-1])


def _decoded_shape(image: tf.Tensor) -> tf.Tensor:
    """``[height, width]`` int64 of a decoded ``[H, W, C]`` image."""
    return tf.cast(tf.shape(image)[:2], tf.int64)


# TFX Transform calls this.
def preprocessing_fn(inputs: dict, custom_config: Optional[dict] = None) -> dict:
    """Raw features -> ``image``, ``label``, ``original_height``, ``original_width``.

    ``custom_config``: ``TransformConfig``'s keys (``core/config.py``; a key left out takes the
    config's default), among them ``image_size`` and ``normalize_image`` (scale the image by the
    per-channel pixel mean and std of the analyzed split, padding with 0), and ``num_classes``
    (the dataset spec's, required): mask indices from N on, but 255, are no class and become 255.
    Without mask features (serving), only the image outputs are produced.
    """
    config = custom_config or {}
    num_classes = num_classes_of(config)
    tokens = histogram_tokens(num_classes)
    settings = config_lib.from_dict(
        config_lib.TransformConfig, {k: v for k, v in config.items() if k != NUM_CLASSES_KEY}, "custom_config"
    )
    size = settings.image_size
    encoded = _flat(inputs[features.IMAGE_KEY])

    # The original size is the decoded image's, not the header's: TF sizes a GIF by its largest
    # frame, which a crafted logical screen can overstate or understate.
    image_spec = tf.TensorSpec([size, size, 3], tf.float32)
    shape_spec = tf.TensorSpec([2], tf.int64)
    if settings.normalize_image:

        def image_and_moments(b):
            decoded = tf.cast(decode_image(b), tf.float32)
            pixels = tf.reshape(decoded, [-1, 3])
            moments = tf.stack([tf.reduce_sum(pixels, 0), tf.reduce_sum(tf.square(pixels), 0)])
            pixel_count = tf.cast(tf.shape(pixels)[0], tf.float32)
            return resize_and_pad_image(decoded, size), _decoded_shape(decoded), moments, pixel_count

        image, original, moments, pixel_count = tf.map_fn(
            image_and_moments,
            encoded,
            fn_output_signature=(
                image_spec,
                shape_spec,
                tf.TensorSpec([2, 3], tf.float32),
                tf.TensorSpec([], tf.float32),
            ),
        )
        image = normalize_image(image, original, moments, pixel_count, size)
    else:

        def image_and_shape(b):
            decoded = decode_image(b)
            return resize_and_pad_image(decoded, size), _decoded_shape(decoded)

        image, original = tf.map_fn(image_and_shape, encoded, fn_output_signature=(image_spec, shape_spec))
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
        indices = tf.cond(
            tf.equal(tf.strings.length(png), 0),
            lambda: tf.fill([1, 1], tf.constant(features.IGNORE_LABEL, tf.uint8)),
            lambda: mask_indices(png),
        )
        label = resize_and_pad_label(mask_ids(indices, num_classes), size)
        return tf.cast(label, tf.int64), class_histogram(indices, num_classes)

    label, counts = tf.map_fn(
        label_and_counts,
        _flat(inputs[features.MASK_KEY]),
        fn_output_signature=(
            tf.TensorSpec([size, size], tf.int64),
            tf.TensorSpec([len(tokens)], tf.int64),
        ),
    )
    outputs[features.LABEL] = label
    # Full pass over the analyzed split: pixel count per class (and void, out-of-palette), as a
    # weighted vocabulary file written with the transform graph. Per-image weights are exact in
    # float32 (< 2^24 pixels) and Beam sums them in Python floats.
    tft.vocabulary(
        tf.tile(tf.constant(tokens)[None], [tf.shape(counts)[0], 1]),
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


def read_class_counts(tft_output: tft.TFTransformOutput, num_classes: int) -> dict:
    """``{token: pixels}`` from the Transform output (``histogram_tokens(num_classes)``), 0 for a
    token the analyzed split never had."""
    counts = dict.fromkeys(histogram_tokens(num_classes), 0)
    path = tft_output.vocabulary_file_by_name(features.CLASS_COUNTS_VOCABULARY)
    with tf.io.gfile.GFile(path) as f:
        for line in f:
            frequency, _, token = line.rstrip("\n").partition(" ")
            counts[token] = int(round(float(frequency)))
    return counts
