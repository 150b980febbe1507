"""Test-time augmentation: the mean IoU it gains and the latency it costs, on the hard mode.

The tiny config is trained once on ``make-dataset --difficulty hard`` data (VOC-sized images,
trained at 128 px; cached in the work directory) and the same weights are exported as trained and
with each TTA option (``trainer.tta_scales``, ``trainer.tta_flip``). In one run, each export is
scored on the eval split at original resolution from its ``serving_examples`` masks (what the
Evaluator scores: one confusion matrix over the split), and timed through ``serving_default``
with one eval JPEG per call (median over the eval images, each called ``--repeats`` times after a
warm-up call, the exports called in turn); the ratios are against the plain export of the same
run.

    python -m benchmarks.test_time_augmentation [--steps 1000]
"""

import io
import os
import statistics
import sys
import time

import numpy as np
import tensorflow as tf
import tf_keras as keras
from PIL import Image

from benchmarks import fixtures, results_io
from benchmarks import transform_analysis as analysis
from core import config as config_lib
from core import dataset_spec, features, signatures
from evaluation import iou
from trainer import export, training, tta

IMAGES = 600  # the learning benchmark's hard-mode data: made once for both
MAX_SIDE = 500
IMAGE_SIZE = 128
VARIANTS = {
    "plain": None,
    "flip": tta.TestTimeAugmentation((1.0,), flip=True),
    "scales 0.75/1/1.25": tta.TestTimeAugmentation((0.75, 1.0, 1.25)),
    "scales 0.75/1/1.25 + flip": tta.TestTimeAugmentation((0.75, 1.0, 1.25), flip=True),
}


def _log(message: str) -> None:
    print(f"test_time_augmentation: {message}", file=sys.stderr, flush=True)


def trained(examples_uri: str, steps: int) -> str:
    """The tiny config's model after ``steps`` on ``examples_uri`` (cached): its SavedModel."""
    out = os.path.join(fixtures.WORK, f"tta_model_hard_{IMAGES}_{MAX_SIDE}px_at{IMAGE_SIZE}_{steps}")
    with fixtures.building(out) as build:
        if build:
            _log(f"training the tiny config for {steps} steps (cached in {out})")
            training.train(
                config_lib.load_config("tiny").trainer,
                training.TrainingJob.of_examples(
                    examples_uri, analysis.transform_dir(examples_uri), out, steps
                ),
            )
    return os.path.join(out, "serving")


def eval_examples(examples_uri: str) -> list:
    """The eval split's serialized tf.Examples."""
    files = tf.io.gfile.glob(os.path.join(examples_uri, f"Split-{features.EVAL_SPLIT}", "*"))
    return [r.numpy() for r in tf.data.TFRecordDataset(sorted(files), compression_type="GZIP")]


def mean_iou(model_dir: str, examples: list, spec: dataset_spec.DatasetSpec) -> float:
    """Mean IoU of the model's ``serving_examples`` masks against the examples' own masks."""
    serve = tf.saved_model.load(model_dir).signatures[signatures.SERVING_EXAMPLES]
    matrix = np.zeros((spec.num_classes, spec.num_classes), np.int64)
    for start in range(0, len(examples), 8):
        batch = examples[start : start + 8]
        out = serve(examples=tf.constant(batch))
        for k, serialized in enumerate(batch):
            example = tf.train.Example.FromString(serialized)
            # The record's mask: a palette PNG of class ids, read by index.
            mask = example.features.feature[features.MASK_KEY].bytes_list.value[0]
            truth = np.asarray(Image.open(io.BytesIO(mask)))
            h, w = truth.shape
            matrix += iou.confusion_matrix(
                truth, out[signatures.CLASS_IDS].numpy()[k, :h, :w], spec.num_classes
            )
    return float(iou.scores(matrix)["mean_iou"])


def latencies_ms(model_dirs: dict, images: list, repeats: int) -> dict:
    """``{name: median ms}`` of one ``serving_default`` call on one image, for every model.

    Interleaved, each image and repeat calling every model in turn, so that a load that comes
    and goes on a shared machine falls on all of them alike and their ratios hold."""
    serve = {
        name: tf.saved_model.load(d).signatures[signatures.SERVING_DEFAULT] for name, d in model_dirs.items()
    }
    for call in serve.values():
        call(images=tf.constant(images[:1]))  # warm-up: the first call traces
    times = {name: [] for name in serve}
    for image in images:
        for _ in range(repeats):
            for name, call in serve.items():
                start = time.perf_counter()
                call(images=tf.constant([image]))
                times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(t) for name, t in times.items()}


def main() -> dict:
    p = results_io.parser(__doc__, "test_time_augmentation")
    p.add_argument("--steps", type=int, default=1000, help="training steps of the scored model")
    p.add_argument("--timed-images", type=int, default=20, help="eval images in the latency figure")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    examples_uri, tft_output = fixtures.analyzed(IMAGES, IMAGE_SIZE, MAX_SIDE, difficulty="hard")
    plain_dir = trained(examples_uri, args.steps)
    spec = dataset_spec.of_model(plain_dir)
    examples = eval_examples(examples_uri)
    jpegs = [
        tf.train.Example.FromString(e).features.feature[features.IMAGE_KEY].bytes_list.value[0]
        for e in examples[: args.timed_images]
    ]
    net = keras.models.load_model(plain_dir, compile=False)  # the weights every variant exports
    results, model_dirs = {}, {}
    for name, views in VARIANTS.items():
        model_dir = plain_dir
        if views:
            slug = name.replace(" ", "_").replace("/", "-").replace("+", "and")
            model_dir = os.path.join(os.path.dirname(plain_dir), slug)
            export.export(net, tft_output, model_dir, spec, tta=views)
        results[name] = {
            "scales": list(views.scales) if views else [1.0],
            "flip": bool(views and views.flip),
            "mean_iou": mean_iou(model_dir, examples, spec),
        }
        model_dirs[name] = model_dir
        _log(f"{name}: {results[name]}")
    for name, ms in latencies_ms(model_dirs, jpegs, args.repeats).items():
        results[name]["latency_ms"] = ms
    plain = results["plain"]
    for r in results.values():
        r["mean_iou_gain"] = r["mean_iou"] - plain["mean_iou"]
        r["latency_ratio"] = r["latency_ms"] / plain["latency_ms"]
    saved = results_io.save(
        args.out, "test_time_augmentation", dataset="make-dataset --difficulty hard", images=IMAGES,
        max_side=MAX_SIDE, image_size=IMAGE_SIZE, train_steps=args.steps, eval_images=len(examples),
        timed_images=len(jpegs), variants=results,
    )  # fmt: skip
    best = max(results, key=lambda n: results[n]["mean_iou"])
    print(
        f"test_time_augmentation: plain mean IoU {plain['mean_iou']:.4f} at {plain['latency_ms']:.1f} ms; "
        f"best {best!r} {results[best]['mean_iou']:.4f} at {results[best]['latency_ratio']:.2f}x the latency"
    )
    return saved


if __name__ == "__main__":
    main()
