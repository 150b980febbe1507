"""The TensorBoard summaries of every evaluation (trainer/summaries.py), read back from the event files."""

import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from core import artifacts, dataset_spec, features, metrics, storage
from core.config import TrainerConfig, load_config
from tests import reference
from tests.conftest import TRAINED_EVALUATION_EVERY
from trainer import data, optimization, summaries, training

SIZE = 8
# "never" is in no label, and the model is made never to predict it: it has no IoU.
SPEC = dataset_spec.DatasetSpec(
    name="shapes",
    layout=dataset_spec.FOLDERS,
    class_names=("background", "cat", "dog", "never"),
    colours=((0, 0, 0), (200, 0, 0), (0, 200, 0), (0, 0, 200)),
    ignore_colour=(128, 128, 128),
)
NEVER = 3
COLOURS = np.array(SPEC.colours, np.uint8)
CONFIG = TrainerConfig(learning_rate=0.1, warmup_steps=3, weight_decay=0.0)
STEPS_PER_EPOCH, EPOCHS = 2, 3


def read_events(directory) -> dict:
    """``{tag: {step: value}}`` of every event file in ``directory``: scalars as floats, images
    as ``[N, H, W, 3]`` uint8 decoded from their PNGs."""
    found = {}
    for path in sorted(glob.glob(os.path.join(directory, "events.out.tfevents.*"))):
        for record in tf.data.TFRecordDataset(path):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                tensor = tf.make_ndarray(value.tensor)
                if value.metadata.plugin_data.plugin_name == "images":
                    # [width, height, PNG, PNG, ...]
                    tensor = np.stack([tf.io.decode_png(png).numpy() for png in tensor[2:]])
                else:
                    tensor = float(tensor)
                found.setdefault(value.tag, {})[event.step] = tensor
    return found


def _data(seed: int, count: int) -> tuple:
    """``count`` random 0-255 images, labels 0-2 with some void pixels."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (count, SIZE, SIZE, 3)).astype(np.float32)
    labels = rng.integers(0, NEVER, (count, SIZE, SIZE))
    labels[rng.uniform(size=labels.shape) < 0.1] = features.IGNORE_LABEL
    return images, labels


def _model() -> keras.Model:
    """A 1x1 convolution over scaled pixels, compiled as the trainer compiles DeepLab."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 3))
    logits = keras.layers.Conv2D(SPEC.num_classes, 1)(keras.layers.Rescaling(1 / 255)(inputs))
    net = keras.Model(inputs, logits)
    kernel, bias = net.layers[-1].get_weights()
    bias[NEVER] = -1e4  # no training of a few steps brings it back
    net.layers[-1].set_weights([kernel, bias])
    training.compile_model(net, CONFIG, STEPS_PER_EPOCH * EPOCHS)
    return net


class _Record(keras.callbacks.Callback):
    """At each epoch end (after the callback under test): the step, the logs, and the model's
    masks of the eval images and of the images shown."""

    def __init__(self, eval_images, shown):
        super().__init__()
        self.eval_images, self.shown = eval_images, shown
        self.epochs = []

    def on_epoch_end(self, epoch, logs=None):
        masks = [
            np.argmax(self.model(x, training=False).numpy(), axis=-1) for x in (self.eval_images, self.shown)
        ]
        self.epochs.append((int(self.model.optimizer.iterations.numpy()), dict(logs), *masks))


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> tuple:
    """One fit (the costly part of this module) for the chief's callback and another worker's
    (``enabled=False``), each with its own log dir: ``(chief dir, other dir, epochs, eval_x,
    eval_y)``."""
    chief, other = tmp_path_factory.mktemp("chief"), tmp_path_factory.mktemp("other")
    net = _model()
    x, y = _data(0, 16)
    eval_x, eval_y = _data(1, 6)
    callbacks = [
        summaries.EvaluationSummaries(str(chief), SPEC, eval_x[:3], eval_y[:3]),
        summaries.EvaluationSummaries(str(other), SPEC, None, None, enabled=False),
        _Record(eval_x, eval_x[:3]),
    ]
    net.fit(
        x, y, batch_size=4, epochs=EPOCHS, steps_per_epoch=STEPS_PER_EPOCH, validation_data=(eval_x, eval_y),
        validation_batch_size=4, callbacks=callbacks, verbose=0,
    )  # fmt: skip
    return chief, other, callbacks[-1].epochs, eval_x, eval_y


