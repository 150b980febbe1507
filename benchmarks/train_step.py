"""Training step: our DeepLabV3+/ResNet-50 at 512 px, batch 4, on CPU, against keras_hub's.

Each contender runs ``train_on_batch`` on one fixed in-memory batch (no input pipeline), in its
own process, one after another in one run:

- ``ours``: the recipe (voc.yaml): ResNet-50 dilated to output stride 16, the paper's
  decoder (two 3x3 convs of 256), SGD with weight decay, the void-aware loss, MeanIoU.
- ``ours_os32``: the same at output stride 32, which is how keras_hub builds DeepLabV3+ (ASPP on
  the stride-32 features; its ASPP rates 6/12/18 there, ours scaled to match).
- ``keras_hub``: ``keras_hub.models.DeepLabV3ImageSegmenter`` 0.18.1 with a ResNet-50 v1
  backbone built from config (Keras 3; no weights fetched), its docstring's configuration. It
  shares our venv's TensorFlow and Keras 3 but is not one of our pins, so ``make bench``
  installs it with ``--target`` into ``.bench-site``, which only this process imports.
- ``floor``: ``tf.keras.applications.ResNet50`` forward and backward at the same size with a
  1x1 classifier: the least a ResNet-50 segmentation step can cost. The reference when
  keras_hub cannot be installed; otherwise only with ``--contenders``, to keep ``make bench``
  inside its 20 minutes.

The architectures differ in how much they compute, so each gets its forward GFLOPs per image
(TF's profiler on the traced graph), and GFLOP/s achieved says how well each uses the CPU
regardless; images/s and the ratios to keras_hub are the headline. Float32 everywhere, no XLA
(our Trainer does not use it; keras_hub is compiled with ``jit_compile=False`` to match).

    python -m benchmarks.train_step
"""

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time

import numpy as np

from benchmarks import keras_hub_reference, results_io
from core import features
from core.dataset_spec import VOC_SPEC  # the benchmark's model heads: VOC's classes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH_SITE = os.path.join(ROOT, ".bench-site")
RESULT_PREFIX = "RESULT "
CONTENDERS = ("ours", "ours_os32", "keras_hub", "floor")


def forward_gflops(model, size: int) -> float:
    """Forward float operations for one image, counted by TF's profiler on the traced graph."""
    import tensorflow as tf

    concrete = tf.function(lambda x: model(x, training=False)).get_concrete_function(
        tf.TensorSpec([1, size, size, 3], tf.float32)
    )
    builder = tf.compat.v1.profiler.ProfileOptionBuilder
    options = builder(builder.float_operation()).with_empty_output().build()
    return tf.compat.v1.profiler.profile(graph=concrete.graph, options=options).total_float_ops / 1e9


def batch(size: int, batch_size: int, label_size: int = 0, seed: int = 0) -> tuple:
    """A fixed batch: 0-255 RGB images and labels 0-20 with 5% void, at ``label_size`` (default size)."""
    rng = np.random.default_rng(seed)
    label_size = label_size or size
    images = rng.uniform(0, 255, (batch_size, size, size, 3)).astype(np.float32)
    labels = rng.integers(0, VOC_SPEC.num_classes, (batch_size, label_size, label_size)).astype(np.int64)
    labels[rng.random(labels.shape) < 0.05] = 255
    return images, labels


def build(contender: str, size: int, config_name: str):
    """``(model, label_size)`` compiled for training."""
    if contender == "keras_hub":
        import keras
        import keras_hub

        net = keras_hub_reference.deeplabv3plus(keras_hub.models, size, VOC_SPEC.num_classes)
        net.compile(
            optimizer=keras.optimizers.SGD(0.007, momentum=0.9),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255),
            metrics=[
                keras.metrics.MeanIoU(
                    VOC_SPEC.num_classes, ignore_class=features.IGNORE_LABEL, sparse_y_pred=False
                )
            ],  # as ours
            jit_compile=False,
        )
        return net, size
    import tf_keras as keras

    if contender == "floor":
        base = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(size, size, 3))
        net = keras.Sequential([base, keras.layers.Conv2D(VOC_SPEC.num_classes, 1)])
        net.compile(
            optimizer=keras.optimizers.SGD(0.007, momentum=0.9),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255),
        )
        return net, size // 32
    from core import config as config_lib
    from trainer import autograph, training

    trainer = config_lib.load_config(config_name).trainer
    stride = {"ours": trainer.output_stride, "ours_os32": 32}.get(contender)
    if stride is None:
        raise SystemExit(f"unknown contender {contender!r}")
    trainer = dataclasses.replace(trainer, backbone_weights="", output_stride=stride)
    if stride == 32:  # keras_hub's ASPP rates at stride 32 (ours are given for 16 and scaled)
        net = _with_aspp_rates(trainer, size, (12, 24, 36))
    else:
        net = training.build_model(
            trainer, size, replicas=1, images_normalized=False, num_classes=VOC_SPEC.num_classes
        )
    training.compile_model(net, trainer, total_steps=1000)
    autograph.skip_keras_conversion()  # as the Trainer does before it fits
    return net, size


