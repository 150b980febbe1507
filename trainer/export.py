"""The exported SavedModel's signatures: the one module that defines them.

* ``serving_default``: ``images`` (encoded JPEG, PNG, GIF (first frame) or BMP bytes, ``[None]``
  string, what ``tf.io.decode_image`` reads) -> ``class_ids`` ``[B, H_max, W_max]`` uint8, each
  image's mask at its own resolution, padded with 255 to the largest in the batch, plus
  ``height`` and ``width`` ``[B]`` to crop them. Class ids, not N-channel float maps (N: the
  dataset's classes): a 500x375 mask is 188 KB, well inside gRPC's 4 MiB default.
  ``with_probabilities=True`` adds ``probabilities`` ``[B, H_max, W_max, N]`` float32.
* ``serving_png``: ``images`` -> ``class_ids_png_bytes`` ``[B]`` (each mask as a grey PNG of
  the ids, at its image's size), ``height``, ``width``. A signature of its own, not an output
  of ``serving_default``: TF Serving's REST API answers every output of a signature (it has no
  output filter), and a caller of ``serving_default`` that does not filter would pay the encode.
* ``serving_examples``: serialized raw tf.Examples (TFMA, InfraValidator) -> as
  ``serving_default``.
* ``transform_features``: serialized raw tf.Examples -> the Transform outputs (TFMA).

All run the Transform graph exported by the Transform component, so serving sees exactly the
preprocessing of training. With test-time augmentation (``trainer.tta_scales``,
``trainer.tta_flip``) the three predicting signatures average the logits of every view
(``trainer/tta.py``), so TF Serving serves and TFMA scores the same masks. The dataset spec the
model was trained on (class names, colours) goes into the SavedModel as
``assets.extra/dataset_spec.json`` (``artifacts.MODEL_SPEC_FILE``). The push copies it into each
version; TF Serving reads nothing in ``assets.extra`` but its warm-up file, and its
``GetModelMetadata`` answers the signatures only, which have no room for class names: a client
that wants them reads that file from the version's directory (``dataset_spec.of_model``).
The names of the signatures, their inputs and outputs are ``core/signatures.py``'s.

The predicting signatures are batch-safe: each image is judged on its own row (``refused_images``)
and a refused one fails nothing else. Before anything is decoded, its header: a format
``decode_image`` reads, 1 to ``max_image_pixels`` pixels (``trainer.max_image_pixels``); then the
batch budget, ``max_batch_pixels`` declared pixels in all (``trainer.max_batch_pixels``), the
images taken in order and one refused when it would take the batch over it; then whether its
body decodes (a JPEG or PNG cut short behind a good header fails ``decode_image``, and would fail
the whole call). A refused row answers ``error`` (``core.signatures.ERROR``): the reason, naming
no row, "" for a served one; height and width 0, ``class_ids`` all 255, an empty PNG,
``probabilities`` 0. It is never decoded: a 1x1 placeholder image takes its place, and the other
rows are served as they would be alone. So when TF Serving's batching merges requests, one
client's bad image fails no other's, and the real TF Serving is as protected as ``deeplab-tfx
serve``; the front ends turn a row's reason into INVALID_ARGUMENT for the request that owns it,
naming the image by its index in that request (``core.signatures.refusals``: serving/server.py,
serving/rest.py, serving/client.py for the real TF Serving, inference/job.py).

What still fails a whole call: a ``serving_examples`` input that is not a serialized tf.Example
(``parse_example`` fails for the batch); ``transform_features``, which refuses its batch
(``check_declared_sizes``: TFMA sends the pipeline's own examples); and an op that runs out of
memory. GIF is not guarded by its header (``preprocessing.declared_shape``).
"""

import functools
import os
from typing import Optional

import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras

from core import artifacts, dataset_spec, features
from core.config import TrainerConfig
from core.signatures import (
    BATCH_LIMIT,
    CLASS_IDS,
    CLASS_IDS_PNG,
    ENCODING_NAMES,
    ERROR,
    EXAMPLES,
    HEIGHT,
    IMAGE_ENCODINGS,
    IMAGE_LIMIT,
    IMAGES,
    PROBABILITIES,
    SERVING_DEFAULT,
    SERVING_EXAMPLES,
    SERVING_PNG,
    TRANSFORM_FEATURES,
    WIDTH,
)
from trainer.tta import AveragedLogits, TestTimeAugmentation
from transform import preprocessing

