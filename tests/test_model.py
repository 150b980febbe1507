"""DeepLabV3+ shapes for both backbones and output strides, its layers, and the loss."""

import os
import tempfile

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from tf_keras.src.utils import data_utils as keras_data_utils  # what keras.applications download with

from core.dataset_spec import VOC_SPEC
from trainer import losses, model

SIZE = 64
VOC_CLASSES = VOC_SPEC.num_classes


@pytest.mark.parametrize("backbone, width", [("mobilenetv2", 0.35), ("resnet50", 1.0)])
@pytest.mark.parametrize("output_stride", [16, 8, 32])
def test_output_shapes_and_feature_strides(backbone, width, output_stride):
    net = model.build_deeplabv3plus(
        SIZE,
        VOC_SPEC.num_classes,
        backbone_weights=None,
        backbone=backbone,
        output_stride=output_stride,
        width=width,
        aspp_filters=32,
        decoder_filters=32,
    )
    logits = net(np.zeros((2, SIZE, SIZE, 3), np.float32), training=False)
    assert logits.shape == (2, SIZE, SIZE, VOC_CLASSES) and logits.dtype == tf.float32
    low, high = net.get_layer(backbone).output
    assert low.shape[1:3] == (SIZE // 4, SIZE // 4)
    assert high.shape[1:3] == (SIZE // output_stride, SIZE // output_stride)
    aspp = net.get_layer("aspp")
    for rate in (r * 16 // output_stride for r in (6, 12, 18)):
        conv = aspp.get_layer(f"aspp_rate{rate}").get_layer(f"aspp_rate{rate}_conv")
        assert conv.dilation_rate == (rate, rate)


@pytest.mark.parametrize("output_stride", [16, 8])
def test_dilated_backbone_loads_pretrained_weights_unchanged(tmp_path, output_stride):
    # Cloning for output stride 16 or 8 changes strides and rates, never a kernel's shape: a
    # keras.applications weights file loads as it is.
    base = keras.applications.MobileNetV2(
        include_top=False, weights=None, input_shape=(SIZE, SIZE, 3), alpha=0.35
    )
    path = str(tmp_path / "weights.h5")
    base.save_weights(path)
    dilated = model.build_backbone("mobilenetv2", (SIZE, SIZE, 3), output_stride, width=0.35, weights=path)
    layers = [layer for layer in dilated.layers if layer.weights]
    assert len(layers) > 50
    for layer in layers:
        for ours, theirs in zip(layer.get_weights(), base.get_layer(layer.name).get_weights(), strict=True):
            np.testing.assert_array_equal(ours, theirs)
    assert dilated.get_layer("block_16_depthwise").dilation_rate == (
        (2, 2) if output_stride == 16 else (4, 4)
    )


@pytest.mark.parametrize("backbone", ["mobilenetv2", "resnet50"])
def test_imagenet_weights_that_cannot_load_fail_the_build_and_say_what_to_do(backbone, monkeypatch):
    # No network here, but a developer's machine may have one (or a Keras cache): the download
    # is made to fail, as it does offline, so the test means the same everywhere.
    def offline(fname, origin, *args, **kwargs):
        raise Exception(f"URL fetch failure on {origin}: [Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(keras_data_utils, "get_file", offline)
    with pytest.raises(model.BackboneWeightsError) as failure:
        model.build_backbone(backbone, (SIZE, SIZE, 3), 16, width=0.35 if backbone == "mobilenetv2" else 1.0,
                             weights="imagenet")  # fmt: skip
    message = str(failure.value)
    assert "URL fetch failure" in message, "the cause is kept"
    assert "trainer.backbone_weights=/path/to/" in message and 'trainer.backbone_weights=""' in message


def test_missing_weights_file_is_named():
    with pytest.raises(FileNotFoundError, match="no/such.h5"):
        model.build_backbone("resnet50", (SIZE, SIZE, 3), 16, weights="no/such.h5")
    with pytest.raises(FileNotFoundError, match="ram://no/such.h5"):
        model.build_backbone("resnet50", (SIZE, SIZE, 3), 16, weights="ram://no/such.h5")


def test_weights_file_on_a_remote_filesystem_loads(tmp_path, monkeypatch):
    # ram:// (TF's in-memory filesystem) stands in for gs://: reached only through tf.io.gfile,
    # and h5py cannot open it. A gs:// .h5 is what an offline Vertex job is told to give.
    base = keras.applications.MobileNetV2(
        include_top=False, weights=None, input_shape=(SIZE, SIZE, 3), alpha=0.35
    )
    local = str(tmp_path / "mobilenet_v2_notop.h5")
    base.save_weights(local)
    remote = f"ram://weights-{tmp_path.name}/mobilenet_v2_notop.h5"
    tf.io.gfile.makedirs(os.path.dirname(remote))
    tf.io.gfile.copy(local, remote)
    os.remove(local)
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    built = model.build_backbone("mobilenetv2", (SIZE, SIZE, 3), 16, width=0.35, weights=remote)
    layers = [layer for layer in built.layers if layer.weights]
    assert len(layers) > 50
    for layer in layers:
        for ours, theirs in zip(layer.get_weights(), base.get_layer(layer.name).get_weights(), strict=True):
            np.testing.assert_array_equal(ours, theirs)
    assert not list(temporary.iterdir()), "the local copy is removed"


@pytest.mark.parametrize("size", [8, 13])
def test_atrous_conv_equals_tf_dilated_conv_forward_and_backward(size):
    # atrous_conv2d computes dilation by space-to-batch (13 is not a multiple of any rate, so
    # the padding and cropping are exercised) and a rate >= the map as the 1x1 centre conv;
    # outputs and gradients must equal TF's own dilated conv (up to float sums).
    x = tf.random.stateless_normal((2, size, size, 5), seed=(1, 2))
    for rate in (1, 2, 6, 8, 12, 18):
        layer = model.atrous_conv2d(4, 3, rate)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            out = layer(x)
            reference = tf.nn.convolution(x, layer.kernel, padding="SAME", dilations=rate) + layer.bias
            ours_sum, reference_sum = tf.reduce_sum(out * out), tf.reduce_sum(reference * reference)
        np.testing.assert_allclose(out.numpy(), reference.numpy(), rtol=1e-5, atol=1e-5)
        for wrt in (x, layer.kernel):
            np.testing.assert_allclose(
                tape.gradient(ours_sum, wrt).numpy(),
                tape.gradient(reference_sum, wrt).numpy(),
                rtol=1e-4,
                atol=1e-4,
            )
        # A Conv2D's config: what a model revived from its config has there (TF's own op).
        assert type(layer) is keras.layers.Conv2D
        assert keras.layers.Conv2D.from_config(layer.get_config()).get_config() == layer.get_config()


@pytest.mark.parametrize("backbone, width", [("mobilenetv2", 0.35), ("resnet50", 1.0)])
def test_the_model_is_made_of_keras_layers_only(backbone, width):
    # No Layer subclass of ours: tf_keras.models.load_model revives an exported model from its
    # config in a process that never imported this package (tests/test_model_consumers.py does).
    net = model.build_deeplabv3plus(
        SIZE, 3, backbone_weights=None, backbone=backbone, width=width, aspp_filters=8, decoder_filters=8,
        low_level_filters=4,
    )  # fmt: skip
    layers = [m for m in net.submodules if isinstance(m, keras.layers.Layer)]
    assert {type(layer).__module__.split(".")[0] for layer in layers} == {"tf_keras"}
    preprocess, aspp = net.get_layer("preprocess"), net.get_layer("aspp")
    # Warm start matches weights by position, and the 1x1 and pooling branches' kernels have one
    # shape: an order that changed would swap them without an error.
    assert [layer.name for layer in aspp.layers if layer.weights] == [
        "aspp_pool", "aspp_1x1", "aspp_rate6", "aspp_rate12", "aspp_rate18", "aspp_project"
    ]  # fmt: skip
    # The scaling the backbone's ImageNet weights were trained with: caffe's BGR minus the mean
    # for ResNet-50, [-1, 1] for MobileNetV2.
    rgb = np.array([[[[0.0, 127.5, 255.0], [3.0, 200.0, 17.0]]]], np.float32)
    applications = keras.applications.resnet50 if backbone == "resnet50" else keras.applications.mobilenet_v2
    np.testing.assert_allclose(
        preprocess(rgb).numpy(), applications.preprocess_input(rgb.copy()), rtol=0, atol=1e-6
    )


def test_bn_momentum_reaches_every_batch_norm_layer():
    net = model.build_deeplabv3plus(
        64, 3, backbone_weights=None, backbone="mobilenetv2", width=0.35, aspp_filters=8,
        decoder_filters=8, low_level_filters=4, bn_momentum=0.9,
    )  # fmt: skip

    # Every layer reachable from the model: the backbone's, ASPP's branches', the decoder's.
    found = [m for m in net.submodules if isinstance(m, keras.layers.BatchNormalization)]
    # MobileNetV2 up to block 16 (the high-level features): 51; ASPP: 6; the decoder: 3.
    assert len(found) == 51 + 6 + 3
    assert {bn.momentum for bn in found} == {0.9}


def test_resnet50_deeplabv3plus_parameter_count():
    net = model.build_deeplabv3plus(
        512, VOC_SPEC.num_classes, backbone_weights=None, backbone="resnet50", output_stride=16
    )
    # Figure quoted in the README.
    assert net.count_params() == 40_436_053


def test_loss_ignores_void_pixels():
    rng = np.random.default_rng(0)
    logits = tf.constant(rng.normal(size=(2, 8, 8, VOC_CLASSES)), tf.float32)
    labels = rng.integers(0, VOC_CLASSES, (2, 8, 8))
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
    counts = {str(c): (c + 1) * 100 for c in range(VOC_CLASSES)} | {"255": 7, "out_of_palette": 0}
    weights = losses.class_weights_from_counts(counts, VOC_CLASSES)
    assert len(weights) == VOC_CLASSES and np.mean(weights) == pytest.approx(1.0)
    assert weights[0] > weights[-1]
    labels = np.zeros((1, 2, 2))
    logits = tf.zeros((1, 2, 2, VOC_CLASSES))
    weighted = losses.IgnoreLabelCrossEntropy(class_weights=weights)(labels, logits)
    assert float(weighted) == pytest.approx(weights[0] * np.log(VOC_CLASSES), rel=1e-6)
