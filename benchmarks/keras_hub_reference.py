"""keras_hub's DeepLabV3+, the reference the train-step, learning and GPU benchmarks measure
against: built here once, as keras_hub's DeepLabV3 presets configure it, so the three compare
the same network. Imports nothing itself: each benchmark passes the ``keras_hub.models``
namespace it loaded in its own worker (Keras 3, apart from our tf_keras)."""

# keras_hub's ResNet v1 configurations (its presets' block types and counts).
RESNETS = {
    18: ("basic_block", (2, 2, 2, 2)),
    50: ("bottleneck_block", (3, 4, 6, 3)),
}


def deeplabv3plus(models, size: int, num_classes: int, resnet: int = 50):
    """``DeepLabV3ImageSegmenter`` on a ResNet from config (random init), logits out, for
    ``size`` x ``size`` inputs: ASPP on stride-32 features (P5) at rates 6/12/18, a 48-filter
    projection of the stride-4 ones (P2)."""
    block_type, blocks = RESNETS[resnet]
    encoder = models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[7],
        stackwise_num_filters=[64, 128, 256, 512],
        stackwise_num_blocks=list(blocks),
        stackwise_num_strides=[1, 2, 2, 2],
        block_type=block_type,
        image_shape=(size, size, 3),
    )
    backbone = models.DeepLabV3Backbone(
        image_encoder=encoder,
        projection_filters=48,
        low_level_feature_key="P2",
        spatial_pyramid_pooling_key="P5",
        upsampling_size=8,
        dilation_rates=[6, 12, 18],
        image_shape=(size, size, 3),
    )
    return models.DeepLabV3ImageSegmenter(backbone=backbone, num_classes=num_classes, activation=None)
