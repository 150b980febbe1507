"""The trainer's input pipeline: raw TFRecords -> Transform graph -> augmentation -> batches.

Transform runs with ``materialize=False`` (README: a materialized 512 px example is 64x the raw
one), so the transform graph is applied here, on batches, by the layer TFT exports. Random work
lives here and only here: scale, crop and flip, each moving image and label together, labels
resized nearest and padded with 255. Every element has a fully static shape and batches drop
their remainder, as TPUs require.
"""

import random
from typing import Optional, Sequence

import tensorflow as tf
import tensorflow_transform as tft

from core import features
from transform import preprocessing

AUTOTUNE = tf.data.AUTOTUNE


def augment(
    image: tf.Tensor,
    label: tf.Tensor,
    size: int,
    seed: tf.Tensor,
    min_scale: float = 0.5,
    max_scale: float = 2.0,
    pad_value: float = preprocessing.IMAGE_PAD_VALUE,
) -> tuple:
    """Random scale, crop back to ``size`` (padding label 255) and horizontal flip, jointly.

    ``seed`` is this element's key for TF's stateless random ops (shape ``[2]`` integers): the
    same key gives the same augmentation, in eager code as in ``tf.data``, however many threads
    map. Scale, crop and flip each draw from their own key split off it, so they are
    independent; stateful ops sharing one op seed drew them from one stream, which flipped every
    image scaled below 1.25 and none above.
    """
    scale_key, crop_key, flip_key = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    scale = tf.random.stateless_uniform([], scale_key, min_scale, max_scale)
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
    stacked = tf.image.stateless_random_crop(stacked, [size, size, 4], seed=crop_key)
    stacked = tf.cond(
        tf.random.stateless_uniform([], flip_key) < 0.5, lambda: tf.reverse(stacked, [1]), lambda: stacked
    )
    image = tf.ensure_shape(stacked[..., :3], [size, size, 3])
    label = tf.ensure_shape(tf.cast(stacked[..., 3], tf.int64), [size, size])
    return image, label


def count_records(file_pattern) -> int:
    """Records in the gzipped TFRecord files of ``file_pattern`` (a pattern or a list of them).

    Evaluation needs the count to give every worker the same number of batches; reading the
    raw records costs a fraction of transforming them (1,449 VOC val records: 79 MB).
    """
    files = _files(file_pattern)
    if not files:
        return 0
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP", num_parallel_reads=4)
    return int(dataset.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))


def _record_id(serialized: tf.Tensor) -> tf.Tensor:
    """A serialized record's id, its ``image/filename``."""
    spec = {features.FILENAME_KEY: tf.io.FixedLenFeature([], tf.string)}
    return tf.io.parse_single_example(serialized, spec)[features.FILENAME_KEY]


def record_ids(file_pattern) -> list:
    """The ids (``image/filename``) of the records of ``file_pattern``, sorted."""
    files = _files(file_pattern)
    if not files:
        return []
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP", num_parallel_reads=4)
    ids = dataset.map(_record_id, num_parallel_calls=AUTOTUNE)
    return sorted({bytes(i) for i in ids.as_numpy_iterator()})


def _files(file_pattern) -> list:
    """The files of a glob pattern or a list of them, sorted: the same order on every worker."""
    patterns = [file_pattern] if isinstance(file_pattern, str) else file_pattern
    return sorted(f for p in patterns for f in tf.io.gfile.glob(p))


def id_not_in(ids: Sequence[bytes]):
    """A filter of serialized records: true where the record's ``image/filename`` is not in ``ids``."""
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(list(ids)), tf.ones([len(ids)], tf.int64)), 0
    )

    def keep(serialized):
        return tf.equal(table.lookup(_record_id(serialized)), 0)

    return keep


