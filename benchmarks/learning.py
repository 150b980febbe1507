"""Learning: how fast each recipe learns the generator's hard mode from random init, at 128 px.

Accuracy per unit of training, not speed per step (benchmarks/train_step.py has that). Every
recipe trains from random init on the same records, with the same batch and the same step
budget, each in its own process, one after another in one run:

- ``ours``: the tiny config (the demo's recipe), built by our own code: ``training.build_model``
  and ``training.compile_model`` (DeepLabV3+/MobileNetV2, SGD + warmup + poly, the void-aware
  loss) and the Trainer's augmentation ``trainer.data.augment`` (scale, crop, flip), keyed per
  element as ``trainer.data.make_dataset`` keys it. ``--set`` overrides its settings.
- ``tutorial``: the TensorFlow segmentation tutorial's recipe: a U-Net whose encoder is
  ``tf_keras.applications.MobileNetV2`` (``weights=None``; the tutorial freezes its ImageNet
  encoder, a random one is trained), its five skip layers, pix2pix upsample blocks
  (Conv2DTranspose, batch-norm, ReLU), Adam at its default rate, sparse cross-entropy from
  logits (void pixels ignored: the tutorial's pets have none), horizontal flip only, inputs
  scaled to [0, 1].
- ``keras_hub``: ``keras_hub.models.DeepLabV3ImageSegmenter`` 0.18.1 (Keras 3) on a ResNet
  built from config, with the keras-hub segmentation guide's recipe: SGD, momentum 0.9,
  weight decay 1e-4, clipnorm 10, learning rate ``0.007 * batch / 16`` on a cosine decay over
  the step budget, horizontal flip, inputs scaled to [0, 1]. ResNet-18 (basic blocks
  2/2/2/2), the smallest ResNet keras_hub offers, by default: ResNet-50 (the guide's) costs
  several times ours per step and would reach only a few hundred steps in the CPU budget;
  ``--keras-hub-resnet 50`` runs it. Installed by ``make bench`` into ``.bench-site``, which
  only its worker imports (as train_step's); without it the recipe is reported unavailable.

The records are made once per dataset: a hard-mode dataset is generated, ingested and
analyzed as the pipeline does (benchmarks/fixtures.py), and the Transform graph is applied
once to write 128 px train records and eval records that carry each image's original size and
full-size mask. So no recipe pays for decoding JPEGs in its CPU-seconds, and all see the same
pixels. Evaluation is the Evaluator's: each eval image's logits, cropped to the un-padded
region, are resized to its original size (bilinear, as ``export.to_original_resolution``),
argmax, against its full-size mask, void excluded; mean IoU from one confusion matrix over
the whole eval split (``evaluation.iou``).

CPU-seconds are the worker's process CPU time (every thread: the model's and tf.data's)
spent in training steps, evaluations excluded; wall seconds likewise. Steps stop at
``--steps`` or when the CPU budget is spent, whichever comes first; each recipe is evaluated
every ``--eval-every`` steps and at its last step. Two comparisons come from the one run:
mean IoU at equal steps (the steps every recipe reached) and at equal CPU-seconds (the best
mean IoU each reached within each budget).

    python -m benchmarks.learning                      # ~35 minutes on 2 cores
    python -m benchmarks.learning --steps 60 --eval-every 30 --num-images 120   # smoke: ~3 min
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

from benchmarks import fixtures, keras_hub_reference, results_io
from core import artifacts
from datasets import synthetic_voc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH_SITE = os.path.join(ROOT, ".bench-site")
RESULT_PREFIX = "RESULT "
RECIPES = ("ours", "tutorial", "keras_hub")
TRAIN_FILE, EVAL_FILE, META_FILE = "train.tfrecord", "eval.tfrecord", "meta.json"
# The records' keys (written by ``materialize``, read by ``read_records``).
IMAGE, LABEL, HEIGHT, WIDTH, RESIZED_HEIGHT, RESIZED_WIDTH, MASK = (
    "image", "label", "height", "width", "resized_height", "resized_width", "mask"
)  # fmt: skip
TUTORIAL_SKIPS = (
    "block_1_expand_relu",
    "block_3_expand_relu",
    "block_6_expand_relu",
    "block_13_expand_relu",
    "block_16_project",
)
TUTORIAL_UP_FILTERS = (512, 256, 128, 64)
# Evaluated at these steps too, besides every --eval-every: the equal-steps comparison then has
# common points even with a recipe that stops, on the CPU budget, within its first hundred steps.
EARLY_EVALS = (10, 25, 50)


# ---------------------------------------------------------------------------------------------
# Records: made once, read by every recipe


def materialize(num_images: int, image_size: int, difficulty: str, max_side: int = 500) -> str:
    """A directory of transformed train and eval records of a generated dataset, made once.

    Train records: the Transform graph's image (float32, 0-255, padded) and label. Eval records
    add what original-resolution scoring needs: the original and resized height and width and
    the full-size mask (class ids, 255 void), decoded as Transform decodes it.
    """
    name = f"learning_{num_images}_{max_side}px_at{image_size}{fixtures.difficulty_suffix(difficulty)}"
    out = os.path.join(fixtures.WORK, name)
    with fixtures.building(out) as build:
        if build:
            _write_records(num_images, image_size, difficulty, max_side, out)
    return out


def _write_records(num_images, image_size, difficulty, max_side, out) -> None:
    import tensorflow as tf

    from benchmarks import preprocessing
    from benchmarks import transform_analysis as analysis
    from core import dataset_spec, features

    examples, tft_output = fixtures.analyzed(num_images, image_size, max_side, difficulty=difficulty)
    num_classes = dataset_spec.of_examples(examples).num_classes
    layer = tft_output.transform_features_layer()
    spec = tft_output.raw_feature_spec()
    counts = {}
    for split, name in ((features.TRAIN_SPLIT, TRAIN_FILE), (features.EVAL_SPLIT, EVAL_FILE)):
        files = sorted(tf.io.gfile.glob(os.path.join(artifacts.split_dir(examples, split), "*")))
        raw = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(16)
        counts[split] = 0
        with tf.io.TFRecordWriter(os.path.join(out, name)) as writer:
            for serialized in raw:
                parsed = tf.io.parse_example(serialized, spec)
                transformed = layer(parsed)
                for i in range(int(tf.shape(serialized)[0])):
                    record = {
                        IMAGE: _bytes(transformed[features.IMAGE][i].numpy().astype(np.float32)),
                        LABEL: _bytes(transformed[features.LABEL][i].numpy().astype(np.uint8)),
                    }
                    if split == features.EVAL_SPLIT:
                        mask, _ = preprocessing.decode_mask(
                            tf.reshape(parsed[features.MASK_KEY][i], []), num_classes
                        )
                        height, width = mask.shape
                        rh, rw = preprocessing.resized_shape(height, width, image_size)
                        record.update(
                            {
                                HEIGHT: _int(height),
                                WIDTH: _int(width),
                                RESIZED_HEIGHT: _int(int(rh)),
                                RESIZED_WIDTH: _int(int(rw)),
                                MASK: _bytes(mask.numpy()),
                            }
                        )
                    writer.write(
                        tf.train.Example(features=tf.train.Features(feature=record)).SerializeToString()
                    )
                    counts[split] += 1
    meta = {
        "image_size": image_size,
        "num_classes": num_classes,
        "difficulty": difficulty,
        "generated_images": num_images,
        "train_images": counts[features.TRAIN_SPLIT],
        "eval_images": counts[features.EVAL_SPLIT],
        "transform_graph": analysis.transform_dir(examples),
    }
    with open(os.path.join(out, META_FILE), "w") as f:
        json.dump(meta, f, indent=1)


def _bytes(array: np.ndarray):
    import tensorflow as tf

    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[array.tobytes()]))


def _int(value: int):
    import tensorflow as tf

    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def read_meta(data_dir: str) -> dict:
    with open(os.path.join(data_dir, META_FILE)) as f:
        return json.load(f)


def train_dataset(data_dir: str, batch_size: int, augment, seed: int, shuffle_buffer: int = 512):
    """Shuffled, repeated, augmented ``(image 0-255 float32, label int64)`` batches of train records.

    ``augment(image, label, key)`` gets each element's own key for stateless random ops: the
    element's index in the stream folded into ``seed``, as ``trainer.data.make_dataset`` keys it.
    """
    import tensorflow as tf

    size = read_meta(data_dir)["image_size"]
    spec = {IMAGE: tf.io.FixedLenFeature([], tf.string), LABEL: tf.io.FixedLenFeature([], tf.string)}

    def parse(serialized):
        example = tf.io.parse_single_example(serialized, spec)
        image = tf.reshape(tf.io.decode_raw(example[IMAGE], tf.float32), [size, size, 3])
        label = tf.cast(tf.reshape(tf.io.decode_raw(example[LABEL], tf.uint8), [size, size]), tf.int64)
        return image, label

    base = tf.constant([seed, 0], tf.int64)
    dataset = (
        tf.data.TFRecordDataset(os.path.join(data_dir, TRAIN_FILE))
        .map(parse, num_parallel_calls=tf.data.AUTOTUNE)
        .cache()
        .shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        .repeat()
        .enumerate()
        .map(
            lambda i, example: augment(*example, tf.random.experimental.stateless_fold_in(base, i)),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    )
    return dataset.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def flip_only(image, label, key):
    """Horizontal flip of image and label together, half the time: the tutorial's and the guide's."""
    import tensorflow as tf

    flip = tf.random.stateless_uniform([], key) < 0.5
    return (
        tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image),
        tf.cond(flip, lambda: tf.reverse(label, [1]), lambda: label),
    )


def read_eval(data_dir: str) -> list:
    """Eval records as ``(image [S, S, 3], resized (h, w), full-size mask [H, W] uint8)``."""
    import tensorflow as tf

    size = read_meta(data_dir)["image_size"]
    spec = {
        IMAGE: tf.io.FixedLenFeature([], tf.string),
        MASK: tf.io.FixedLenFeature([], tf.string),
        **{k: tf.io.FixedLenFeature([], tf.int64) for k in (HEIGHT, WIDTH, RESIZED_HEIGHT, RESIZED_WIDTH)},
    }
    items = []
    for serialized in tf.data.TFRecordDataset(os.path.join(data_dir, EVAL_FILE)):
        example = {k: v.numpy() for k, v in tf.io.parse_single_example(serialized, spec).items()}
        image = np.frombuffer(example[IMAGE], np.float32).reshape(size, size, 3)
        mask = np.frombuffer(example[MASK], np.uint8).reshape(example[HEIGHT], example[WIDTH])
        items.append((image, (int(example[RESIZED_HEIGHT]), int(example[RESIZED_WIDTH])), mask))
    return items


def mean_iou(predict, items: list, num_classes: int, batch_size: int) -> float:
    """Mean IoU at original resolution: logits cropped to the un-padded region, resized bilinear
    to the mask's size, argmax; one confusion matrix over every item."""
    import tensorflow as tf

    from evaluation import iou

    matrix = np.zeros([num_classes, num_classes], np.int64)
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        logits = np.asarray(predict(np.stack([image for image, _, _ in chunk])))
        for (_, (rh, rw), mask), one in zip(chunk, logits, strict=True):
            region = tf.image.resize(one[:rh, :rw].astype(np.float32), mask.shape, method="bilinear")
            ids = tf.cast(tf.argmax(region, axis=-1), tf.uint8).numpy()
            matrix += iou.confusion_matrix(mask, ids, num_classes)
    return float(iou.scores(matrix)["mean_iou"])