DEFAULT_MAX_IMAGE_PIXELS = TrainerConfig.max_image_pixels
DEFAULT_MAX_BATCH_PIXELS = TrainerConfig.max_batch_pixels
# zlib level of the PNG masks. A blocky 500x375 mask of all VOC classes (a worst case; real masks are
# smoother): level 1 takes 4.5 ms and 16.7 KB, the default (6) 10 ms and 13.9 KB, 9 87 ms. Paid on
# every serving_png call, so the fast one.
PNG_COMPRESSION = 1


# The most float32 maps an image's masks are made from at once (``class_ids_at``): an image whose
# N resized maps fit (3.2 MP at VOC's 21 classes, 0.45 MP at ADE20K's 150) takes one resize and
# argmax; a larger one takes its classes one map at a time. Measured on the tiny model, 2 cores
# (benchmarks/serving_memory.py): a 16 MP image added 1.77 GB to the process's peak with all 21
# maps at once, 0.43 GB a map at a time, which took 2.5x as long (0.47 -> 1.2 s); 4 MP 0.51 ->
# 0.17 GB, 2.6x (118 -> 301 ms). Below this limit the memory saved is small for the time (1 MP a
# map at a time, in a run with a 64 MB limit: 116 -> 33 MB added, 2.9x the time). Images are
# upsampled one at a time, so the limit bounds a batch too.
ALL_CLASSES_BYTES = 256 << 20


def class_ids_at(logits: tf.Tensor, size: tf.Tensor, all_classes_bytes: Optional[int] = None) -> tf.Tensor:
    """``[h, w, N]`` logits -> ``[H, W]`` uint8: the class ids of the logits resized (bilinear) to
    ``size`` ``[H, W]``, pixel for pixel ``tf.argmax(tf.image.resize(logits, size), -1)``, without
    holding the ``N`` resized maps when they are more than ``all_classes_bytes``
    (``ALL_CLASSES_BYTES``).

    Then a map at a time: a resize is per channel (class c's values do not depend on the other
    classes, bit for bit, on any device: it is the same kernel), so class c's map alone is
    compared with the best so far, which it replaces only where strictly greater. That is
    ``tf.argmax``'s own rule, from its start of (0, the lowest float32): ties go to the lower id,
    NaN never wins, and a pixel no class beats is 0. Held: the best values and ids and one map,
    O(H x W) whatever N. Checked against ``tf.argmax`` in tests/test_export.py, ties and NaN
    included.
    """
    limit = ALL_CLASSES_BYTES if all_classes_bytes is None else all_classes_bytes
    classes = tf.shape(logits, tf.int64)[-1]
    pixels = tf.cast(size[0], tf.int64) * tf.cast(size[1], tf.int64)

    def at_once():
        return tf.cast(tf.argmax(tf.image.resize(logits, size, method="bilinear"), -1), tf.uint8)

    def a_map_at_a_time():
        def compare(c, best, ids):
            scores = tf.reshape(tf.image.resize(logits[..., c : c + 1], size, method="bilinear"), size)
            wins = scores > best
            return c + 1, tf.where(wins, scores, best), tf.where(wins, tf.cast(c, tf.uint8), ids)

        start = (tf.constant(0, tf.int64), tf.fill(size, tf.float32.min), tf.zeros(size, tf.uint8))
        # One map at a time: a later iteration's resize must not start before this one's compare.
        _, _, ids = tf.while_loop(lambda c, *_: c < classes, compare, start, parallel_iterations=1)
        return ids

    return tf.cond(pixels * 4 * classes <= limit, at_once, a_map_at_a_time)


