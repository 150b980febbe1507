"""DeepLabV3+ shapes for both backbones and output strides, ASPP config, and the loss."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from pipeline import features
from trainer import losses, model

SIZE = 64


@pytest.mark.parametrize("backbone, width", [("mobilenetv2", 0.35), ("resnet50", 1.0)])
@pytest.mark.parametrize("output_stride", [16, 8])
def test_output_shapes_and_feature_strides(backbone, width, output_stride):
    net = model.build_deeplabv3plus(
        SIZE, backbone=backbone, output_stride=output_stride, width=width, aspp_filters=32, decoder_filters=32
    )
    logits = net(np.zeros((2, SIZE, SIZE, 3), np.float32), training=False)
    assert logits.shape == (2, SIZE, SIZE, features.NUM_CLASSES) and logits.dtype == tf.float32
    low, high = net.get_layer(backbone).output
    assert low.shape[1:3] == (SIZE // 4, SIZE // 4)
    assert high.shape[1:3] == (SIZE // output_stride, SIZE // output_stride)
    assert net.get_layer("aspp").rates == tuple(r * 16 // output_stride for r in (6, 12, 18))


def test_dilated_backbone_keeps_the_pretrained_weights():
    # Cloning for output stride 8 must not change any kernel: ImageNet weights load as they are.
    base = keras.applications.MobileNetV2(
        include_top=False, weights=None, input_shape=(SIZE, SIZE, 3), alpha=0.35
    )
    dilated = model.build_backbone("mobilenetv2", (SIZE, SIZE, 3), 8, width=0.35)
    assert [w.shape for w in base.weights] == [w.shape for w in dilated.weights]


def test_aspp_config_round_trip():
    layer = model.ASPP(filters=16, rates=(3, 6, 9), dropout=0.2, name="aspp")
    clone = model.ASPP.from_config(layer.get_config())
    assert (clone.filters, clone.rates, clone.dropout) == (16, (3, 6, 9), 0.2)


def test_resnet50_deeplabv3plus_parameter_count():
    net = model.build_deeplabv3plus(512, backbone="resnet50", output_stride=16)
    # Figure quoted in the README.
    assert net.count_params() == 40_436_053


def test_loss_ignores_void_pixels():
    rng = np.random.default_rng(0)
    logits = tf.constant(rng.normal(size=(2, 8, 8, features.NUM_CLASSES)), tf.float32)
    labels = rng.integers(0, features.NUM_CLASSES, (2, 8, 8))
    labels[:, :3] = 255
    loss = losses.IgnoreLabelCrossEntropy()
    other = labels.copy()
    other[:, :3] = 255  # same void pixels...
    changed_logits = logits.numpy()
    changed_logits[:, :3] = 100.0  # ...whatever the model says there
    assert float(loss(labels, logits)) == pytest.approx(float(loss(other, tf.constant(changed_logits))))
    # and a reference: mean over images of (sum of CE over valid pixels) / pixels per image.
    valid = labels != 255
    log_probs = tf.nn.log_softmax(logits).numpy()
    ce = -np.take_along_axis(log_probs, np.where(valid, labels, 0)[..., None], -1)[..., 0] * valid
    assert float(loss(labels, logits)) == pytest.approx(float((ce.sum((1, 2)) / 64).mean()), rel=1e-6)


def test_class_weights():
    counts = {str(c): (c + 1) * 100 for c in range(features.NUM_CLASSES)} | {"255": 7, "out_of_palette": 0}
    weights = losses.class_weights_from_counts(counts)
    assert len(weights) == features.NUM_CLASSES and np.mean(weights) == pytest.approx(1.0)
    assert weights[0] > weights[-1]
    labels = np.zeros((1, 2, 2))
    logits = tf.zeros((1, 2, 2, features.NUM_CLASSES))
    weighted = losses.IgnoreLabelCrossEntropy(class_weights=weights)(labels, logits)
    assert float(weighted) == pytest.approx(weights[0] * np.log(features.NUM_CLASSES), rel=1e-6)