# ---------------------------------------------------------------------------------------------
# Recipes: each returns (model, augment, batch size) with the model compiled for training


def build_ours(meta: dict, steps: int, overrides: list) -> tuple:
    import tf_keras as keras

    from core import config as config_lib
    from trainer import data as data_lib
    from trainer import losses, training
    from transform import preprocessing

    trainer = config_lib.load_config("tiny", overrides).trainer
    keras.utils.set_random_seed(trainer.seed)
    size, num_classes = meta["image_size"], meta["num_classes"]
    net = training.build_model(trainer, size, replicas=1, images_normalized=False, num_classes=num_classes)
    class_weights = None
    if trainer.class_weights:
        import tensorflow_transform as tft

        counts = preprocessing.read_class_counts(tft.TFTransformOutput(meta["transform_graph"]), num_classes)
        class_weights = losses.class_weights_from_counts(counts, num_classes, trainer.class_weight_power)
    training.compile_model(net, trainer, total_steps=steps, class_weights=class_weights)

    def augment(image, label, key):
        return data_lib.augment(image, label, size, key, trainer.min_scale, trainer.max_scale)

    return net, augment, trainer.batch_size_per_replica, trainer.seed, trainer.shuffle_buffer


def build_tutorial(meta: dict, steps: int, batch_size: int) -> tuple:
    import tf_keras as keras

    from trainer import autograph

    autograph.skip_keras_conversion()  # as for ours: 100 CPU-s less at step 1

    keras.utils.set_random_seed(0)
    size = meta["image_size"]
    inputs = keras.Input([size, size, 3])
    encoder = keras.applications.MobileNetV2(input_shape=[size, size, 3], include_top=False, weights=None)
    down = keras.Model(encoder.input, [encoder.get_layer(name).output for name in TUTORIAL_SKIPS])
    skips = down(keras.layers.Rescaling(1 / 255)(inputs))
    x = skips[-1]
    for filters, skip in zip(TUTORIAL_UP_FILTERS, reversed(skips[:-1]), strict=True):
        x = _pix2pix_upsample(keras, filters)(x)
        x = keras.layers.Concatenate()([x, skip])
    logits = keras.layers.Conv2DTranspose(meta["num_classes"], 3, strides=2, padding="same")(x)
    net = keras.Model(inputs, logits)
    net.compile(
        optimizer=keras.optimizers.Adam(),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255),
    )
    return net, flip_only, batch_size, 0, 512


