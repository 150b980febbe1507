"""Training throughput on one GPU: DeepLabV3+/ResNet-50 at 512 px, float32 against mixed precision.

Why this is not our trainer: the machine this runs on (an H100 lent for the measurement) has
PyTorch and JAX but no TensorFlow, and TF 2.16 with its CUDA wheels (about 1 GB) cannot be carried
there. What can be carried is pure Python: Keras 3 (3.15) and keras_hub (0.25; the train-step
benchmark's reference), run here on the JAX backend, where ``fit`` compiles the whole train step
with XLA. keras_hub's package ``__init__`` imports every model, and one of them (Gemma 3's
preprocessor) imports TensorFlow, so only the ResNet and DeepLabV3 modules are loaded (see
``keras_hub_models``). The model is keras_hub's ``DeepLabV3ImageSegmenter`` with a
ResNet-50 v1 backbone from config (random init: no weights can be fetched there), 21 classes, SGD
with momentum 0.9 and the void-aware sparse cross-entropy, on one fixed batch already on the GPU
(no input pipeline), the same configuration as ``benchmarks/train_step.py``'s ``keras_hub``.

What the figures mean for our users: not our trainer's speed on a GPU, but how much the same
architecture gains on an H100 from ``mixed_bfloat16`` or ``mixed_float16`` over float32, and
how much of float32's speed comes from TF32 matmuls (JAX allows them by default on the GPU; the
``float32_no_tf32`` run asks XLA for full float32 precision). ``trainer.mixed_precision: auto``
picks ``mixed_float16`` on GPUs; on an H100 (2026-11-22, batch 16, JAX 0.11.2) that ran 2.07x
float32's images/s, ``mixed_bfloat16`` 1.90x, and float32 without TF32 0.44x. Our trainer runs
tf.keras without XLA, where unfused element-wise work is a larger share, so its own ratio may be
lower; it needs an input pipeline of some 470 images/s per GPU to see any of it.

Each precision runs in its own process (a fresh policy, a fresh XLA compilation, the GPU's
memory back between runs), one after another in one run; the JSON is rewritten after each, so a
run cut short keeps what it measured. ms per step is the median over ``--steps`` steps after
``--warmup`` steps (the first compiles); each step ends when its loss reaches the host, as in a
``fit`` whose callbacks read the logs. Run from the repository root on the GPU machine:

    python3 -m benchmarks.accelerator_throughput --out $OUT/accelerator_throughput.json
"""

import argparse
import importlib.metadata
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
import types

from benchmarks import keras_hub_reference, results_io

NAME = "accelerator_throughput"
RESULT_PREFIX = "RESULT "
NUM_CLASSES = 21  # VOC's; not imported from pipeline, which needs TensorFlow
IGNORE_LABEL = 255
REFERENCE = "float32"
# name: (Keras dtype policy, JAX default matmul precision; None keeps JAX's default, TF32 on GPU)
PRECISIONS = {
    "float32": ("float32", None),
    "mixed_bfloat16": ("mixed_bfloat16", None),
    "mixed_float16": ("mixed_float16", None),
    "float32_no_tf32": ("float32", "highest"),
}
LIBRARIES = ("jax", "jaxlib", "keras", "keras-hub", "numpy")


def keras_hub_models():
    """keras_hub's ResNet and DeepLabV3 classes, without running ``keras_hub/__init__.py``.

    That file imports every model, and from keras_hub 0.19 on Gemma 3's preprocessor imports
    TensorFlow at module level, which the GPU machine lacks. An empty package object named
    ``keras_hub`` with the installed package's path lets Python import just these modules.
    """
    spec = importlib.util.find_spec("keras_hub")
    if spec is None:
        raise SystemExit("keras_hub is not installed: carry its wheel (see the module docstring)")
    package = types.ModuleType("keras_hub")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules.setdefault("keras_hub", package)
    from keras_hub.src.models.deeplab_v3 import deeplab_v3_backbone, deeplab_v3_segmenter
    from keras_hub.src.models.resnet import resnet_backbone

    return types.SimpleNamespace(
        ResNetBackbone=resnet_backbone.ResNetBackbone,
        DeepLabV3Backbone=deeplab_v3_backbone.DeepLabV3Backbone,
        DeepLabV3ImageSegmenter=deeplab_v3_segmenter.DeepLabV3ImageSegmenter,
    )


def build(size: int):
    """keras_hub's DeepLabV3+ with ResNet-50 v1, compiled as train_step.py compiles it (no metric)."""
    import keras

    models = keras_hub_models()
    net = keras_hub_reference.deeplabv3plus(models, size, NUM_CLASSES)
    net.compile(
        optimizer=keras.optimizers.SGD(0.007, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=IGNORE_LABEL),
    )
    return net


def fixed_batch(batch: int, size: int, seed: int = 0):
    """Images in [-1, 1] (float16 cannot overflow on them) and labels 0-20 with 5% void, on the GPU."""
    import jax
    import numpy as np

    rng = np.random.default_rng(seed)
    images = rng.uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES, (batch, size, size, 1)).astype(np.int32)  # Keras's mask shape
    labels[rng.random(labels.shape) < 0.05] = IGNORE_LABEL
    return jax.device_put(images), jax.device_put(labels)


