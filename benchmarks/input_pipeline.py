"""Input pipeline: what the trainer's tf.data pipeline delivers per core vs what the model eats.

For each config, in one run: the trainer's own ``trainer.data.make_dataset`` (read gzipped raw
TFRecords, parse, apply the Transform graph, scale/crop/flip, batch) is drained on a private
tf.data thread pool of one thread, which gives examples/s per core; then the same config's
model and optimiser run ``train_on_batch`` on a fixed in-memory batch with every core of the
machine (benchmarks/train_step.py's worker), which gives the rate the model consumes images.
The input pipeline is never the bottleneck while one core of it outruns the whole machine's
training: the ratio must be at least 3.

The data are VOC-sized generated images (500 px on the long side), ingested and analyzed at
each config's image size like the pipeline does.

    python -m benchmarks.input_pipeline
"""

import time

import tensorflow as tf

from benchmarks import fixtures, results_io, train_step
from core import config as config_lib
from trainer import data as data_lib

# (config, image size, batch and timed steps for the model's train step: voc's 8 per replica
# costs over a minute per step on a 2-core CPU, and images/s hardly depends on it).
CASES = (("tiny", 128, 8, 3), ("voc", 512, 4, 1))


def per_core_examples_per_second(config_name: str, size: int, num_images: int, batches: int) -> float:
    trainer = config_lib.load_config(config_name).trainer
    examples, tft_output = fixtures.analyzed(num_images, size)
    dataset = data_lib.make_dataset(
        f"{examples}/Split-train/*",
        tft_output,
        trainer.batch_size_per_replica,
        training=True,
        shuffle_buffer=trainer.shuffle_buffer,
        seed=trainer.seed,
        min_scale=trainer.min_scale,
        max_scale=trainer.max_scale,
    )
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    iterator = iter(dataset.with_options(options))
    for _ in range(3):  # warm up: trace the functions, fill the shuffle buffer
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * trainer.batch_size_per_replica / (time.perf_counter() - start)


def main() -> dict:
    parser = results_io.parser(__doc__, "input_pipeline")
    parser.add_argument("--num-images", type=int, default=120, help="generated VOC-sized images")
    parser.add_argument("--examples", type=int, default=256, help="examples drained per config")
    args = parser.parse_args()

    figures = {}
    for config_name, size, model_batch, steps in CASES:
        batch = config_lib.load_config(config_name).trainer.batch_size_per_replica
        per_core = per_core_examples_per_second(config_name, size, args.num_images, args.examples // batch)
        model = train_step.measure("ours", size, model_batch, warmup=1, steps=steps, config_name=config_name)
        figures[config_name] = {
            "image_size": size,
            "input_examples_per_second_per_core": round(per_core, 1),
            "model_images_per_second": model["images_per_second"],
            "model_batch": model_batch,
            "ratio": round(per_core / model["images_per_second"], 1),
        }
    result = results_io.save(args.out, "input_pipeline", target_ratio=3, figures=figures)
    print(
        "input_pipeline: "
        + "; ".join(
            f"{name} {f['image_size']} px: {f['input_examples_per_second_per_core']} examples/s per core vs "
            f"model {f['model_images_per_second']} images/s ({f['ratio']}x)"
            for name, f in figures.items()
        )
    )
    return result


if __name__ == "__main__":
    main()
