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

The image signatures first read each image's size from its header and refuse, before decoding
anything, one that declares more than ``max_image_pixels`` (``trainer.max_image_pixels``), and
a batch that declares more than ``max_batch_pixels`` in all (``trainer.max_batch_pixels``), so
the real TF Serving is as protected as ``deeplab-tfx serve``.
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
    CLASS_IDS,
    CLASS_IDS_PNG,
    ENCODING_NAMES,
    EXAMPLES,
    HEIGHT,
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


def to_original_resolution(
    logits: tf.Tensor,
    height: tf.Tensor,
    width: tf.Tensor,
    with_probabilities: bool = False,
    with_class_ids: bool = True,
    with_png: bool = False,
) -> dict:
    """Per image: crop the un-padded region, resize logits to ``height x width``, argmax.

    ``class_ids`` pads each mask with 255 to the largest of the batch; ``class_ids_png_bytes``
    (``with_png``) is each mask alone as a grey PNG of the ids (DeepLab's ``SegmentationClassRaw``
    format): 2-8 KB for a 500x375 mask where ``class_ids`` is 188 KB, and 0.5 MB as REST's JSON.
    """
    size = logits.shape[1]

    def one(args):
        image_logits, h, w = args
        rh, rw = preprocessing.resized_shape(h, w, size)
        region = tf.image.resize(
            image_logits[:rh, :rw], tf.stack([tf.cast(h, tf.int32), tf.cast(w, tf.int32)]), method="bilinear"
        )
        ids = tf.cast(tf.argmax(region, axis=-1), tf.uint8)
        out = {}
        if with_class_ids:
            out[CLASS_IDS] = tf.RaggedTensor.from_tensor(ids)
        if with_png:
            out[CLASS_IDS_PNG] = tf.io.encode_png(ids[..., None], compression=PNG_COMPRESSION)
        if with_probabilities:
            out[PROBABILITIES] = tf.RaggedTensor.from_tensor(tf.nn.softmax(region))
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
    outputs = tf.map_fn(one, (logits, height, width), fn_output_signature=signature)
    result = {HEIGHT: tf.cast(height, tf.int64), WIDTH: tf.cast(width, tf.int64)}
    if with_class_ids:
        result[CLASS_IDS] = outputs[CLASS_IDS].to_tensor(default_value=features.IGNORE_LABEL)
    if with_png:
        result[CLASS_IDS_PNG] = outputs[CLASS_IDS_PNG]
    if with_probabilities:
        result[PROBABILITIES] = outputs[PROBABILITIES].to_tensor(default_value=0.0)
    return result


def check_declared_sizes(
    encoded: tf.Tensor,
    max_pixels: int,
    input_name: str = IMAGES,
    max_batch_pixels: int = DEFAULT_MAX_BATCH_PIXELS,
) -> tf.Tensor:
    """``encoded`` ``[B]``, once every header is of a format ``decode_image`` reads and declares
    1 to ``max_pixels`` pixels, and all of them together at most ``max_batch_pixels``; else
    InvalidArgumentError naming the first bad image, or the batch when every image is good.

    Read from the headers, before anything is decoded, inside the signature, so the real TF
    Serving refuses a decompression bomb too: a few KB of JPEG or PNG can declare 30000x30000,
    which decoding and the masks at original resolution (N float32 logits per pixel) would
    allocate. The batch budget because the per-image limit alone bounds one image, not a
    request: 16 JPEGs of 10 KB, each declaring 2500x2500 (100 MP), cost 1.15 GB and 12 s, and
    nothing bounded how many a request held. Not GIF: its logical screen can understate its
    frames (``preprocessing.declared_shape``). The returned tensor depends on the check, so
    nothing downstream runs before it.
    """
    shapes = tf.map_fn(
        preprocessing.declared_shape, encoded, fn_output_signature=tf.TensorSpec([2], tf.int64)
    )
    kinds = tf.map_fn(preprocessing.image_format, encoded, fn_output_signature=tf.int32)
    height, width = shapes[:, 0], shapes[:, 1]
    unknown = tf.equal(kinds, preprocessing.UNKNOWN_FORMAT)
    empty = tf.logical_and(tf.logical_not(unknown), tf.logical_or(height <= 0, width <= 0))
    # Not height * width > max_pixels: two int64 sides can overflow and wrap negative.
    too_large = height > max_pixels // tf.maximum(width, 1)
    name = tf.strings.join([f"{input_name}[", tf.strings.as_string(tf.range(tf.size(encoded))), "] "])
    declares = tf.strings.join(
        [name, "declares ", tf.strings.as_string(width), "x", tf.strings.as_string(height), " pixels"]
    )
    messages = tf.where(
        unknown,
        tf.strings.join(
            [name, "(", tf.strings.as_string(tf.strings.length(encoded)), " bytes) is not a ",
             ENCODING_NAMES, " image"]
        ),
        tf.where(
            empty,
            tf.strings.join([declares, ": an empty image"]),
            tf.strings.join(
                [declares, " (", tf.strings.as_string(height * width), "), above the limit of ",
                 f"{max_pixels} (trainer.max_image_pixels)"]
            ),
        ),
    )  # fmt: skip
    bad = tf.logical_or(unknown, tf.logical_or(empty, too_large))
    # Only good images count (a refused one's sides can wrap their product), so each term is at
    # most max_pixels and the int64 sum cannot overflow for fewer than 9.2e18 / max_pixels
    # images: 3.7e11 at 25 MP, a 3.7 TB request even of 10-byte GIF headers.
    good = tf.logical_not(bad)
    total = tf.reduce_sum(tf.where(good, height, 0) * tf.where(good, width, 0))
    over_budget = total > max_batch_pixels
    batch_message = tf.strings.join(
        ["the batch declares ", tf.strings.as_string(total), " pixels in ",
         tf.strings.as_string(tf.size(encoded)), " images, above the limit of ",
         f"{max_batch_pixels} (trainer.max_batch_pixels)"]
    )  # fmt: skip
    # The first bad image if any, else the batch: a request is refused for one reason, the first.
    reason = tf.concat([tf.boolean_mask(messages, bad), [batch_message]], axis=0)[:1]
    check = tf.debugging.Assert(
        tf.logical_not(tf.logical_or(tf.reduce_any(bad), over_budget)), [reason], summarize=1
    )
    with tf.control_dependencies([check]):
        return tf.identity(encoded)


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

    def predict(encoded: tf.Tensor, input_name: str, **outputs) -> dict:
        encoded = check_declared_sizes(encoded, max_image_pixels, input_name, max_batch_pixels)
        transformed = model.tft_layer({features.IMAGE_KEY: tf.reshape(encoded, [-1, 1])})
        logits = logits_of(transformed[features.IMAGE])
        return to_original_resolution(
            logits, transformed[features.ORIGINAL_HEIGHT], transformed[features.ORIGINAL_WIDTH], **outputs
        )

    def parse_images(serialized: tf.Tensor) -> tf.Tensor:
        return tf.reshape(tf.io.parse_example(serialized, image_spec)[features.IMAGE_KEY], [-1])

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=IMAGES)])
    def serve_images(images):
        return predict(images, IMAGES, with_probabilities=with_probabilities)

    # REST clients above all: TF Serving's REST API answers every output of a signature (it has
    # no output_filter), so the PNG masks need a signature without the JSON-costly class_ids.
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=IMAGES)])
    def serve_png(images):
        return predict(images, IMAGES, with_class_ids=False, with_png=True)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=EXAMPLES)])
    def serve_examples(serialized):
        return predict(parse_images(serialized), EXAMPLES, with_probabilities=with_probabilities)

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
