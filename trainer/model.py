"""DeepLabV3+ (Chen et al., 2018) on Keras 2, with ResNet-50 or MobileNetV2 backbones.

Keras 2 because TFT 1.16 and the TFX Trainer need it: ``tf_keras`` is imported by name, since
``tf.keras`` resolves to Keras 3 whenever TensorFlow was imported before ``TF_USE_LEGACY_KERAS``
was set, which in a TFX process is not under our control.

The backbone gives features at stride 4 (for the decoder) and at the output stride (for ASPP).
``keras.applications`` backbones end at stride 32; for output stride 16 or 8 the backbone is
cloned with the stride of the later stages removed and their convolutions dilated instead
(Chen et al., 2017), which keeps every kernel's shape, so pretrained weights load unchanged.
"""

import contextlib
import functools
import os
import tempfile
from typing import Iterator, Optional, Sequence

import tensorflow as tf
import tf_keras as keras

from core import features, storage
from core.choices import BACKBONES, IMAGENET_WEIGHTS, KERAS_BN_MOMENTUM, OUTPUT_STRIDES, RESNET50
from core.config import TrainerConfig

# Layers
#
# Keras' own layers only, no Layer subclass: a model's config then names Keras' classes alone, so
# `tf_keras.models.load_model(path)` revives an exported model in a process that never imported
# this package. With subclasses it failed there ("Cannot call custom layer ... the call function
# was not serialized"): the export saves no traced calls (``save_traces=False``, trainer/export.py;
# tracing them took the tiny model's save from 7 s to 17 s). Models exported before, which name
# the subclasses (``deeplab_tfx>ASPP``), no longer load here: warm start from one trains from
# scratch and says so (trainer/warm_start.py).


def backbone_preprocess(backbone: str) -> keras.layers.Layer:
    """The layer named ``preprocess``: 0-255 RGB scaled the way the backbone's ImageNet weights expect."""
    if backbone == RESNET50:  # "caffe" mode: BGR, ImageNet mean removed, no scaling
        images = keras.Input((None, None, 3))
        bgr = images[..., ::-1]
        centred = keras.layers.Rescaling(1.0, offset=[-103.939, -116.779, -123.68], name="imagenet_mean")(bgr)
        return keras.Model(images, centred, name="preprocess")
    return keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="preprocess")  # MobileNetV2: [-1, 1]