def test_every_evaluation_writes_the_learning_rate_class_iou_and_masks(fitted):
    log_dir, _, epochs, eval_x, eval_y = fitted
    events = read_events(log_dir / summaries.SUMMARY_DIR)
    steps = [step for step, *_ in epochs]
    assert steps == [2, 4, 6]
    iou_tags = {f"{metrics.CLASS_IOU}/{name}" for name in SPEC.class_names[:NEVER]}
    assert (
        set(events) == {summaries.LEARNING_RATE, summaries.MASKS} | iou_tags
    ), "no IoU of a class that never occurs"
    assert all(sorted(events[tag]) == steps for tag in events)

    schedule = optimization.WarmupPolyDecay(
        CONFIG.learning_rate, STEPS_PER_EPOCH * EPOCHS, CONFIG.warmup_steps
    )
    shown = eval_y[:3]
    for step, logs, eval_masks, shown_masks in epochs:
        # The rate of the step just taken (the history's learning_rate): schedule(step - 1).
        assert events[summaries.LEARNING_RATE][step] == float(schedule(step - 1))
        # Each class's IoU over the eval data, against numpy's count of its pixels ...
        expected = reference.scores(list(zip(eval_y, eval_masks, strict=True)), SPEC.num_classes)["class_iou"]
        assert np.isnan(expected[NEVER])
        got = [events[f"{metrics.CLASS_IOU}/{name}"][step] for name in SPEC.class_names[:NEVER]]
        np.testing.assert_allclose(got, expected[:NEVER], rtol=1e-6)
        # ... which average to Keras' own mean IoU.
        assert np.mean(got) == pytest.approx(logs[metrics.VAL_MEAN_IOU], rel=1e-6)

        # Image | true mask | predicted mask, in the spec's colours, void grey.
        masks = events[summaries.MASKS][step]
        assert masks.shape == (3, SIZE, 3 * SIZE, 3) and masks.dtype == np.uint8
        image, truth, predicted = np.split(masks, 3, axis=2)
        np.testing.assert_array_equal(image, np.round(eval_x[:3]).astype(np.uint8))
        void = shown == features.IGNORE_LABEL
        assert void.any() and (truth[void] == SPEC.ignore_colour).all()
        np.testing.assert_array_equal(truth[~void], COLOURS[shown[~void]])
        np.testing.assert_array_equal(predicted, COLOURS[shown_masks])
    assert len({events[summaries.MASKS][s].tobytes() for s in steps}) > 1, "the masks follow the model"


def test_other_workers_write_nothing(fitted):
    _, log_dir, epochs, *_ = fitted
    assert len(epochs) == EPOCHS
    assert os.listdir(log_dir) == []


@pytest.fixture(scope="module")
def evaluated() -> tuple:
    """``(model, logs, eval_x, eval_y)``: the untrained model after one evaluation, with the logs
    that ``fit`` would give ``on_epoch_end`` then, for the tests that call a callback's methods
    themselves rather than train."""
    net = _model()
    eval_x, eval_y = _data(1, 6)
    logs = net.evaluate(eval_x, eval_y, batch_size=4, verbose=0, return_dict=True)
    return net, {f"val_{name}": value for name, value in logs.items()}, eval_x, eval_y


def _scalars_without_images(callback, log_dir, evaluated) -> None:
    """``callback``, without images, at one evaluation: it writes the learning rate and each
    class's IoU (exact values), no masks, and traces no prediction."""
    net, logs, eval_x, eval_y = evaluated
    callback.set_model(net)
    callback.on_train_begin()
    callback.on_epoch_end(0, logs)
    callback.on_train_end()
    assert callback._predict is None, "no prediction function traced"
    events = read_events(log_dir / summaries.SUMMARY_DIR)
    iou_tags = [f"{metrics.CLASS_IOU}/{name}" for name in SPEC.class_names[:NEVER]]
    assert set(events) == {summaries.LEARNING_RATE, *iou_tags}
    schedule = optimization.WarmupPolyDecay(
        CONFIG.learning_rate, STEPS_PER_EPOCH * EPOCHS, CONFIG.warmup_steps
    )
    assert events[summaries.LEARNING_RATE] == {0: float(schedule(0))}  # no step taken yet
    predicted = np.argmax(net(eval_x, training=False).numpy(), axis=-1)
    expected = reference.scores(list(zip(eval_y, predicted, strict=True)), SPEC.num_classes)["class_iou"]
    got = [events[tag][0] for tag in iou_tags]
    np.testing.assert_allclose(got, expected[:NEVER], rtol=1e-6)
    assert np.mean(got) == pytest.approx(logs[metrics.VAL_MEAN_IOU], rel=1e-6)