def _pix2pix_upsample(keras, filters: int):
    """pix2pix's ``upsample(filters, 3)``: stride-2 transposed conv, batch-norm, ReLU."""
    return keras.Sequential(
        [
            keras.layers.Conv2DTranspose(
                filters, 3, strides=2, padding="same",
                kernel_initializer=keras.initializers.RandomNormal(0.0, 0.02), use_bias=False,
            ),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
        ]
    )  # fmt: skip


def build_keras_hub(meta: dict, steps: int, batch_size: int, resnet: int) -> tuple:
    import keras
    import keras_hub

    keras.utils.set_random_seed(0)
    size = meta["image_size"]
    segmenter = keras_hub_reference.deeplabv3plus(keras_hub.models, size, meta["num_classes"], resnet)
    inputs = keras.Input((size, size, 3))
    net = keras.Model(inputs, segmenter(keras.layers.Rescaling(1 / 255)(inputs)))
    schedule = keras.optimizers.schedules.CosineDecay(0.007 * batch_size / 16, decay_steps=steps)
    net.compile(
        optimizer=keras.optimizers.SGD(schedule, momentum=0.9, weight_decay=1e-4, clipnorm=10.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255),
        jit_compile=False,
    )
    return net, flip_only, batch_size, 0, 512


# ---------------------------------------------------------------------------------------------
# One recipe's training, in its own process


