"""The trainer's input pipeline: joint augmentation, static shapes, deterministic evaluation."""

import math
import os

import numpy as np
import pytest
import tensorflow as tf

from core import features
from tests.conftest import MAX_SIDE, read_examples
from trainer import data

SIZE = 32


def _scene(seed):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 21, (SIZE, SIZE)).astype(np.int64)
    label[:4] = 255
    # Channel 0 of the image is the label itself, so any misalignment shows.
    image = np.stack([label, label * 0 + 7, label * 0 + 9], -1).astype(np.float32)
    return tf.constant(image), tf.constant(label)


def _key(i):
    return tf.constant([1234, i], tf.int64)


def test_crop_and_flip_move_image_and_label_together():
    flipped = 0
    for seed in range(12):
        image, label = _scene(seed)
        out_image, out_label = data.augment(image, label, SIZE, _key(seed), min_scale=1.0, max_scale=1.0)
        np.testing.assert_array_equal(out_image.numpy()[..., 0], out_label.numpy())
        flipped += not np.array_equal(out_label.numpy(), label.numpy())
        assert np.array_equal(out_label.numpy(), label.numpy()) or np.array_equal(
            out_label.numpy(), label.numpy()[:, ::-1]
        )
    assert 0 < flipped < 12, "about half the images are flipped"


def test_zoom_out_pads_labels_with_255_and_keeps_shapes_static():
    image, label = _scene(0)
    out_image, out_label = data.augment(image, label, SIZE, _key(0), min_scale=0.5, max_scale=0.5)
    assert out_image.shape == (SIZE, SIZE, 3) and out_label.shape == (SIZE, SIZE)
    values = set(np.unique(out_label.numpy()))
    assert values <= set(np.unique(label.numpy())) | {255}
    assert (out_label.numpy() == 255).mean() >= 0.75, "three quarters of the crop is padding"


# 1,000 augmentations of one test pattern, inside tf.data as in training. The image's
# channels are its own x and y coordinates and its label, so each output tells the scale
# (the slope of x), the flip (its sign) and the crop (where x and y start) that made it.

PATTERN = 64
DRAWS = 1000


def _pattern():
    rng = np.random.default_rng(5)
    label = np.kron(rng.integers(0, 21, (8, 8)), np.ones((8, 8), np.int64))  # 8 px squares of classes
    y, x = np.mgrid[0:PATTERN, 0:PATTERN]
    return np.stack([x, y, label], -1).astype(np.float32), label