def to_original_resolution(
    logits: tf.Tensor,
    height: tf.Tensor,
    width: tf.Tensor,
    with_probabilities: bool = False,
    with_class_ids: bool = True,
    with_png: bool = False,
    refused: Optional[tf.Tensor] = None,
) -> dict:
    """Per image: crop the un-padded region, resize logits to ``height x width``, argmax.

    ``class_ids`` pads each mask with 255 to the largest of the batch; ``class_ids_png_bytes``
    (``with_png``) is each mask alone as a grey PNG of the ids (DeepLab's ``SegmentationClassRaw``
    format): 2-8 KB for a 500x375 mask where ``class_ids`` is 188 KB, and 0.5 MB as REST's JSON.
    The ids come from ``class_ids_at`` (a map at a time for a large image); ``probabilities``
    (``with_probabilities``) are the softmax of all N maps at full resolution, as large as they
    are: that output holds them all anyway. ``refused`` ``[B]`` bool: rows answered empty (height
    and width 0, all 255, an empty PNG, probabilities 0).
    """
    size = logits.shape[1]

    def one(args):
        image_logits, h, w = args
        rh, rw = preprocessing.resized_shape(h, w, size)
        target = tf.stack([tf.cast(h, tf.int32), tf.cast(w, tf.int32)])
        out = {}
        if with_probabilities:
            region = tf.image.resize(image_logits[:rh, :rw], target, method="bilinear")
            ids = tf.cast(tf.argmax(region, axis=-1), tf.uint8)
            out[PROBABILITIES] = tf.RaggedTensor.from_tensor(tf.nn.softmax(region))
        else:
            ids = class_ids_at(image_logits[:rh, :rw], target)
        if with_class_ids:
            out[CLASS_IDS] = tf.RaggedTensor.from_tensor(ids)
        if with_png:
            out[CLASS_IDS_PNG] = tf.io.encode_png(ids[..., None], compression=PNG_COMPRESSION)
        return out

    signature = {}
    if with_class_ids:
        signature[CLASS_IDS] = tf.RaggedTensorSpec([None, None], tf.uint8, ragged_rank=1)
    if with_png:
        signature[CLASS_IDS_PNG] = tf.TensorSpec([], tf.string)
    if with_probabilities:
        signature[PROBABILITIES] = tf.RaggedTensorSpec(
            [None, None, logits.shape[-1]], tf.float32, ragged_rank=1
        )
    # One image at a time (map_fn's default in a graph is 10): each holds up to ALL_CLASSES_BYTES.
    outputs = tf.map_fn(one, (logits, height, width), fn_output_signature=signature, parallel_iterations=1)
    served = tf.ones_like(height, tf.bool) if refused is None else tf.logical_not(refused)
    result = {
        HEIGHT: tf.where(served, tf.cast(height, tf.int64), 0),
        WIDTH: tf.where(served, tf.cast(width, tf.int64), 0),
    }
    if with_class_ids:
        ids = outputs[CLASS_IDS].to_tensor(default_value=features.IGNORE_LABEL)
        result[CLASS_IDS] = tf.where(served[:, None, None], ids, tf.constant(features.IGNORE_LABEL, tf.uint8))
    if with_png:
        result[CLASS_IDS_PNG] = tf.where(served, outputs[CLASS_IDS_PNG], "")
    if with_probabilities:
        probabilities = outputs[PROBABILITIES].to_tensor(default_value=0.0)
        result[PROBABILITIES] = tf.where(served[:, None, None, None], probabilities, 0.0)
    return result


def placeholder_image() -> tf.Tensor:
    """A 1x1 grey PNG: what the signatures decode, segment and then drop in a refused row's place,
    so that a refused image is never decoded and the batch keeps its rows."""
    return tf.io.encode_png(tf.fill([1, 1, 3], tf.constant(128, tf.uint8)))


def _where_it_works(fn, encoded: tf.Tensor) -> tuple:
    """``(works, values)``: whether ``fn`` ran on each image of ``encoded`` ``[B]`` without an error,
    and what it returned (zeros where it failed), without failing the call.

    A graph cannot catch an op's error, but ``tf.data``'s ``ignore_errors`` drops the elements
    whose function failed: each image goes through ``fn`` in a dataset, and the indices that
    come out are the images it worked on. About 1.2 ms a call for the dataset, on 2 cores.
    """
    # One image known to work at the end: the dataset is never empty, whatever the batch.
    with_sentinel = tf.concat([encoded, [placeholder_image()]], axis=0)
    index, values = (
        tf.data.Dataset.from_tensor_slices(with_sentinel)
        .enumerate()
        .map(lambda i, data: (i, fn(data)))
        .ignore_errors()
        .batch(tf.size(with_sentinel, out_type=tf.int64))
        .get_single_element()
    )
    count = tf.shape(with_sentinel, tf.int64)
    works = tf.scatter_nd(index[:, None], tf.ones_like(index, tf.bool), count)
    values = tf.scatter_nd(index[:, None], values, tf.concat([count, tf.shape(values, tf.int64)[1:]], 0))
    return works[:-1], values[:-1]


