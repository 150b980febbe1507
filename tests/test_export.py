"""Every exported signature, called after save -> load, against the in-process model."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from pipeline import features
from pipeline.config import TrainerConfig
from tests.conftest import MAX_SIDE, feature, read_examples
from trainer import export, losses, model, optimization, training

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(analyzed, tmp_path_factory):
    examples_uri, tft_output = analyzed
    net = model.build_deeplabv3plus(MAX_SIDE, width=0.35, aspp_filters=16, decoder_filters=16)
    # Compiled as training compiles it, so that the SavedModel carries the loss, schedule and
    # metric that `tf_keras.models.load_model(path)` (compile=True) revives.
    training.compile_model(net, TrainerConfig(), total_steps=100)
    path = str(tmp_path_factory.mktemp("export") / "model")
    export.export(net, tft_output, path, with_probabilities=True)
    return net, tft_output, tf.saved_model.load(path), read_examples(examples_uri, features.TRAIN_SPLIT), path


def _different_sizes(examples, n=3):
    chosen, sizes = [], set()
    for e in examples:
        size = (feature(e, features.HEIGHT_KEY)[0], feature(e, features.WIDTH_KEY)[0])
        if size not in sizes:
            chosen.append(e)
            sizes.add(size)
        if len(chosen) == n:
            return chosen
    raise AssertionError("the dataset should have images of several sizes")


def _in_process(net, tft_output, examples):
    raw = tf.io.parse_example([e.SerializeToString() for e in examples], tft_output.raw_feature_spec())
    out = tft_output.transform_features_layer()(raw)
    logits = net(out[features.IMAGE], training=False)
    return export.to_original_resolution(logits, out[features.ORIGINAL_HEIGHT], out[features.ORIGINAL_WIDTH])


def test_serving_default_returns_each_image_at_its_own_size(exported):
    net, tft_output, loaded, examples, _ = exported
    batch = _different_sizes(examples)
    jpegs = tf.constant([feature(e, features.IMAGE_KEY)[0] for e in batch])
    out = loaded.signatures[export.SERVING_DEFAULT](images=jpegs)
    expected = _in_process(net, tft_output, batch)
    heights, widths = out["height"].numpy(), out["width"].numpy()
    ids = out["class_ids"].numpy()
    assert ids.dtype == np.uint8 and ids.shape == (3, heights.max(), widths.max())
    for i, e in enumerate(batch):
        h, w = feature(e, features.HEIGHT_KEY)[0], feature(e, features.WIDTH_KEY)[0]
        assert (heights[i], widths[i]) == (h, w)
        assert (ids[i, :h, :w] < features.NUM_CLASSES).all() and (ids[i, h:] == 255).all()
        assert (ids[i, :, w:] == 255).all()
    np.testing.assert_array_equal(ids, expected["class_ids"].numpy())
    probs = out["probabilities"].numpy()
    np.testing.assert_allclose(probs[0, : heights[0], : widths[0]].sum(-1), 1.0, rtol=1e-5)


def test_serving_examples_and_transform_features(exported):
    net, tft_output, loaded, examples, _ = exported
    batch = _different_sizes(examples)
    serialized = tf.constant([e.SerializeToString() for e in batch])
    by_examples = loaded.signatures[export.SERVING_EXAMPLES](examples=serialized)
    by_images = loaded.signatures[export.SERVING_DEFAULT](
        images=tf.constant([feature(e, features.IMAGE_KEY)[0] for e in batch])
    )
    np.testing.assert_array_equal(by_examples["class_ids"].numpy(), by_images["class_ids"].numpy())
    transformed = loaded.signatures[export.TRANSFORM_FEATURES](examples=serialized)
    assert transformed[features.LABEL].shape == (3, MAX_SIDE, MAX_SIDE)
    assert transformed[features.IMAGE].shape == (3, MAX_SIDE, MAX_SIDE, 3)


def test_keras_reloads_the_export_with_its_training_setup_and_the_served_masks(exported):
    _, tft_output, loaded, examples, path = exported
    revived = keras.models.load_model(path)  # compile=True, Keras' default
    assert isinstance(revived.loss, losses.IgnoreLabelCrossEntropy)
    schedule = keras.optimizers.schedules.deserialize(revived.optimizer.get_config()["learning_rate"])
    assert isinstance(schedule, optimization.WarmupPolyDecay) and schedule.total_steps == 100
    batch = _different_sizes(examples)
    raw = tf.io.parse_example([e.SerializeToString() for e in batch], tft_output.raw_feature_spec())
    transformed = tft_output.transform_features_layer()(raw)
    images, labels = transformed[features.IMAGE], transformed[features.LABEL]
    scores = revived.evaluate(images, labels, verbose=0, return_dict=True)
    assert set(scores) == {"loss", "mean_iou"}, scores
    # The Keras model's masks at each image's own size are the serving signature's, pixel for pixel.
    logits = revived(images, training=False)
    ours = export.to_original_resolution(
        logits, transformed[features.ORIGINAL_HEIGHT], transformed[features.ORIGINAL_WIDTH]
    )
    served = loaded.signatures[export.SERVING_DEFAULT](
        images=tf.constant([feature(e, features.IMAGE_KEY)[0] for e in batch])
    )
    np.testing.assert_array_equal(ours["class_ids"].numpy(), served["class_ids"].numpy())
    assert len(np.unique(served["class_ids"].numpy())) > 1, "masks of one class would prove little"


def test_a_500x375_response_fits_grpc_default_limit():
    logits = tf.zeros((1, 512, 512, features.NUM_CLASSES))
    out = export.to_original_resolution(logits, tf.constant([375]), tf.constant([500]))
    proto = tf.make_tensor_proto(out["class_ids"])
    assert len(proto.SerializeToString()) < 4 * 1024 * 1024 // 10