def _with_aspp_rates(trainer, size, rates):
    from trainer import model

    return model.build_deeplabv3plus(
        size,
        VOC_SPEC.num_classes,
        backbone_weights=None,
        backbone=trainer.backbone,
        output_stride=trainer.output_stride,
        width=trainer.width,
        aspp_filters=trainer.aspp_filters,
        aspp_rates=rates,
        decoder_filters=trainer.decoder_filters,
        low_level_filters=trainer.low_level_filters,
        dropout=trainer.dropout,
    )


def worker(contender: str, size: int, batch_size: int, warmup: int, steps: int, config_name: str) -> dict:
    """Builds, warms up and times one contender in this process."""
    net, label_size = build(contender, size, config_name)
    images, labels = batch(size, batch_size, label_size)
    gflops = forward_gflops(net, size)
    for _ in range(warmup):  # the first call traces and builds the train function
        net.train_on_batch(images, labels)
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        net.train_on_batch(images, labels)
        seconds.append(time.perf_counter() - start)
    step = float(np.median(seconds))
    return {
        "parameters": int(net.count_params()),
        "forward_gflops_per_image": round(gflops, 2),
        "seconds_per_step": [round(s, 3) for s in seconds],
        "median_seconds_per_step": round(step, 3),
        "images_per_second": round(batch_size / step, 3),
        "forward_gflops_per_second": round(gflops * batch_size / step, 1),
    }


def measure(
    contender: str, size: int, batch_size: int, warmup: int, steps: int, config_name: str = "voc"
) -> dict:
    """Runs ``worker`` in a fresh process (Keras 2 and 3 never share one) and returns its figures."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    if contender == "keras_hub":
        if not os.path.isdir(os.path.join(BENCH_SITE, "keras_hub")):
            return {"unavailable": f"keras_hub is not installed in {BENCH_SITE} (make bench installs it)"}
        env["PYTHONPATH"] = os.pathsep.join([BENCH_SITE, ROOT, env.get("PYTHONPATH", "")])
    flags = {"--worker": contender, "--size": size, "--batch": batch_size, "--warmup": warmup,
             "--steps": steps, "--config": config_name}  # fmt: skip
    command = [sys.executable, "-m", "benchmarks.train_step", *(str(x) for kv in flags.items() for x in kv)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode or not lines:
        raise RuntimeError(f"{contender} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len(RESULT_PREFIX) :])


def main() -> dict:
    parser = results_io.parser(__doc__, "train_step")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--config", default="voc", help="the config whose model and optimiser are 'ours'")
    parser.add_argument("--contenders", nargs="+", choices=CONTENDERS, default=list(CONTENDERS[:3]))
    parser.add_argument("--worker", choices=CONTENDERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        figures = worker(args.worker, args.size, args.batch, args.warmup, args.steps, args.config)
        print(RESULT_PREFIX + json.dumps(figures), flush=True)
        return figures

    figures = {}
    contenders = list(args.contenders)
    while contenders:
        contender = contenders.pop(0)
        figures[contender] = measure(contender, args.size, args.batch, args.warmup, args.steps, args.config)
        print(f"  {contender}: {figures[contender]}", file=sys.stderr, flush=True)
        if "unavailable" in figures[contender] and "floor" not in figures and "floor" not in contenders:
            contenders.append("floor")  # no keras_hub here: the floor is the reference
    measured = {name for name, f in figures.items() if "unavailable" not in f}
    reference = "keras_hub" if "keras_hub" in measured else "floor"
    ref = figures[reference]
    ratios = {
        name: {
            "images_per_second": round(f["images_per_second"] / ref["images_per_second"], 3),
            "forward_gflops_per_second": round(
                f["forward_gflops_per_second"] / ref["forward_gflops_per_second"], 3
            ),
        }
        for name, f in figures.items()
        if "unavailable" not in f
    }
    result = results_io.save(
        args.out, "train_step", image_size=args.size, batch=args.batch, precision="float32", device="CPU",
        measured_steps=args.steps, reference=reference, figures=figures, ratio_to_reference=ratios,
    )  # fmt: skip
    rates = ", ".join(
        f"{name} {f['images_per_second']} ({ratios[name]['images_per_second']}x)"
        for name, f in figures.items()
        if name in ratios
    )
    print(f"train_step: {args.size} px batch {args.batch} CPU, images/s vs {reference}: {rates}")
    return result


if __name__ == "__main__":
    main()
