"""MirroredStrategy over 2 logical CPUs: one worker with two replicas.

Its own process because logical devices must be configured before TensorFlow starts. Two uses,
each printing one JSON line:

* no arguments: one training step on one device and under the strategy; the largest weight
  difference between the two runs and how far one step moved the weights (so the test can tell
  "equal" from "nothing happened").
* ``eval <spec.json>`` (``{"job": {TrainingJob fields}, "batch_size_per_replica": n}``): the
  trainer's distributed eval dataset (``training._datasets``), iterated to its end;
  the eval steps the trainer asks for and, per replica, each batch's labels as digests
  (``examples.label_digest``), so the test can check which images each replica saw.
"""

import dataclasses
import json
import sys

import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import tensorflow_transform as tft  # noqa: E402 - after the device set-up

from core.config import TrainerConfig  # noqa: E402
from core.dataset_spec import VOC_SPEC  # noqa: E402
from tests.helpers import examples  # noqa: E402
from trainer import autograph, distribute, training  # noqa: E402

SIZE, GLOBAL_BATCH = 64, 4
CONFIG = TrainerConfig(
    backbone="mobilenetv2", width=0.35, backbone_weights="", aspp_filters=16, decoder_filters=16,
    low_level_filters=8, dropout=0.0, learning_rate=0.1, weight_decay=1e-4, sync_batch_norm=True,
    # Tracing the gradients of 52 synchronized batch-norms takes TF over 10 minutes on CPU (see
    # distribute.mirrored_strategy); the 8 of the DeepLab head are synchronized here.
    freeze_backbone_batch_norm=True,
)  # fmt: skip


def one_step(strategy, initial, images, labels):
    replicas = strategy.num_replicas_in_sync
    with strategy.scope():
        net = training.build_model(
            CONFIG, SIZE, replicas, images_normalized=False, num_classes=VOC_SPEC.num_classes
        )
        training.compile_model(net, CONFIG, total_steps=10)
    net.set_weights(initial)
    dataset = tf.data.Dataset.from_tensors((images, labels))  # one global batch
    net.fit(dataset, epochs=1, verbose=0)
    return net.get_weights(), replicas


def main():
    autograph.skip_keras_conversion()  # as the Trainer does before it fits
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (GLOBAL_BATCH, SIZE, SIZE, 3)).astype(np.float32)
    labels = rng.integers(0, 21, (GLOBAL_BATCH, SIZE, SIZE)).astype(np.int64)
    labels[:, :8] = 255
    tf.keras.utils.set_random_seed(1)
    initial = training.build_model(
        CONFIG, SIZE, 1, images_normalized=False, num_classes=VOC_SPEC.num_classes
    ).get_weights()
    single, _ = one_step(tf.distribute.get_strategy(), initial, images, labels)
    mirrored, replicas = one_step(distribute.mirrored_strategy(["/cpu:0", "/cpu:1"]), initial, images, labels)
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(single, mirrored, strict=True))
    moved = max(float(np.max(np.abs(a - b))) for a, b in zip(single, initial, strict=True))
    print(json.dumps({"max_diff": diff, "moved": moved, "replicas": replicas}))


def eval_batches(spec_path: str) -> None:
    with open(spec_path) as f:
        spec = json.load(f)
    job = training.TrainingJob.of_files(**spec["job"])
    config = dataclasses.replace(CONFIG, batch_size_per_replica=spec["batch_size_per_replica"])
    strategy = distribute.mirrored_strategy(["/cpu:0", "/cpu:1"])
    global_batch = config.batch_size_per_replica * strategy.num_replicas_in_sync
    tft_output = tft.TFTransformOutput(job.transform_output)
    _, eval_ds, eval_steps = training._datasets(config, job, tft_output, strategy, global_batch, start_step=0)
    batches = [[] for _ in range(strategy.num_replicas_in_sync)]
    for _, labels in eval_ds:  # every step the distributed dataset gives, to its end
        for replica, local in enumerate(strategy.experimental_local_results(labels)):
            batches[replica].append([examples.label_digest(label) for label in local.numpy()])
    replicas = strategy.num_replicas_in_sync
    print(json.dumps({"replicas": replicas, "eval_steps": eval_steps, "batches": batches}))


if __name__ == "__main__":
    if sys.argv[1:2] == ["eval"]:
        eval_batches(sys.argv[2])
    else:
        main()
