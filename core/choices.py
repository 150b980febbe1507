"""What the trainer can build and run on: the values some config keys choose from.

Here rather than in the trainer so that the config checks a choice when it loads, before any
component runs, without importing TensorFlow.
"""

RESNET50, MOBILENETV2 = "resnet50", "mobilenetv2"
BACKBONES = (RESNET50, MOBILENETV2)
OUTPUT_STRIDES = (8, 16, 32)
# Keras' BatchNormalization default momentum: the default of trainer.bn_momentum and of the
# model's layers, so that models exported before it was a setting load as they were built.
KERAS_BN_MOMENTUM = 0.99
SGD, ADAMW = "sgd", "adamw"
OPTIMIZERS = (SGD, ADAMW)
STRATEGIES = ("one_device", "mirrored", "multi_worker_mirrored", "tpu")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
DIRECT_RUNNING_MODES = ("in_memory", "multi_threading", "multi_processing")
# trainer.backbone_weights: keras.applications downloads these; any other value is a file's path.
IMAGENET_WEIGHTS = "imagenet"
# keras.applications has ImageNet weights for MobileNetV2 at these widths only.
MOBILENETV2_IMAGENET_WIDTHS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)

# Test-time augmentation (trainer/tta.py): each scale's view is a multiple of this, so that every
# backbone's output stride (at most 32) divides it and the decoder's stride-4 features keep
# exact sizes.
TTA_SIZE_MULTIPLE = 32


def tta_size(scale: float, image_size: int) -> int:
    """The side of the view at ``scale`` of a model trained at ``image_size``: ``image_size``
    for 1.0, else ``scale * image_size`` to the nearest multiple of 32 (halves up), at least 32."""
    if scale == 1.0:
        return image_size
    return max(TTA_SIZE_MULTIPLE, int(scale * image_size / TTA_SIZE_MULTIPLE + 0.5) * TTA_SIZE_MULTIPLE)


# What loads a candidate before it is pushed (``infra_validator.runtime``): TF's SavedModel
# loader in a child process, on every orchestrator (``serving/validation.py``); or TFX's own
# InfraValidator starting a ``tensorflow/serving`` container with Docker, where the pipeline's
# machine has Docker (LocalDagRunner, Airflow; not Kubeflow V2 / Vertex AI Pipelines); or none,
# the pusher pushing what the Evaluator blessed.
BUNDLE_RUNTIME = "bundle"
TF_SERVING_RUNTIME = "tf_serving"
NO_RUNTIME = "none"
INFRA_RUNTIMES = (BUNDLE_RUNTIME, TF_SERVING_RUNTIME, NO_RUNTIME)