def worker(args) -> dict:
    """Trains one recipe, evaluating every ``eval_every`` steps; returns its curve."""
    meta = read_meta(args.data)
    if args.worker == "ours":
        net, augment, batch, seed, buffer = build_ours(meta, args.steps, args.set)
    elif args.worker == "tutorial":
        net, augment, batch, seed, buffer = build_tutorial(meta, args.steps, args.batch)
    else:
        net, augment, batch, seed, buffer = build_keras_hub(
            meta, args.steps, args.batch, args.keras_hub_resnet
        )
    if batch != args.batch:
        raise SystemExit(f"{args.worker}: batch {batch} differs from the benchmark's --batch {args.batch}")
    batches = iter(train_dataset(args.data, batch, augment, seed, buffer))
    items = read_eval(args.data)
    # Besides every eval_every steps, an evaluation as the next step would cross a CPU budget
    # (the last one ends training), so that the equal-CPU comparison has a point within every
    # budget, even for a recipe of few, slow steps.
    budgets = sorted({b for b in args.cpu_budgets if b < args.cpu_budget} | {args.cpu_budget})
    curve, losses, cpu, wall, step = [], [], 0.0, 0.0, 0
    while step < args.steps:
        cpu_start, wall_start = time.process_time(), time.perf_counter()
        images, labels = next(batches)
        out = net.train_on_batch(images, labels)  # the loss, or [loss, *metrics]
        last = time.process_time() - cpu_start
        losses.append(float(out[0] if isinstance(out, list) else out))
        cpu += last
        wall += time.perf_counter() - wall_start
        step += 1
        # The next step costs about what this one did; the first one also traced the graph.
        ahead = last if step > 1 else 0.0
        crossing = cpu + ahead > budgets[0]
        if crossing or step % args.eval_every == 0 or step in EARLY_EVALS or step == args.steps:
            miou = mean_iou(net.predict_on_batch, items, meta["num_classes"], batch)
            # Train loss: the mean since the previous evaluation (underfitting or not generalising?).
            loss, losses = round(float(np.mean(losses)), 4), []
            curve.append({"step": step, "cpu_seconds": round(cpu, 1), "wall_seconds": round(wall, 1),
                          "mean_iou": round(miou, 4), "train_loss": loss})  # fmt: skip
            print(f"  {args.worker}: {curve[-1]}", file=sys.stderr, flush=True)
        while budgets and cpu + ahead > budgets[0]:
            budgets.pop(0)
        if not budgets:
            break
    return {"parameters": int(net.count_params()), "batch": batch, "curve": curve}