def _header_faults(encoded: tf.Tensor, max_pixels: int) -> tuple:
    """``(height, width, kinds, faults)`` of ``encoded`` ``[B]`` from the headers alone: ``faults`` ``[B]``
    says why an image is refused ("" if it is not), naming no row: an image of no format
    ``decode_image`` reads, a JPEG whose frame header cannot be read (cut short before it:
    ``extract_jpeg_shape`` fails), one that declares no pixels, or more than ``max_pixels``."""
    readable, shapes = _where_it_works(preprocessing.declared_shape, encoded)
    kinds = tf.map_fn(preprocessing.image_format, encoded, fn_output_signature=tf.int32)
    height, width = shapes[:, 0], shapes[:, 1]
    unknown = tf.equal(kinds, preprocessing.UNKNOWN_FORMAT)
    unreadable = tf.logical_and(tf.logical_not(unknown), tf.logical_not(readable))
    empty = tf.logical_and(tf.logical_not(unknown), tf.logical_or(height <= 0, width <= 0))
    # Not height * width > max_pixels: two int64 sides can overflow and wrap negative.
    too_large = height > max_pixels // tf.maximum(width, 1)
    size = tf.strings.as_string(tf.strings.length(encoded))
    declares = tf.strings.join(["declares ", tf.strings.as_string(width), "x", tf.strings.as_string(height),
                                " pixels"])  # fmt: skip
    faults = tf.where(
        unknown,
        tf.strings.join(["(", size, f" bytes) is not a {ENCODING_NAMES} image"]),
        tf.where(
            unreadable,
            _damaged(encoded, kinds),
            tf.where(
                empty,
                tf.strings.join([declares, ": an empty image"]),
                tf.strings.join([declares, " (", tf.strings.as_string(height * width), "), above the ",
                                 f"limit of {max_pixels} ({IMAGE_LIMIT})"]),
            ),
        ),
    )  # fmt: skip
    bad = tf.reduce_any(tf.stack([unknown, unreadable, empty, too_large]), axis=0)
    return height, width, kinds, tf.where(bad, faults, "")


def _damaged(encoded: tf.Tensor, kinds: tf.Tensor) -> tf.Tensor:
    """``[B]``: the reason of an image whose body or header does not decode."""
    formats = tf.constant([name for name, _ in IMAGE_ENCODINGS])
    size = tf.strings.as_string(tf.strings.length(encoded))
    name = tf.gather(formats, tf.maximum(kinds, 0))
    return tf.strings.join(
        ["(", size, " bytes) does not decode as ", name, ": its data is damaged or cut short"]
    )


def check_declared_sizes(
    encoded: tf.Tensor,
    max_pixels: int,
    input_name: str = IMAGES,
    max_batch_pixels: int = DEFAULT_MAX_BATCH_PIXELS,
) -> tf.Tensor:
    """``encoded`` ``[B]``, once every header is of a format ``decode_image`` reads and declares
    1 to ``max_pixels`` pixels, and all of them together at most ``max_batch_pixels``; else
    InvalidArgumentError naming the first bad image, or the batch when every image is good.

    For ``transform_features``, whose callers (TFMA) send the pipeline's own examples; the image
    signatures refuse row by row instead (``refused_images``). Read from the headers, before
    anything is decoded, inside the signature, so the real TF Serving refuses a decompression
    bomb too: a few KB of JPEG or PNG can declare 30000x30000, which decoding and the masks at
    original resolution would allocate. The batch budget because the per-image limit alone
    bounds one image, not a request: 16 JPEGs of 10 KB, each declaring 2500x2500 (100 MP), cost
    1.15 GB and 12 s, and nothing bounded how many a request held. Not GIF: its logical screen
    can understate its frames (``preprocessing.declared_shape``). The returned tensor depends on
    the check, so nothing downstream runs before it.
    """
    height, width, _, faults = _header_faults(encoded, max_pixels)
    bad = tf.strings.length(faults) > 0
    names = tf.strings.join([f"{input_name}[", tf.strings.as_string(tf.range(tf.size(encoded))), "] "])
    # Only good images count (a refused one's sides can wrap their product), so each term is at
    # most max_pixels and the int64 sum cannot overflow for fewer than 9.2e18 / max_pixels
    # images: 3.7e11 at 25 MP, a 3.7 TB request even of 10-byte GIF headers.
    good = tf.logical_not(bad)
    total = tf.reduce_sum(tf.where(good, height, 0) * tf.where(good, width, 0))
    over_budget = total > max_batch_pixels
    batch_message = tf.strings.join(
        ["the batch declares ", tf.strings.as_string(total), " pixels in ",
         tf.strings.as_string(tf.size(encoded)), " images, above the limit of ",
         f"{max_batch_pixels} ({BATCH_LIMIT})"]
    )  # fmt: skip
    # The first bad image if any, else the batch: a request is refused for one reason, the first.
    messages = tf.strings.join([names, faults])
    reason = tf.concat([tf.boolean_mask(messages, bad), [batch_message]], axis=0)[:1]
    check = tf.debugging.Assert(
        tf.logical_not(tf.logical_or(tf.reduce_any(bad), over_budget)), [reason], summarize=1
    )
    with tf.control_dependencies([check]):
        return tf.identity(encoded)