@pytest.fixture(scope="module")
def draws():
    image, label = _pattern()
    base = tf.constant([7, 0], tf.int64)
    dataset = tf.data.Dataset.range(DRAWS).map(
        lambda i: data.augment(
            image, label, PATTERN, tf.random.experimental.stateless_fold_in(base, i), 0.5, 2.0
        ),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    images, labels = zip(*[(i.numpy(), lab.numpy()) for i, lab in dataset], strict=True)
    return np.stack(images), np.stack(labels)


def _geometry(image, label):
    """(scale, flipped, source x at the left edge, source y at the top) of one augmented pattern."""
    row = image[0, :, 0][label[0] != 255]  # row 0 always shows the image (padding goes bottom/right)
    slope = np.median(np.diff(row))
    flipped = slope < 0
    left = image[0, -1 if flipped else 0, 0]
    top = image[0, :, 1][label[0] != 255][0]
    return 1.0 / abs(slope), flipped, left, top


def test_scale_crop_and_flip_are_independent_draws(draws):
    images, labels = draws
    scale, flipped, left, top = map(
        np.array, zip(*[_geometry(i, lab) for i, lab in zip(images, labels, strict=True)], strict=True)
    )
    assert 0.45 < scale.min() < 0.6 and 1.8 < scale.max() < 2.2, (scale.min(), scale.max())
    median = np.median(scale)
    # Flip rate on either side of the median scale: 0.5 each if the draws are independent
    # (one shared stream flips every image below 1.25 and none above).
    below, above = flipped[scale < median].mean(), flipped[scale >= median].mean()
    assert abs(below - 0.5) < 0.08 and abs(above - 0.5) < 0.08, (below, above)
    # Zoomed in (scale > 1.2), the crop shows part of the image, from a place that varies
    # and depends on nothing else: where it starts, as a fraction of where it could start.
    zoomed = scale > 1.2
    assert zoomed.sum() > 300
    visible = np.array([np.ptp(i[0, :, 0]) for i in images[zoomed]])
    assert (visible < PATTERN - 8).all(), "a crop of an enlarged image shows less than the whole image"
    s = scale[zoomed]
    across, down = (((start[zoomed] + 0.5) * s - 0.5) / (PATTERN * (s - 1)) for start in (left, top))
    for where in (across, down):
        assert abs(where.mean() - 0.5) < 0.05 and where.min() < 0.05 and where.max() > 0.95, where.mean()
        for other in (flipped[zoomed], s):
            assert abs(np.corrcoef(where, other)[0, 1]) < 0.15
    assert abs(np.corrcoef(across, down)[0, 1]) < 0.15


def test_image_and_label_stay_aligned_at_every_scale(draws):
    images, labels = draws
    checked = 0
    for image, label in zip(images, labels, strict=True):
        # Where the label is the same over a 3x3 window, the bilinear image's label channel
        # samples only that class, so it must equal the (nearest-neighbour) label. (Not on
        # the crop's border, whose window reaches outside the crop.)
        centre, channel = label[1:-1, 1:-1], image[1:-1, 1:-1, 2]
        windows = np.lib.stride_tricks.sliding_window_view(label, (3, 3))
        inner = (windows == centre[..., None, None]).all(axis=(-1, -2)) & (centre != 255)
        np.testing.assert_allclose(channel[inner], centre[inner], atol=1e-3)
        checked += inner.sum()
    assert checked > DRAWS * 100


def test_training_batches_are_static_and_valid(analyzed):
    examples_uri, tft_output = analyzed
    dataset = data.make_dataset(
        os.path.join(examples_uri, "Split-train", "*"), tft_output, batch_size=4, training=True, seed=1
    )
    image_spec, label_spec = dataset.element_spec
    assert image_spec.shape == (4, MAX_SIDE, MAX_SIDE, 3) and label_spec.shape == (4, MAX_SIDE, MAX_SIDE)
    for images, labels in dataset.take(3):
        assert images.shape == (4, MAX_SIDE, MAX_SIDE, 3)
        assert set(np.unique(labels.numpy())) <= set(range(21)) | {255}


def _batches(dataset, n):
    return [(i.numpy(), lab.numpy()) for i, lab in dataset.take(n)]


def test_training_batches_are_reproducible_and_differ_between_epochs(analyzed):
    examples_uri, tft_output = analyzed
    pattern = os.path.join(examples_uri, "Split-train", "*")

    def batches(seed, n=4, **kwargs):
        return _batches(data.make_dataset(pattern, tft_output, 4, training=True, seed=seed, **kwargs), n)

    first, again, other = batches(1), batches(1), batches(2)
    for (image, label), (image_again, label_again) in zip(first, again, strict=True):
        np.testing.assert_array_equal(image, image_again)
        np.testing.assert_array_equal(label, label_again)
    differ = [not np.array_equal(a[1], b[1]) for a, b in zip(first, other, strict=True)]
    assert any(differ), "another seed, other batches"
    # One file read in order (a shuffle buffer of 1): element k of the second epoch is the
    # image of element k of the first, augmented anew.
    files = sorted(tf.io.gfile.glob(pattern))
    n = sum(1 for _ in tf.data.TFRecordDataset(files[0], compression_type="GZIP"))
    one_by_one = data.make_dataset(files[0], tft_output, 1, training=True, seed=1, shuffle_buffer=1)
    labels = np.concatenate([lab for _, lab in _batches(one_by_one, 2 * n)])
    same = [np.array_equal(labels[k], labels[n + k]) for k in range(n)]
    assert sum(same) <= n // 4, f"{sum(same)} of {n} images got the same augmentation in both epochs"


def test_a_resumed_training_draws_anew_and_as_every_restart_at_its_step(analyzed):
    # A restart builds its input again. Resuming at step 20 with the seed unchanged, it drew the
    # killed run's first batch again (images, order and augmentation): the restored step is
    # folded into the seed. A fresh run (step 0) keeps the seed, and draws as it always did.
    examples_uri, tft_output = analyzed
    pattern = os.path.join(examples_uri, "Split-train", "*")

    def first_batch(**kwargs):
        return _batches(data.make_dataset(pattern, tft_output, 4, training=True, seed=1, **kwargs), 1)[0]

    fresh, resumed, again = first_batch(), first_batch(start_step=20), first_batch(start_step=20)
    np.testing.assert_array_equal(again[0], resumed[0])
    np.testing.assert_array_equal(again[1], resumed[1])
    assert [np.array_equal(label, fresh[1][k]) for k, label in enumerate(resumed[1])] == [False] * 4
    assert [data.resumed_seed(1, step) for step in (0, 20, 21)] == [1, 1206852849, 904817182]


def _expected_labels(examples, tft_output):
    raw = tf.io.parse_example([e.SerializeToString() for e in examples], tft_output.raw_feature_spec())
    return tft_output.transform_features_layer()(raw)[features.LABEL].numpy()


def _sorted_rows(labels):
    return sorted(row.tobytes() for row in labels)


def test_evaluation_is_one_deterministic_pass_that_counts_every_image(analyzed):
    examples_uri, tft_output = analyzed
    examples = read_examples(examples_uri, features.EVAL_SPLIT)
    pattern = os.path.join(examples_uri, "Split-eval", "*")

    def labels():
        batches = data.make_dataset(pattern, tft_output, batch_size=3, training=False)
        assert batches.element_spec[1].shape == (3, MAX_SIDE, MAX_SIDE)
        return np.concatenate([lab.numpy() for _, lab in batches])

    first, second = labels(), labels()
    np.testing.assert_array_equal(first, second)
    n = len(examples)
    assert len(first) == -(-n // 3) * 3, "the last batch is filled up, not dropped"
    assert (first[n:] == 255).all(), "fillers are all void"
    # The real ones are the Transform outputs of the eval examples.
    assert _sorted_rows(first[:n]) == _sorted_rows(_expected_labels(examples, tft_output))


def test_evaluation_shards_count_every_image_once_in_the_same_number_of_batches(analyzed, eval_in_four_files):
    examples_uri, tft_output = analyzed
    examples = read_examples(examples_uri, features.EVAL_SPLIT)
    n = data.count_records(eval_in_four_files)
    assert n == len(examples) >= 5
    # Two input pipelines (workers) of batches of 2: ceil(ceil(n / 2) / 2) batches each.
    num_batches = math.ceil(math.ceil(n / 2) / 2)
    real = []
    for index in range(2):
        shard = data.make_dataset(
            eval_in_four_files, tft_output, 2, training=False, num_shards=2, shard_index=index,
            num_batches=num_batches,
        )  # fmt: skip
        assert shard.element_spec[1].shape == (2, MAX_SIDE, MAX_SIDE)
        labels = np.concatenate([lab.numpy() for _, lab in shard])
        assert len(labels) == 2 * num_batches, "every shard gives the same number of batches"
        mine = [lab for lab in labels if not (lab == 255).all()]
        assert len(mine) in (n // 2, n - n // 2), "the shards split the images evenly"
        real += mine
    assert _sorted_rows(np.stack(real)) == _sorted_rows(_expected_labels(examples, tft_output))
