"""Test-time augmentation (trainer/tta.py): the views the signatures average, checked against
models built for each size on their own, and the config that turns it on.

The exported model's masks and what TFMA scores of them on hard-mode data are in
test_evaluation.py (``test_a_test_time_augmented_export_...``).
"""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from core import config as config_lib
from core import features, signatures
from tests import reference
from tests.conftest import feature, read_examples, train_tiny
from trainer import export, training, tta

IMAGE_SIZE = 64
NUM_CLASSES = 5


def _model(size: int):
    config = config_lib.load_config("tiny").trainer
    return training.build_model(config, size, replicas=1, images_normalized=False, num_classes=NUM_CLASSES)


def test_sizes_round_each_scale_to_a_multiple_of_32():
    views = tta.TestTimeAugmentation((0.75, 1.0, 1.25), flip=True)
    assert views.sizes(128) == [96, 128, 160]
    assert views.sizes(512) == [384, 512, 640]
    assert views.sizes(64) == [64, 96], "0.75 x 64 rounds to 64, a size already there"
    assert tta.TestTimeAugmentation((0.5, 0.1, 2.0)).sizes(128) == [64, 32, 256]
    assert tta.TestTimeAugmentation.of((), False) is None
    assert tta.TestTimeAugmentation.of((), True) == tta.TestTimeAugmentation((1.0,), True)
    assert tta.TestTimeAugmentation.of([1, 1.5], False) == tta.TestTimeAugmentation((1.0, 1.5), False)


def test_the_config_takes_scales_and_refuses_ones_that_cannot_work():
    config = config_lib.load_config("tiny", ["trainer.tta_scales=[0.75, 1, 1.25]", "trainer.tta_flip=true"])
    assert config.trainer.tta_scales == (0.75, 1, 1.25) and config.trainer.tta_flip
    assert config_lib.load_config("tiny").trainer.tta_scales == ()
    with pytest.raises(config_lib.ConfigError, match="tta_scales: expected a list, got 0.75"):
        config_lib.load_config("tiny", ["trainer.tta_scales=0.75"])
    for bad in ("[0.75, 0]", "[-1]", "[a]", "[1, 2.5]"):
        with pytest.raises(
            config_lib.ConfigError,
            match=r"tta_scales=.* cannot work: it must be a list, each a number in \[0.25, 2.0\]",
        ):
            config_lib.load_config("tiny", [f"trainer.tta_scales={bad}"])
    # What the export could not build fails when the config loads, not after the training.
    with pytest.raises(
        config_lib.ConfigError, match="need transform.image_size to be a multiple of 32, got 100"
    ):
        config_lib.load_config("tiny", ["trainer.tta_flip=true", "transform.image_size=100"])
    with pytest.raises(config_lib.ConfigError, match="tta_scales 1.0 and 1.1 both give 128 px views"):
        config_lib.load_config("tiny", ["trainer.tta_scales=[1.0, 1.1]"])


def test_averaged_logits_are_each_size_models_own_logits_averaged():
    net = _model(IMAGE_SIZE)
    # Not the initial weights alone: batch-norm statistics away from 0 and 1 too.
    rng = np.random.default_rng(0)
    net.set_weights([w + rng.normal(0, 0.05, w.shape).astype(w.dtype) for w in net.get_weights()])
    views = tta.TestTimeAugmentation((0.5, 1.0, 1.5), flip=True)
    averaged = tta.AveragedLogits(net, views)
    # Every size shares the model's variables: the SavedModel holds each once.
    shared = {id(v) for model in averaged.models for v in model.weights}
    assert shared == {id(v) for v in net.weights}
    assert [m.input_shape[1] for m in averaged.models] == [32, 64, 96]

    images = rng.uniform(0, 255, (2, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
    expected = []
    for size in (32, 64, 96):
        # The reference: a model built for that size on its own, given the same weights.
        alone = _model(size)
        alone.set_weights(net.get_weights())
        scaled = tf.image.resize(images, [size, size]).numpy() if size != IMAGE_SIZE else images
        for flip in (False, True):
            view = scaled[:, :, ::-1] if flip else scaled
            logits = alone(view, training=False).numpy()
            logits = logits[:, :, ::-1] if flip else logits
            expected.append(tf.image.resize(logits, [IMAGE_SIZE, IMAGE_SIZE]).numpy())
    got = averaged(tf.constant(images)).numpy()
    assert got.shape == (2, IMAGE_SIZE, IMAGE_SIZE, NUM_CLASSES)
    np.testing.assert_allclose(got, np.mean(expected, axis=0), atol=1e-4)
    plain = net(images, training=False).numpy()
    assert np.abs(got - plain).max() > 1e-2, "the views change the logits"


def test_a_size_that_is_not_a_multiple_of_32_is_refused():
    with pytest.raises(ValueError, match="multiples of 32: 64 -> 80"):
        tta.at_size(_model(IMAGE_SIZE), 80)


@pytest.mark.slow
def test_the_config_exports_augmented_signatures_that_serve_the_averaged_masks(learning_data, tmp_path):
    """``trainer.tta_scales``/``tta_flip`` through ``training.train`` to the SavedModel: loaded
    as TF Serving loads it, its ``serving_default`` masks are those of the in-process averaged
    logits of the same weights at each image's own size."""
    examples_uri, tft_output = learning_data
    model_dir, _ = train_tiny(
        examples_uri, tmp_path, train_steps=2, tta_scales=(0.75, 1.0, 1.25), tta_flip=True
    )
    net = keras.models.load_model(model_dir, compile=False)
    averaged = tta.AveragedLogits(net, tta.TestTimeAugmentation((0.75, 1.0, 1.25), flip=True))
    serve = tf.saved_model.load(model_dir).signatures[signatures.SERVING_DEFAULT]
    images = [feature(e, features.IMAGE_KEY)[0] for e in read_examples(examples_uri, features.EVAL_SPLIT)[:3]]
    served = serve(images=tf.constant(images))
    # The Transform graph as the signatures apply it, to the image alone.
    transformed = tft_output.transform_features_layer()({features.IMAGE_KEY: tf.constant(images)[:, None]})
    expected = export.to_original_resolution(
        averaged(transformed[features.IMAGE]),
        transformed[features.ORIGINAL_HEIGHT],
        transformed[features.ORIGINAL_WIDTH],
        with_probabilities=True,
    )
    # The SavedModel's graph against eager Keras: equal but where two classes nearly tie.
    reference.assert_same_masks_but_near_ties(
        served[signatures.CLASS_IDS], expected[signatures.CLASS_IDS], expected[signatures.PROBABILITIES]
    )
    plain = net(transformed[features.IMAGE], training=False)
    assert not np.array_equal(averaged(transformed[features.IMAGE]).numpy(), plain.numpy())