def refused_images(encoded: tf.Tensor, max_pixels: int, max_batch_pixels: int) -> tf.Tensor:
    """``[B]`` string: why each image of ``encoded`` is refused, "" for one to serve; never fails.

    In order: the headers (``_header_faults``); the batch budget, the images taken in order and
    one refused when with the images taken before it the batch would declare more than
    ``max_batch_pixels`` (a later, smaller one may still fit); then the bodies that do not
    decode. A reason names no row: when TF Serving's batching merges requests, the
    row's index in the merged batch is not the client's, so the front end that owns the row
    names it (``core.signatures.refusals``). Its cost, measured on 2 cores: 4 ms a call for one
    500x375 JPEG (two datasets, and a decode that the Transform graph does again), which took
    the tiny model's serving_default from 19 to 23 ms (57 to 60 ms for 4 such images).
    """
    height, width, kinds, faults = _header_faults(encoded, max_pixels)
    fine = tf.equal(tf.strings.length(faults), 0)
    pixels = tf.where(fine, height * width, 0)  # each at most max_pixels: no overflow below

    def take(state, image_pixels):  # (pixels taken so far, those taken before this image)
        total, _ = state
        return tf.where(total + image_pixels <= max_batch_pixels, total + image_pixels, total), total

    _, before = tf.scan(take, pixels, initializer=(tf.constant(0, tf.int64), tf.constant(0, tf.int64)))
    over = tf.logical_and(fine, before + pixels > max_batch_pixels)
    faults = tf.where(
        over,
        tf.strings.join(["declares ", tf.strings.as_string(width), "x", tf.strings.as_string(height),
                         " pixels (", tf.strings.as_string(pixels), "): with the ",
                         tf.strings.as_string(before), " of the batch's images before it, above the ",
                         f"limit of {max_batch_pixels} ({BATCH_LIMIT})"]),
        faults,
    )  # fmt: skip
    fine = tf.logical_and(fine, tf.logical_not(over))
    # A body cut short or damaged behind a good header: every truncation of a JPEG, PNG, GIF or
    # BMP fails decode_image (none is recovered; tests/test_export.py), which would fail the
    # call. Only images that passed the checks above are decoded, so nothing large is. (A JPEG
    # whose scan data ends early but whose file ends whole decodes, the rest grey: libjpeg's.)
    decodes, _ = _where_it_works(
        lambda data: tf.shape(preprocessing.decode_image(data)), tf.where(fine, encoded, placeholder_image())
    )
    return tf.where(tf.logical_not(decodes), _damaged(encoded, kinds), faults)