def step_seconds(start: float, ends: list, warmup: int) -> list:
    """Each step's seconds after the first ``warmup`` (whose first one compiles)."""
    if len(ends) <= warmup:
        raise ValueError(f"{len(ends)} steps ran, not more than the {warmup} warm-up steps")
    times = [start, *ends]
    return [times[i + 1] - times[i] for i in range(warmup, len(ends))]


def measure(precision: str, size: int, batch: int, warmup: int, steps: int) -> dict:
    """Runs ``fit`` for warm-up + measured steps in this process and returns the figures."""
    os.environ["KERAS_BACKEND"] = "jax"
    import jax
    import keras

    policy, matmul_precision = PRECISIONS[precision]
    if matmul_precision is not None:
        jax.config.update("jax_default_matmul_precision", matmul_precision)
    keras.mixed_precision.set_global_policy(policy)
    net = build(size)
    images, labels = fixed_batch(batch, size)

    def forever():
        while True:
            yield images, labels

    ends = []
    # A batch-end callback makes fit hand it the logs as Python floats: each step waits for its loss.
    clock = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda b, logs: ends.append(time.perf_counter())
    )
    start = time.perf_counter()
    # keras_hub's own fit (PipelineModel) routes data through tf.data; with no preprocessor
    # attached, Keras's fit is the same training loop without TensorFlow.
    history = keras.Model.fit(
        net, forever(), steps_per_epoch=warmup + steps, epochs=1, callbacks=[clock], shuffle=False, verbose=0
    )
    seconds = step_seconds(start, ends, warmup)
    median = statistics.median(seconds)
    device = jax.devices()[0]
    return {
        "policy": policy,
        "optimizer": type(net.optimizer).__name__,
        "jax_default_matmul_precision": str(jax.config.jax_default_matmul_precision),
        "tf32_allowed_for_float32_matmuls": matmul_precision != "highest",
        "device_kind": device.device_kind,
        "parameters": net.count_params(),
        "first_step_seconds": round(ends[0] - start, 2),
        "ms_per_step": [round(1000 * s, 2) for s in seconds],
        "median_ms_per_step": round(1000 * median, 2),
        "mean_ms_per_step": round(1000 * statistics.fmean(seconds), 2),
        "steps_per_second": round(1 / median, 3),
        "images_per_second": round(batch / median, 1),
        "final_loss": round(float(history.history["loss"][-1]), 4),
        "peak_gpu_memory_gib": round((device.memory_stats() or {}).get("peak_bytes_in_use", 0) / 2**30, 2),
    }


def run_worker(precision: str, args) -> dict:
    """One precision in a fresh process; its figures, or the error that ended it."""
    command = [sys.executable, "-m", f"benchmarks.{NAME}", "--worker", precision]
    command += ["--size", str(args.size), "--batch", str(args.batch)]
    command += ["--warmup", str(args.warmup), "--steps", str(args.steps)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.worker_timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"no result within {args.worker_timeout} s"}
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    return {"error": f"exit status {done.returncode}: {done.stderr.strip()[-2000:]}"}


def ratios(figures: dict) -> dict:
    """images/s of each precision that ran, over float32's (the same run, the same GPU)."""
    reference = figures.get(REFERENCE, {}).get("images_per_second")
    if not reference:
        return {}
    return {
        name: round(f["images_per_second"] / reference, 3)
        for name, f in figures.items()
        if "images_per_second" in f
    }


def gpu() -> dict:
    """The GPU's name, driver and memory as nvidia-smi reports them."""
    fields = ("name", "driver_version", "memory.total")
    query = ["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader"]
    try:
        line = subprocess.run(query, capture_output=True, text=True, check=True).stdout.splitlines()[0]
        return dict(zip(fields, (v.strip() for v in line.split(",")), strict=True))
    except (OSError, subprocess.CalledProcessError, IndexError, ValueError) as error:
        return {"error": f"nvidia-smi: {error}"}


def versions() -> dict:
    """Python's and the libraries' versions, read from their metadata (nothing imported)."""
    found = {"python": sys.version.split()[0]}
    for name in LIBRARIES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def main() -> None:
    p = results_io.parser(__doc__, NAME)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--precisions", nargs="+", choices=list(PRECISIONS), default=list(PRECISIONS))
    p.add_argument("--worker-timeout", type=int, default=180)
    p.add_argument("--worker", choices=list(PRECISIONS), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        figures = measure(args.worker, args.size, args.batch, args.warmup, args.steps)
        print(RESULT_PREFIX + json.dumps(figures), flush=True)
        return
    figures = {}
    setup = {
        "backend": "jax (XLA, jit)",
        "image_size": args.size,
        "batch": args.batch,
        "num_classes": NUM_CLASSES,
        "warmup_steps": args.warmup,
        "measured_steps": args.steps,
        "gpu": gpu(),
        "versions": versions(),
        "nvidia_tf32_override": os.environ.get("NVIDIA_TF32_OVERRIDE"),
    }
    for precision in args.precisions:
        figures[precision] = run_worker(precision, args)
        print(precision, json.dumps(figures[precision])[:300], flush=True)
        results_io.save(
            args.out, NAME, **setup, reference=REFERENCE, figures=figures, ratio_to_float32=ratios(figures)
        )


if __name__ == "__main__":
    main()