def test_no_image_is_read_nor_predicted_with_summary_images_0(evaluated, tmp_path, monkeypatch):
    def read(*args, **kwargs):
        raise AssertionError("no eval image is read")

    monkeypatch.setattr(summaries.data_lib, "make_dataset", read)
    config = TrainerConfig(summary_images=0)
    files = [str(tmp_path / "nowhere-*")]
    callback = summaries.EvaluationSummaries.of_eval_files(
        str(tmp_path), SPEC, files, None, count=config.summary_images
    )
    assert callback.images is None and not callback.shows_images
    _scalars_without_images(callback, tmp_path, evaluated)


def test_images_are_shown_as_the_model_sees_them():
    np.testing.assert_array_equal(
        summaries.displayed(np.array([-0.3, 0.4, 127.5, 254.6, 300.0]), normalized=False),
        [0, 0, 128, 255, 255],
    )
    # Normalized: the mean in the middle, 2 standard deviations either side fill 0-255.
    np.testing.assert_array_equal(
        summaries.displayed(np.array([-3.0, -2.0, 0.0, 1.0, 2.0]), normalized=True), [0, 0, 128, 192, 255]
    )


def test_the_images_shown_are_the_first_of_the_eval_split(analyzed):
    examples_uri, tft_output = analyzed
    pattern = os.path.join(examples_uri, "Split-eval", "*")
    images, labels = summaries.first_examples([pattern], tft_output, 3)
    first = next(iter(data.make_dataset(pattern, tft_output, 3, training=False)))
    np.testing.assert_array_equal(images, first[0].numpy())
    np.testing.assert_array_equal(labels, first[1].numpy())
    # More asked for than the split has: the all-void fillers are left out.
    records = data.count_records(pattern)
    images, labels = summaries.first_examples([pattern], tft_output, records + 2)
    assert len(images) == len(labels) == records
    assert (labels != features.IGNORE_LABEL).any(axis=(1, 2)).all()


def test_an_eval_split_without_records_shows_no_images(analyzed, evaluated, tmp_path):
    _, tft_output = analyzed
    empty = str(tmp_path / "eval-empty.gz")
    tf.io.TFRecordWriter(empty, options="GZIP").close()
    assert data.count_records(empty) == 0
    callback = summaries.EvaluationSummaries.of_eval_files(str(tmp_path), SPEC, [empty], tft_output, count=3)
    # first_examples: no images, of the shapes that a split with records gives.
    size = tft_output.transformed_feature_spec()[features.LABEL].shape[0]
    assert callback.images.shape == (0, size, size, 3) and callback.images.dtype == np.float32
    assert callback.labels.shape == (0, size, size) and callback.labels.dtype == np.int64
    assert not callback.shows_images
    _scalars_without_images(callback, tmp_path, evaluated)


@pytest.mark.slow
def test_a_trained_run_shows_every_evaluation(trained_model):
    """The tiny config's run (tests/conftest.py): ``train`` writes the summaries of each of its
    evaluations, and they agree with its history."""
    model_dir, result = trained_model
    run_dir = os.path.join(os.path.dirname(model_dir), "run")
    events = read_events(os.path.join(run_dir, summaries.SUMMARY_DIR))
    history = json.loads(storage.read_file(os.path.join(run_dir, artifacts.HISTORY_FILE), binary=False))
    rows = history[artifacts.HISTORY_EPOCHS]
    steps = [row["step"] for row in rows]
    assert steps == list(range(TRAINED_EVALUATION_EVERY, result.steps + 1, TRAINED_EVALUATION_EVERY))
    assert sorted(events[summaries.LEARNING_RATE]) == sorted(events[summaries.MASKS]) == steps
    # A class's IoU is missing from the evaluations where it was neither labelled nor predicted.
    assert all(set(values) <= set(steps) for values in events.values())
    names = dataset_spec.of_model(model_dir).class_names
    ious = {tag: values for tag, values in events.items() if tag.startswith(f"{metrics.CLASS_IOU}/")}
    assert set(ious) <= {f"{metrics.CLASS_IOU}/{name}" for name in names}
    for row in rows:
        step = row["step"]
        assert events[summaries.LEARNING_RATE][step] == pytest.approx(row["learning_rate"], rel=1e-6)
        written = [values[step] for values in ious.values() if step in values]
        assert np.mean(written) == pytest.approx(row[metrics.VAL_MEAN_IOU], rel=1e-5)
    size = 128
    assert {events[summaries.MASKS][step].shape for step in steps} == {
        (load_config("tiny").trainer.summary_images, size, 3 * size, 3)
    }