def resumed_seed(seed: int, start_step: int) -> int:
    """The data seed of a training that starts at ``start_step``: ``seed`` itself at step 0,
    else a seed in ``[0, 2**31)`` drawn by TF's stateless uniform from the key ``(seed,
    start_step)``, one for each step (deterministic: a second restart at the same step draws as
    the first did). Not one half of a ``stateless_fold_in`` key: TF 2.16 folds ``k`` into
    ``[1, 0]`` as ``[-412061107, k]``, one first half for every step."""
    if not start_step:
        return seed
    key = tf.constant([seed, start_step], tf.int64)
    return int(tf.random.stateless_uniform([], key, minval=0, maxval=2**31, dtype=tf.int64))


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
    num_shards: int = 1,
    shard_index: int = 0,
    num_batches: Optional[int] = None,
    exclude_ids: Sequence[bytes] = (),
    start_step: int = 0,
) -> tf.data.Dataset:
    """``(image [B, S, S, 3] float32, label [B, S, S] int64)`` batches from raw gzipped TFRecords.

    Training: files and records shuffled, repeated forever, augmented. Evaluation: one pass, no
    augmentation, and filled up with all-void examples to whole batches rather than dropping
    the remainder, so every image counts while shapes stay static (void pixels count for no
    metric and add nothing to the loss). ``image_pad_value`` must match Transform's padding: 0
    when it normalizes images.

    ``num_shards`` / ``shard_index``: this input pipeline's part of the data when there are
    several (one per worker: ``tf.distribute.InputContext``). The shard is taken from the raw
    records, before the Transform graph, so no pipeline transforms what it then drops. Training
    takes whole files when there are enough of them, else every ``num_shards``-th record.
    Evaluation always takes every ``num_shards``-th record, so shards differ by one image at
    most, and pads to ``num_batches`` batches: give every shard the same number (enough for
    ``ceil(records / num_shards)`` images) and all run the same evaluation steps, as
    collectives need. TF's auto-sharding cannot do this: FILE sharding refuses a dataset with
    filler elements appended, DATA sharding transforms everything on every worker.

    With a ``seed``, the same seed gives the same batches: reads are deterministic and each
    element's augmentation is keyed by (seed, shard, its index in the stream), so within one
    iteration of the dataset (one ``fit``: training repeats forever) the next epoch draws anew.
    Without one, a seed is drawn from Python's ``random`` (seeded by
    ``keras.utils.set_random_seed`` in training).

    ``exclude_ids``: records whose ``image/filename`` is one of these are left out (training on a
    window of spans: an id that is eval in any span never trains).

    ``start_step``: the step a training resumes from (its backup's, ``callbacks.steps_backed_up``),
    folded into ``seed`` (``resumed_seed``), shuffles and augmentation alike. The stream starts
    again with the process: with the seed unchanged, a training resumed at step S drew at its
    step S + k the batch of the killed run's step k, the same images in the same order with the
    same draws, so the steps before the kill were taken twice on the same data and the rest of
    the stream never came. Step 0, a fresh run, keeps ``seed`` as it is.
    """
    files = _files(file_pattern)
    if not files:
        raise FileNotFoundError(f"no TFRecord files match {file_pattern}")
    if seed is None:
        seed = random.randrange(2**31)
    seed = resumed_seed(seed, start_step)
    by_file = training and len(files) >= num_shards
    names = tf.data.Dataset.from_tensor_slices(files)
    if by_file and num_shards > 1:
        names = names.shard(num_shards, shard_index)
    if training:
        names = names.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    dataset = names.interleave(
        lambda f: tf.data.TFRecordDataset(f, compression_type="GZIP"),
        cycle_length=4,
        num_parallel_calls=AUTOTUNE,
        deterministic=True,
    )
    if num_shards > 1 and not by_file:
        dataset = dataset.shard(num_shards, shard_index)
    if exclude_ids:
        dataset = dataset.filter(id_not_in(exclude_ids))
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
        base = tf.constant([seed, shard_index], tf.int64)
        dataset = dataset.enumerate().map(
            lambda i, example: augment(
                *example,
                size,
                tf.random.experimental.stateless_fold_in(base, i),
                min_scale,
                max_scale,
                pad_value=image_pad_value,
            ),
            num_parallel_calls=AUTOTUNE,
        )
    if not training:
        filler = tf.data.Dataset.from_tensors(
            (
                tf.fill([size, size, 3], tf.constant(image_pad_value, tf.float32)),
                tf.fill([size, size], tf.constant(features.IGNORE_LABEL, tf.int64)),
            )
        )
        if num_batches is None:
            dataset = dataset.concatenate(filler.repeat(batch_size - 1))
        else:
            dataset = dataset.concatenate(filler.repeat()).take(num_batches * batch_size)
    options = tf.data.Options()
    # Sharded above, by this function; the strategy must not shard again.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return dataset.with_options(options).batch(batch_size, drop_remainder=True).prefetch(AUTOTUNE)