def run_recipe(recipe: str, args) -> dict:
    """Runs ``worker`` for ``recipe`` in a fresh process (Keras 2 and 3 never share one)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    if recipe == "keras_hub":
        if not os.path.isdir(os.path.join(BENCH_SITE, "keras_hub")):
            return {"unavailable": f"keras_hub is not installed in {BENCH_SITE} (make bench installs it)"}
        env["PYTHONPATH"] = os.pathsep.join([BENCH_SITE, ROOT, env.get("PYTHONPATH", "")])
    flags = {"--worker": recipe, "--data": args.data, "--steps": args.steps, "--eval-every": args.eval_every,
             "--cpu-budget": args.cpu_budget, "--batch": args.batch,
             "--keras-hub-resnet": args.keras_hub_resnet}  # fmt: skip
    command = [sys.executable, "-m", "benchmarks.learning", *(str(x) for kv in flags.items() for x in kv)]
    command += ["--cpu-budgets", *(str(b) for b in args.cpu_budgets)]
    command += [x for override in args.set for x in ("--set", override)]
    # stderr (progress, errors) goes where ours goes: make bench's log.
    done = subprocess.run(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode or not lines:
        raise RuntimeError(f"{recipe} failed (exit {done.returncode}): its stderr is above")
    return json.loads(lines[-1][len(RESULT_PREFIX) :])


# ---------------------------------------------------------------------------------------------
# Comparisons from the one run


def at_equal_steps(figures: dict) -> dict:
    """``{step: {recipe: mean IoU}}`` at every evaluated step that every recipe reached."""
    curves = {
        name: {p["step"]: p["mean_iou"] for p in f["curve"]} for name, f in figures.items() if "curve" in f
    }
    common = sorted(set.intersection(*(set(c) for c in curves.values()))) if curves else []
    return {str(step): {name: c[step] for name, c in curves.items()} for step in common}


def at_equal_cpu(figures: dict, budgets) -> dict:
    """``{budget: {recipe: best mean IoU evaluated within that many CPU-seconds, or None}}``."""
    table = {}
    for budget in budgets:
        row = {}
        for name, f in figures.items():
            if "curve" in f:
                within = [p["mean_iou"] for p in f["curve"] if p["cpu_seconds"] <= budget]
                row[name] = max(within) if within else None
        table[f"{budget:g}"] = row
    return table


def main() -> dict:
    parser = results_io.parser(__doc__, "learning")
    parser.add_argument("--num-images", type=int, default=600, help="generated hard-mode images")
    parser.add_argument("--difficulty", choices=synthetic_voc.DIFFICULTIES, default=synthetic_voc.HARD,
                        help="the generator's mode")  # fmt: skip
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8, help="every recipe's batch (the tiny config's)")
    parser.add_argument("--steps", type=int, default=2000, help="step budget of every recipe")
    parser.add_argument("--eval-every", type=int, default=200)
    parser.add_argument("--cpu-budget", type=float, default=1200.0, help="CPU-seconds cap of every recipe")
    parser.add_argument("--cpu-budgets", type=float, nargs="+", default=[60, 150, 300, 600, 1200],
                        help="the equal-CPU comparison's budgets")  # fmt: skip
    parser.add_argument("--recipes", nargs="+", choices=RECIPES, default=list(RECIPES))
    parser.add_argument(
        "--keras-hub-resnet", type=int, choices=sorted(keras_hub_reference.RESNETS), default=18
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override of our tiny config, e.g. trainer.learning_rate=0.1")  # fmt: skip
    parser.add_argument("--worker", choices=RECIPES, help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        figures = worker(args)
        print(RESULT_PREFIX + json.dumps(figures), flush=True)
        return figures
    if args.eval_every < 1 or args.steps < 1:
        parser.error("--steps and --eval-every must be at least 1")

    start = time.perf_counter()
    args.data = materialize(args.num_images, args.image_size, args.difficulty)
    meta = read_meta(args.data)
    print(f"learning: records in {args.data}: {meta}", file=sys.stderr, flush=True)
    figures = {}
    for recipe in args.recipes:
        print(f"learning: {recipe}", file=sys.stderr, flush=True)
        figures[recipe] = run_recipe(recipe, args)
    if "curve" in figures.get("keras_hub", {}):
        figures["keras_hub"]["backbone"] = f"ResNet-{args.keras_hub_resnet}"
    result = results_io.save(
        args.out, "learning", dataset={k: meta[k] for k in meta if k != "transform_graph"},
        batch=args.batch, step_budget=args.steps, cpu_budget=args.cpu_budget, eval_every=args.eval_every,
        overrides=args.set, figures=figures, at_equal_steps=at_equal_steps(figures),
        at_equal_cpu_seconds=at_equal_cpu(figures, args.cpu_budgets),
        wall_seconds=round(time.perf_counter() - start),
    )  # fmt: skip
    finals = ", ".join(
        f"{name} {c[-1]['mean_iou']} at step {c[-1]['step']} ({c[-1]['cpu_seconds']} CPU-s)"
        for name, c in ((name, f["curve"]) for name, f in figures.items() if "curve" in f)
    )
    print(
        f"learning: {meta['difficulty']} mode, {args.image_size} px, batch {args.batch}; "
        f"final mean IoU: {finals}"
    )
    return result


if __name__ == "__main__":
    main()
