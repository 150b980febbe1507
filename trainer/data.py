"""The trainer's input pipeline: raw TFRecords -> Transform graph -> augmentation -> batches.

Transform runs with ``materialize=False`` (README: a materialized 512 px example is 64x the raw
one), so the transform graph is applied here, on batches, by the layer TFT exports. Random work
lives here and only here: scale, crop and flip, each moving image and label together, labels
resized nearest and padded with 255. Every element has a fully static shape and batches drop
their remainder, as TPUs require.
"""

from typing import Optional

import tensorflow as tf
import tensorflow_transform as tft

from pipeline import features
from transform import preprocessing

AUTOTUNE = tf.data.AUTOTUNE


def augment(
    image: tf.Tensor,
    label: tf.Tensor,
    size: int,
    min_scale: float = 0.5,
    max_scale: float = 2.0,
    pad_value: float = preprocessing.IMAGE_PAD_VALUE,
    seed: Optional[int] = None,
) -> tuple:
    """Random scale, crop back to ``size`` (padding label 255) and horizontal flip, jointly."""
    scale = tf.random.uniform([], min_scale, max_scale, seed=seed)
    scaled = tf.cast(tf.round(scale * size), tf.int32)
    image = tf.image.resize(image, [scaled, scaled], method="bilinear")
    label = tf.image.resize(label[..., None], [scaled, scaled], method="nearest")
    # Pad to at least `size`, image with its neutral value and label with 255, then one crop
    # of image and label stacked, so they move together.
    extent = tf.maximum(scaled, size)
    image = tf.pad(image - pad_value, [[0, extent - scaled], [0, extent - scaled], [0, 0]]) + pad_value
    label = tf.pad(
        label, [[0, extent - scaled], [0, extent - scaled], [0, 0]], constant_values=features.IGNORE_LABEL
    )
    stacked = tf.concat([image, tf.cast(label, tf.float32)], axis=-1)
    stacked = tf.image.random_crop(stacked, [size, size, 4], seed=seed)
    stacked = tf.cond(
        tf.random.uniform([], seed=seed) < 0.5, lambda: tf.reverse(stacked, [1]), lambda: stacked
    )
    image = tf.ensure_shape(stacked[..., :3], [size, size, 3])
    label = tf.ensure_shape(tf.cast(stacked[..., 3], tf.int64), [size, size])
    return image, label


def make_dataset(
    file_pattern,
    tft_output: tft.TFTransformOutput,
    batch_size: int,
    training: bool,
    augment_images: bool = True,
    shuffle_buffer: int = 256,
    seed: Optional[int] = None,
    image_pad_value: float = preprocessing.IMAGE_PAD_VALUE,
    min_scale: float = 0.5,
    max_scale: float = 2.0,
    shard_by_file: bool = True,
) -> tf.data.Dataset:
    """``(image [B, S, S, 3] float32, label [B, S, S] int64)`` batches from raw gzipped TFRecords.

    Training: files and records shuffled, repeated forever, augmented. Evaluation: one pass in
    file order, no augmentation, and the last batch filled up with all-void examples rather
    than dropped, so every image counts while shapes stay static (void pixels count for no
    metric and add nothing to the loss). ``image_pad_value`` must match Transform's padding: 0
    when it normalizes images. ``shard_by_file``: multi-worker strategies give each worker
    whole files; set it off when there are fewer files than workers.
    """
    files = tf.data.Dataset.list_files(file_pattern, shuffle=training, seed=seed)
    dataset = files.interleave(
        lambda f: tf.data.TFRecordDataset(f, compression_type="GZIP"),
        cycle_length=4,
        num_parallel_calls=AUTOTUNE,
        deterministic=not training,
    )
    if training:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True).repeat()
    spec = tft_output.raw_feature_spec()
    layer = tft_output.transform_features_layer()
    size = tft_output.transformed_feature_spec()[features.LABEL].shape[0]

    def transform(serialized):
        out = layer(tf.io.parse_example(serialized, spec))
        return out[features.IMAGE], out[features.LABEL]

    # The transform graph runs on batches (it was built for them); augmentation per example.
    dataset = dataset.batch(batch_size).map(transform, num_parallel_calls=AUTOTUNE).unbatch()
    if training and augment_images:
        dataset = dataset.map(
            lambda i, lab: augment(i, lab, size, min_scale, max_scale, pad_value=image_pad_value, seed=seed),
            num_parallel_calls=AUTOTUNE,
        )
    if not training:
        filler = (
            tf.fill([size, size, 3], tf.constant(image_pad_value, tf.float32)),
            tf.fill([size, size], tf.constant(features.IGNORE_LABEL, tf.int64)),
        )
        dataset = dataset.concatenate(tf.data.Dataset.from_tensors(filler).repeat(batch_size - 1))
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.FILE
        if shard_by_file
        else tf.data.experimental.AutoShardPolicy.DATA
    )
    dataset = dataset.with_options(options)
    return dataset.batch(batch_size, drop_remainder=True).prefetch(AUTOTUNE)
