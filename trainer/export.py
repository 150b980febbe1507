"""The exported SavedModel's signatures: the one module that defines them.

* ``serving_default``: ``images`` (encoded JPEG bytes, ``[None]`` string) -> ``class_ids``
  ``[B, H_max, W_max]`` uint8, each image's mask at its own resolution, padded with 255 to the
  largest in the batch, plus ``height`` and ``width`` ``[B]`` to crop them. Class ids, not
  21-channel float maps: a 500x375 mask is 188 KB, well inside gRPC's 4 MiB default.
  ``with_probabilities=True`` adds ``probabilities`` ``[B, H_max, W_max, 21]`` float32.
* ``serving_examples``: serialized raw tf.Examples (TFMA, InfraValidator), same outputs.
* ``transform_features``: serialized raw tf.Examples -> the Transform outputs (TFMA).

All run the Transform graph exported by the Transform component, so serving sees exactly the
preprocessing of training.
"""

import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras

from pipeline import features
from transform import preprocessing

SERVING_DEFAULT = "serving_default"
SERVING_EXAMPLES = "serving_examples"
TRANSFORM_FEATURES = "transform_features"


def to_original_resolution(
    logits: tf.Tensor, height: tf.Tensor, width: tf.Tensor, with_probabilities: bool = False
) -> dict:
    """Per image: crop the un-padded region, resize logits to ``height x width``, argmax; pad with 255."""
    size = logits.shape[1]

    def one(args):
        image_logits, h, w = args
        rh, rw = preprocessing.resized_shape(h, w, size)
        region = tf.image.resize(
            image_logits[:rh, :rw], tf.stack([tf.cast(h, tf.int32), tf.cast(w, tf.int32)]), method="bilinear"
        )
        out = [tf.RaggedTensor.from_tensor(tf.cast(tf.argmax(region, axis=-1), tf.uint8))]
        if with_probabilities:
            out.append(tf.RaggedTensor.from_tensor(tf.nn.softmax(region)))
        return tuple(out)

    signature = [tf.RaggedTensorSpec([None, None], tf.uint8, ragged_rank=1)]
    if with_probabilities:
        signature.append(tf.RaggedTensorSpec([None, None, logits.shape[-1]], tf.float32, ragged_rank=1))
    outputs = tf.map_fn(one, (logits, height, width), fn_output_signature=tuple(signature))
    result = {
        "class_ids": outputs[0].to_tensor(default_value=features.IGNORE_LABEL),
        "height": tf.cast(height, tf.int64),
        "width": tf.cast(width, tf.int64),
    }
    if with_probabilities:
        result["probabilities"] = outputs[1].to_tensor(default_value=0.0)
    return result


def make_signatures(
    model: keras.Model, tft_output: tft.TFTransformOutput, with_probabilities: bool = False
) -> dict:
    """The signatures to pass to ``model.save(..., signatures=...)``."""
    # Attached to the model so that the Transform graph's assets are saved with it.
    model.tft_layer = tft_output.transform_features_layer()
    raw_spec = tft_output.raw_feature_spec()
    image_spec = {features.IMAGE_KEY: raw_spec[features.IMAGE_KEY]}

    def predict(raw: dict) -> dict:
        transformed = model.tft_layer(raw)
        logits = model(transformed[features.IMAGE], training=False)
        return to_original_resolution(
            logits,
            transformed[features.ORIGINAL_HEIGHT],
            transformed[features.ORIGINAL_WIDTH],
            with_probabilities,
        )

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    def serve_images(images):
        return predict({features.IMAGE_KEY: tf.reshape(images, [-1, 1])})

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_examples(serialized):
        return predict(tf.io.parse_example(serialized, image_spec))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def transform_features(serialized):
        return model.tft_layer(tf.io.parse_example(serialized, raw_spec))

    # The tf.functions themselves, not concrete functions traced here: under a distribution
    # strategy a concrete function captures distributed variables and cannot be saved.
    return {
        SERVING_DEFAULT: serve_images,
        SERVING_EXAMPLES: serve_examples,
        TRANSFORM_FEATURES: transform_features,
    }


def export(
    model: keras.Model, tft_output: tft.TFTransformOutput, export_dir: str, with_probabilities: bool = False
) -> None:
    """Saves ``model`` as a SavedModel with the signatures above.

    ``save_traces=False``: TF Serving and TFMA need only the signatures; tracing every layer's
    ``call`` for Keras revival made saving 10x slower, and the layers revive from ``get_config``.
    """
    model.save(
        export_dir,
        save_format="tf",
        save_traces=False,
        signatures=make_signatures(model, tft_output, with_probabilities),
    )