def _conv_bn_relu(
    x, filters, kernel_size, name, dilation_rate=1, sync_batch_norm=False, bn_momentum=KERAS_BN_MOMENTUM
):
    x = keras.layers.Conv2D(
        filters, kernel_size, padding="same", dilation_rate=dilation_rate, use_bias=False, name=f"{name}_conv"
    )(x)
    x = keras.layers.BatchNormalization(
        momentum=bn_momentum, synchronized=sync_batch_norm, name=f"{name}_bn"
    )(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def atrous_conv2d(filters: int, kernel_size: int, dilation_rate: int, **kwargs) -> keras.layers.Conv2D:
    """A 'same'-padded dilated ``Conv2D`` whose backward pass is cheap on CPU.

    TF computes a dilated conv's gradients on the space-to-batch sub-maps, and its CPU kernel
    for the input gradient is slow on such many small maps: at 512 px, ASPP's rate-12 branch
    alone took 40% of a ResNet-50 train step (benchmarks/train_step.py). For stride 1 and
    symmetric padding the input gradient is the same dilated conv, run forward over the
    upstream gradient with the kernel flipped and its channel axes swapped, and TF's forward
    dilated conv is fast; the kernel gradient stays TF's own. That made the train step 3.5x
    faster at 256 px; tests check outputs and both gradients against ``tf.nn.convolution``.

    When the rate is at least the map's size (rates 12 and 18 on the 8x8 map of a 128 px input
    at output stride 16), every tap but the centre reads padding, so the convolution is the
    1x1 convolution with the kernel's centre, and is computed that way.

    A plain ``Conv2D`` whose ``convolution_op`` this instance replaces, not a subclass: its
    config is a ``Conv2D``'s, so a model revived from its config (``load_model`` in another
    process) has a ``Conv2D`` there, with the same weights, the same outputs up to float
    rounding, and TF's own gradient.
    """
    layer = keras.layers.Conv2D(filters, kernel_size, padding="same", dilation_rate=dilation_rate, **kwargs)
    layer.convolution_op = functools.partial(_atrous_convolution_op, layer)
    return layer


# No tensor-dependent control flow: spare autograph's slow recursive conversion of Keras.
@tf.autograph.experimental.do_not_convert
def _atrous_convolution_op(layer: keras.layers.Conv2D, inputs, kernel):
    height, width = inputs.shape[1:3]
    rate_h, rate_w = layer.dilation_rate
    k_h, k_w = kernel.shape[:2]
    plain = (rate_h, rate_w) == (1, 1) or tuple(layer.strides) != (1, 1) or layer.padding != "same"
    if plain or k_h % 2 == 0 or k_w % 2 == 0 or layer.data_format != "channels_last":
        # The identities below need odd kernels.
        return keras.layers.Conv2D.convolution_op(layer, inputs, kernel)
    if height is not None and width is not None and rate_h >= height and rate_w >= width:
        centre = kernel[k_h // 2 : k_h // 2 + 1, k_w // 2 : k_w // 2 + 1]
        return tf.nn.conv2d(inputs, centre, strides=1, padding="SAME")
    return _dilated_conv(inputs, kernel, (rate_h, rate_w))


def _dilated_conv(inputs, kernel, rates):
    """Stride-1 'same' dilated conv whose input gradient is a forward conv (see atrous_conv2d)."""
    dilations = [1, *rates, 1]

    @tf.custom_gradient
    def conv(x, k):
        def grad(upstream):
            # For stride 1 and symmetric padding, the input gradient is the same conv over the
            # upstream gradient with the kernel flipped in space and its channel axes swapped.
            flipped = tf.transpose(tf.reverse(k, [0, 1]), [0, 1, 3, 2])
            d_x = tf.nn.conv2d(upstream, flipped, strides=1, padding="SAME", dilations=dilations)
            with tf.GradientTape() as tape:  # the kernel's gradient as TF computes it
                tape.watch(k)
                y = tf.nn.convolution(x, k, padding="SAME", dilations=list(rates))
            return d_x, tape.gradient(y, k, output_gradients=upstream)

        return tf.nn.conv2d(x, k, strides=1, padding="SAME", dilations=dilations), grad

    return conv(inputs, tf.convert_to_tensor(kernel))


def aspp(
    channels: int,
    filters: int = 256,
    rates: Sequence[int] = (6, 12, 18),
    dropout: float = 0.1,
    sync_batch_norm: bool = False,
    bn_momentum: float = KERAS_BN_MOMENTUM,
    name: str = "aspp",
) -> keras.Model:
    """Atrous Spatial Pyramid Pooling: a 1x1 branch, three atrous 3x3 branches, image pooling.

    On features of ``channels`` channels, of any height and width (test-time augmentation runs
    it on other sizes than the model's, ``trainer/tta.py``); ``rates`` are the dilation rates at
    their resolution (6/12/18 at output stride 16, doubled at 8). The image-pooling branch
    brings global context back to every position by upsampling its 1x1 feature to the map's
    size: nearest from 1x1 is a broadcast, exact, and keeps bfloat16 under mixed precision.

    A functional sub-model named ``aspp`` rather than keras-hub's Layer subclass (see the
    section's comment), of ``Sequential`` branches ``aspp_1x1``, ``aspp_rate<r>``, ``aspp_pool``
    and ``aspp_project``.
    """
    features_in = keras.Input((None, None, channels))

    def branch(kernel_size, rate, branch_name, before=()):
        return keras.Sequential(
            [
                *before,
                atrous_conv2d(filters, kernel_size, rate, use_bias=False, name=f"{branch_name}_conv"),
                keras.layers.BatchNormalization(
                    momentum=bn_momentum, synchronized=sync_batch_norm, name=f"{branch_name}_bn"
                ),
                keras.layers.ReLU(name=f"{branch_name}_relu"),
            ],
            name=branch_name,
        )

    mean = keras.layers.GlobalAveragePooling2D(keepdims=True, name="aspp_pool_mean")
    pooled = branch(1, 1, "aspp_pool", before=[mean])(features_in)
    pooled = tf.image.resize(pooled, tf.shape(features_in)[1:3], method="nearest")
    branches = [branch(1, 1, "aspp_1x1")] + [branch(3, r, f"aspp_rate{r}") for r in rates]
    x = keras.layers.Concatenate(name="aspp_concat")([b(features_in) for b in branches] + [pooled])
    x = branch(1, 1, "aspp_project")(x)
    return keras.Model(features_in, keras.layers.Dropout(dropout, name="aspp_dropout")(x), name=name)


# Backbones


def _dilation_plan(backbone: str, output_stride: int) -> dict:
    """Layer name -> config changes that bring the backbone from stride 32 to ``output_stride``."""
    plan = {}
    if output_stride == 32:  # keras.applications' own strides
        return plan
    if backbone == RESNET50:
        # Stage k's first block strides in its 1x1 conv and shortcut; its 3x3 convs dilate.
        stages = {16: {5: 2}, 8: {4: 2, 5: 4}}[output_stride]
        blocks = {4: 6, 5: 3}
        for stage, rate in stages.items():
            for name in (f"conv{stage}_block1_1_conv", f"conv{stage}_block1_0_conv"):
                plan[name] = {"strides": (1, 1)}
            for block in range(1, blocks[stage] + 1):
                plan[f"conv{stage}_block{block}_2_conv"] = {"dilation_rate": (rate, rate)}
    else:
        # MobileNetV2 strides in the depthwise conv of blocks 6 and 13, behind a (0,1) pad.
        strided = {16: {13: 2}, 8: {6: 2, 13: 4}}[output_stride]
        rate_before = 1
        for first, rate in sorted(strided.items()):
            plan[f"block_{first}_pad"] = {"padding": ((rate_before, rate_before), (rate_before, rate_before))}
            plan[f"block_{first}_depthwise"] = {
                "strides": (1, 1),
                "dilation_rate": (rate_before, rate_before),
            }
            last = 16 if first == 13 else 12
            for block in range(first + 1, last + 1):
                plan[f"block_{block}_depthwise"] = {"dilation_rate": (rate, rate)}
            rate_before = rate
    return plan


class BackboneWeightsError(RuntimeError):
    """``backbone_weights: imagenet`` could not be loaded (no network, or no such weights)."""


@contextlib.contextmanager
def _local_weights(weights: Optional[str]) -> Iterator[Optional[str]]:
    """``weights`` as ``keras.applications`` takes it: ``None``, ``"imagenet"`` or a local file.

    A weights file may be on any filesystem ``tf.io.gfile`` reads (``gs://`` on a Vertex job
    that cannot download ImageNet weights), but Keras opens ``.h5`` files with h5py, which
    reads local files only: a remote one is copied to a temporary local file, removed after.
    """
    if not weights or weights == IMAGENET_WEIGHTS:
        yield weights or None
        return
    if not tf.io.gfile.exists(weights):
        raise FileNotFoundError(
            f"backbone weights {weights!r} do not exist (give an .h5 file of the "
            "keras.applications model without top, 'imagenet' or '')"
        )
    if storage.is_local(weights):
        yield weights
        return
    with tempfile.TemporaryDirectory(prefix="backbone_weights_") as local_dir:
        local = os.path.join(local_dir, os.path.basename(weights))  # the suffix tells Keras the format
        tf.io.gfile.copy(weights, local)
        yield local


def build_backbone(
    backbone: str,
    input_shape: tuple,
    output_stride: int,
    width: float = 1.0,
    weights: Optional[str] = None,
    bn_momentum: float = KERAS_BN_MOMENTUM,
    sync_batch_norm: bool = False,
    freeze_batch_norm: bool = False,
) -> keras.Model:
    """``keras.applications`` backbone -> model with outputs (stride-4 features, stride-OS features).

    MobileNetV2's high-level features are those of its last inverted-residual block (320 x
    width channels), as in the DeepLab MobileNetV2 variant: its final 1x1 conv to 1280 channels
    only feeds ImageNet's classifier and would make ASPP 4x as expensive. ``bn_momentum``
    replaces keras.applications' 0.999 for MobileNetV2, whose moving statistics would still be
    three-quarters the initial ones after a 300-step fine-tune, so eval-mode outputs would be
    wrong for short trainings. ``freeze_batch_norm`` keeps the backbone's batch-norm layers in
    inference mode with fixed statistics: the usual choice when fine-tuning pretrained weights
    with a few images per replica, and no cross-replica traffic for them.
    """
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {BACKBONES}, got {backbone!r}")
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride}")

    def make(w):
        if backbone == RESNET50:
            return keras.applications.ResNet50(include_top=False, weights=w, input_shape=input_shape)
        return keras.applications.MobileNetV2(
            include_top=False, weights=w, input_shape=input_shape, alpha=width
        )

    try:
        with _local_weights(weights) as local_weights:
            base = make(local_weights)
    except Exception as e:
        if weights != IMAGENET_WEIGHTS:
            raise
        # No fallback to random init: that would train for hours to a model far worse than one
        # started from ImageNet (about ten points of mIoU), with only a log line to say why.
        raise BackboneWeightsError(
            f"could not load the ImageNet weights of {backbone} from keras.applications ({e}). "
            "Where this machine has no network, download keras.applications' weights file of the "
            f"{backbone} without top elsewhere and set trainer.backbone_weights=/path/to/..._notop.h5 "
            "or gs://bucket/..._notop.h5 (any tf.io.gfile path; "
            "e.g. resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5; MobileNetV2's end in "
            '_no_top.h5), or set trainer.backbone_weights="" to train from random init'
        ) from e

    plan = _dilation_plan(backbone, output_stride)

    def clone_layer(layer):
        changes = dict(plan.get(layer.name, {}))
        if isinstance(layer, keras.layers.BatchNormalization):
            changes["momentum"] = bn_momentum
            changes["synchronized"] = sync_batch_norm and not freeze_batch_norm
            changes["trainable"] = not freeze_batch_norm  # Keras 2: frozen BN runs in inference mode
        return layer.__class__.from_config({**layer.get_config(), **changes})

    model = keras.models.clone_model(base, clone_function=clone_layer)
    model.set_weights(base.get_weights())
    low, high = (
        ("conv2_block3_out", "conv5_block3_out")
        if backbone == RESNET50
        else ("block_3_expand_relu", "block_16_project_BN")
    )
    return keras.Model(
        model.input, [model.get_layer(low).output, model.get_layer(high).output], name=backbone
    )


# Model


def build_deeplabv3plus(
    image_size: int,
    num_classes: int,
    *,
    backbone_weights: Optional[str],
    backbone: str = TrainerConfig.backbone,
    output_stride: int = TrainerConfig.output_stride,
    width: float = TrainerConfig.width,
    aspp_filters: int = TrainerConfig.aspp_filters,
    aspp_rates: Sequence[int] = (6, 12, 18),
    decoder_filters: int = TrainerConfig.decoder_filters,
    low_level_filters: int = TrainerConfig.low_level_filters,
    dropout: float = TrainerConfig.dropout,
    sync_batch_norm: bool = False,
    freeze_backbone_batch_norm: bool = TrainerConfig.freeze_backbone_batch_norm,
    bn_momentum: float = TrainerConfig.bn_momentum,
    scale_inputs: bool = True,
) -> keras.Model:
    """DeepLabV3+: 0-255 RGB ``[S, S, 3]`` -> logits ``[S, S, num_classes]`` (float32).

    The architecture's defaults are the config's (``TrainerConfig``), so the model a test builds
    is the one the pipeline trains; ``training.build_model`` maps a whole config onto these
    arguments (and turns ``sync_batch_norm`` on only with more than one replica, so it is off
    here). The classes are the dataset spec's and ``backbone_weights`` is always given (``None``:
    random init; ``"imagenet"`` downloads).

    ``aspp_rates`` are given for output stride 16 and scaled for 8 and 32. Logits are float32 even
    under a mixed-precision policy, so the loss and softmax stay numerically safe.
    ``scale_inputs=False`` when Transform already normalized the images.
    """
    image_shape = (image_size, image_size, 3)
    inputs = keras.Input(image_shape, name=features.IMAGE)
    x = backbone_preprocess(backbone)(inputs) if scale_inputs else inputs
    low, high = build_backbone(
        backbone,
        image_shape,
        output_stride,
        width,
        backbone_weights,
        bn_momentum=bn_momentum,
        sync_batch_norm=sync_batch_norm,
        freeze_batch_norm=freeze_backbone_batch_norm,
    )(x)

    rates = [r * 16 // output_stride for r in aspp_rates]
    x = aspp(
        keras.backend.int_shape(high)[-1],
        aspp_filters,
        rates,
        dropout,
        sync_batch_norm=sync_batch_norm,
        bn_momentum=bn_momentum,
    )(high)
    low_size = keras.backend.int_shape(low)[1:3]
    x = keras.layers.Resizing(*low_size, interpolation="bilinear", name="aspp_upsample")(x)
    norm = {"sync_batch_norm": sync_batch_norm, "bn_momentum": bn_momentum}
    low = _conv_bn_relu(low, low_level_filters, 1, "decoder_low_level", **norm)
    x = keras.layers.Concatenate(name="decoder_concat")([x, low])
    x = _conv_bn_relu(x, decoder_filters, 3, "decoder_conv1", **norm)
    x = _conv_bn_relu(x, decoder_filters, 3, "decoder_conv2", **norm)
    x = keras.layers.Conv2D(num_classes, 1, name="logits_conv")(x)
    x = keras.layers.Resizing(image_size, image_size, interpolation="bilinear", name="logits_upsample")(x)
    logits = keras.layers.Activation("linear", dtype="float32", name="logits")(x)
    return keras.Model(inputs, logits, name=f"deeplabv3plus_{backbone}_os{output_stride}")
