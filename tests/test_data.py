"""The trainer's input pipeline: joint augmentation, static shapes, deterministic evaluation."""

import os

import numpy as np
import tensorflow as tf

from pipeline import features
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


def test_crop_and_flip_move_image_and_label_together():
    flipped = 0
    for seed in range(12):
        image, label = _scene(seed)
        out_image, out_label = data.augment(image, label, SIZE, min_scale=1.0, max_scale=1.0)
        np.testing.assert_array_equal(out_image.numpy()[..., 0], out_label.numpy())
        flipped += not np.array_equal(out_label.numpy(), label.numpy())
        assert np.array_equal(out_label.numpy(), label.numpy()) or np.array_equal(
            out_label.numpy(), label.numpy()[:, ::-1]
        )
    assert 0 < flipped < 12, "about half the images are flipped"


def test_zoom_out_pads_labels_with_255_and_keeps_shapes_static():
    image, label = _scene(0)
    out_image, out_label = data.augment(image, label, SIZE, min_scale=0.5, max_scale=0.5)
    assert out_image.shape == (SIZE, SIZE, 3) and out_label.shape == (SIZE, SIZE)
    values = set(np.unique(out_label.numpy()))
    assert values <= set(np.unique(label.numpy())) | {255}
    assert (out_label.numpy() == 255).mean() >= 0.75, "three quarters of the crop is padding"


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
    # The real ones are the Transform outputs of the eval examples, in file order.
    raw = tf.io.parse_example([e.SerializeToString() for e in examples], tft_output.raw_feature_spec())
    expected = tft_output.transform_features_layer()(raw)[features.LABEL].numpy()
    np.testing.assert_array_equal(first[:n], expected)