def make_signatures(
    model: keras.Model,
    tft_output: tft.TFTransformOutput,
    with_probabilities: bool = False,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    max_batch_pixels: int = DEFAULT_MAX_BATCH_PIXELS,
    tta: Optional[TestTimeAugmentation] = None,
) -> dict:
    """The signatures to pass to ``model.save(..., signatures=...)``; with ``tta``, every
    predicting one averages the logits of its views (``trainer/tta.py``)."""
    # Attached to the model so that the Transform graph's assets are saved with it.
    model.tft_layer = tft_output.transform_features_layer()
    logits_of = AveragedLogits(model, tta) if tta else functools.partial(model, training=False)
    raw_spec = tft_output.raw_feature_spec()
    image_spec = {features.IMAGE_KEY: raw_spec[features.IMAGE_KEY]}

    def predict(encoded: tf.Tensor, **outputs) -> dict:
        # Batch-safe: a refused image's row gets its reason in ``error`` and a placeholder in its
        # place, so a merged batch serves its other rows.
        errors = refused_images(encoded, max_image_pixels, max_batch_pixels)
        refused = tf.strings.length(errors) > 0
        images = tf.where(refused, placeholder_image(), encoded)
        transformed = model.tft_layer({features.IMAGE_KEY: tf.reshape(images, [-1, 1])})
        logits = logits_of(transformed[features.IMAGE])
        result = to_original_resolution(
            logits, transformed[features.ORIGINAL_HEIGHT], transformed[features.ORIGINAL_WIDTH],
            refused=refused, **outputs,
        )  # fmt: skip
        return {**result, ERROR: errors}

    def parse_images(serialized: tf.Tensor) -> tf.Tensor:
        return tf.reshape(tf.io.parse_example(serialized, image_spec)[features.IMAGE_KEY], [-1])

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=IMAGES)])
    def serve_images(images):
        return predict(images, with_probabilities=with_probabilities)

    # REST clients above all: TF Serving's REST API answers every output of a signature (it has
    # no output_filter), so the PNG masks need a signature without the JSON-costly class_ids.
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=IMAGES)])
    def serve_png(images):
        return predict(images, with_class_ids=False, with_png=True)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=EXAMPLES)])
    def serve_examples(serialized):
        return predict(parse_images(serialized), with_probabilities=with_probabilities)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=EXAMPLES)])
    def transform_features(serialized):
        # Guarded like the predicting signatures: the Transform graph decodes the image, and a
        # 1 KB example can declare 12000x12000 (2 GB decoded).
        raw = tf.io.parse_example(serialized, raw_spec)
        if features.IMAGE_KEY in raw:
            image = raw[features.IMAGE_KEY]
            checked = check_declared_sizes(
                tf.reshape(image, [-1]), max_image_pixels, EXAMPLES, max_batch_pixels
            )
            raw[features.IMAGE_KEY] = tf.reshape(checked, tf.shape(image))
        return model.tft_layer(raw)

    # The tf.functions themselves, not concrete functions traced here: under a distribution
    # strategy a concrete function captures distributed variables and cannot be saved.
    return {
        SERVING_DEFAULT: serve_images,
        SERVING_PNG: serve_png,
        SERVING_EXAMPLES: serve_examples,
        TRANSFORM_FEATURES: transform_features,
    }


def export(
    model: keras.Model,
    tft_output: tft.TFTransformOutput,
    export_dir: str,
    dataset: dataset_spec.DatasetSpec,
    with_probabilities: bool = False,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    max_batch_pixels: int = DEFAULT_MAX_BATCH_PIXELS,
    tta: Optional[TestTimeAugmentation] = None,
) -> None:
    """Saves ``model`` as a SavedModel with the signatures above (with ``tta``, test-time
    augmented), and ``dataset`` (the classes it predicts) as ``artifacts.MODEL_SPEC_FILE``.

    ``save_traces=False``: TF Serving and TFMA need only the signatures; tracing every layer's
    ``call`` for Keras revival made saving 10x slower, and the layers revive from ``get_config``.
    """
    channels = model.output_shape[-1]
    if channels != dataset.num_classes:
        raise ValueError(
            f"the model predicts {channels} classes but dataset {dataset.name!r} has {dataset.num_classes}: "
            "it would be served with the wrong class names"
        )
    model.save(
        export_dir,
        save_format="tf",
        save_traces=False,
        signatures=make_signatures(
            model, tft_output, with_probabilities, max_image_pixels, max_batch_pixels, tta
        ),
    )
    tf.io.gfile.makedirs(os.path.join(export_dir, artifacts.ASSETS_EXTRA))
    dataset_spec.write(dataset, os.path.join(export_dir, artifacts.ASSETS_EXTRA))
