"""The training recipe: schedule, weight decay, precision, strategies, fault tolerance, learning."""

import json
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from pipeline import config as config_lib
from pipeline import features
from pipeline.config import TrainerConfig
from tests import reference
from tests.conftest import feature, png_indices, read_examples, transform_dir
from tests.helpers import examples as examples_lib
from trainer import callbacks, distribute, optimization, training
from trainer.export import SERVING_DEFAULT

ROOT = config_lib.PROJECT_ROOT
SMALL = dict(
    backbone="mobilenetv2", width=0.35, backbone_weights="", aspp_filters=16, decoder_filters=16,
    low_level_filters=8, batch_size_per_replica=4, learning_rate=0.02, warmup_steps=2,
)  # fmt: skip


def test_warmup_then_poly_decay():
    schedule = optimization.WarmupPolyDecay(0.1, total_steps=110, warmup_steps=10, power=0.9, end=0.001)
    steps = np.array([0, 4, 9, 10, 60, 110, 500])
    warm = 0.1 * (steps + 1) / 10
    poly = (0.1 - 0.001) * (1 - np.clip((steps - 10) / 100, 0, 1)) ** 0.9 + 0.001
    expected = np.where(steps < 10, warm, poly)
    np.testing.assert_allclose([float(schedule(s)) for s in steps], expected, rtol=1e-6)
    clone = optimization.WarmupPolyDecay.from_config(schedule.get_config())
    assert float(clone(60)) == pytest.approx(float(schedule(60)))


def test_weight_decay_spares_batch_norm_and_biases():
    config = TrainerConfig(learning_rate=0.5, momentum=0.0, weight_decay=0.1)
    optimizer = optimization.make_optimizer(config, total_steps=100)
    kernel = tf.Variable(tf.ones((2, 2)), name="conv/kernel")
    gamma = tf.Variable(tf.ones(2), name="bn/gamma")
    bias = tf.Variable(tf.ones(2), name="conv/bias")
    variables = [kernel, gamma, bias]
    optimizer.apply_gradients([(tf.zeros_like(v), v) for v in variables])
    # Decoupled decay: w -= lr * wd * w for kernels only; zero gradients move nothing else.
    np.testing.assert_allclose(kernel.numpy(), 1 - 0.5 * 0.1, rtol=1e-6)
    np.testing.assert_array_equal(gamma.numpy(), 1.0)
    np.testing.assert_array_equal(bias.numpy(), 1.0)


def test_precision_policy_and_strategy_names():
    default = tf.distribute.get_strategy()
    assert distribute.precision_policy("auto", default) == "float32"  # no GPU in CI
    assert distribute.precision_policy("mixed_bfloat16", default) == "mixed_bfloat16"
    with pytest.raises(ValueError, match="mixed_precision"):
        distribute.precision_policy("half", default)
    with pytest.raises(ValueError, match="trainer.strategy"):
        distribute.make_strategy("horovod")
    os.environ.pop("TF_CONFIG", None)
    with pytest.raises(ValueError, match="TF_CONFIG"):
        distribute.make_strategy("multi_worker_mirrored")


def test_nan_loss_fails_the_run_instead_of_stopping_quietly():
    net = keras.Sequential([keras.layers.Dense(1, input_shape=(1,))])
    net.compile(optimizer="sgd", loss="mse")
    x = np.array([[1.0], [np.nan]], np.float32)
    with pytest.raises(callbacks.TrainingDivergedError, match="became nan at step"):
        net.fit(x, np.zeros((2, 1)), batch_size=2, epochs=1, verbose=0, callbacks=[callbacks.RaiseOnNaN()])


def test_mixed_precision_model_keeps_float32_logits():
    previous = distribute.set_policy("mixed_bfloat16")
    try:
        net = training.build_model(TrainerConfig(**SMALL), 64, replicas=1, images_normalized=False)
        assert net.get_layer("aspp").compute_dtype == "bfloat16"
        assert net(tf.zeros((1, 64, 64, 3))).dtype == tf.float32
    finally:
        distribute.set_policy(previous)


# Restarts: what the best-checkpoint and history callbacks keep when BackupAndRestore resumes.


class _Scores(keras.callbacks.Callback):
    """Puts each epoch's given ``val_score`` in the logs: an evaluation whose results we choose."""

    def __init__(self, scores):
        super().__init__()
        self.scores = scores

    def on_epoch_end(self, epoch, logs=None):
        logs["val_score"] = self.scores[epoch]


class _Snapshots(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.weights = {}

    def on_epoch_end(self, epoch, logs=None):
        self.weights[epoch + 1] = self.model.get_weights()


class _PreemptedError(RuntimeError):
    pass


class _PreemptAtStep(keras.callbacks.Callback):
    """Ends the process's training abruptly, as a preemption would: no on_train_end runs."""

    def __init__(self, step):
        super().__init__()
        self.step = step

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) == self.step:
            raise _PreemptedError()


def _tiny_fit(directory, scores, preempt_at=None) -> tuple:
    """Fits a two-layer model for ``len(scores)`` epochs of 4 steps, backing up every 2 steps."""
    keras.utils.set_random_seed(len(scores))
    inputs = keras.Input((3,))
    net = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.BatchNormalization()(inputs)))
    net.compile(keras.optimizers.SGD(0.1), "mse")
    best = callbacks.BestCheckpoint(str(directory / "best"), "val_score")
    history = callbacks.HistoryWriter(str(directory / "history.json"))
    snapshots = _Snapshots()
    cbs = [keras.callbacks.BackupAndRestore(str(directory / "backup"), save_freq=2), _Scores(scores), best,
           history, snapshots]  # fmt: skip
    if preempt_at:
        cbs.append(_PreemptAtStep(preempt_at))
    x, y = np.random.default_rng(0).normal(size=(2, 16, 3)).astype(np.float32)
    try:
        net.fit(x, y[:, :2], batch_size=4, epochs=len(scores), callbacks=cbs, verbose=0)
    except _PreemptedError:
        pass
    return net, best, history, snapshots


def _assert_same_weights(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_best_weights_and_history_survive_a_restart_and_stale_ones_do_not(tmp_path):
    scores = [0.5, 0.8, 0.1, 0.2, 0.3]
    # Preempted at step 11 (epoch 3), after the backup of step 10 and the best epoch, 2.
    _, _, _, before = _tiny_fit(tmp_path, scores, preempt_at=11)
    assert sorted(before.weights) == [1, 2]
    best_dir = str(tmp_path / "best")
    assert callbacks.read_best(tf.train.latest_checkpoint(best_dir)) == (0.8, 2)

    net, best, history, _ = _tiny_fit(tmp_path, scores)  # resumes: epochs 3-5 score worse
    assert (best.best, best.best_epoch) == (0.8, 2)
    _assert_same_weights(net.get_weights(), before.weights[2])  # what training ends with
    on_disk = tf.train.latest_checkpoint(best_dir)
    assert callbacks.read_best(on_disk) == (0.8, 2), "a worse epoch replaced the best checkpoint"
    reloaded = keras.models.clone_model(net)
    reloaded.load_weights(on_disk)
    _assert_same_weights(reloaded.get_weights(), before.weights[2])
    assert [r["epoch"] for r in history.epochs] == [1, 2, 3, 4, 5]
    assert [r["val_score"] for r in history.epochs] == scores

    # A new run in the same directories (nothing to resume): the old best and history are stale.
    net, best, history, snapshots = _tiny_fit(tmp_path, [0.1, 0.2])
    assert (best.best, best.best_epoch) == (0.2, 2)
    _assert_same_weights(net.get_weights(), snapshots.weights[2])
    assert callbacks.read_best(tf.train.latest_checkpoint(best_dir)) == (0.2, 2)
    assert [r["epoch"] for r in json.load(open(tmp_path / "history.json"))["epochs"]] == [1, 2]


@pytest.mark.slow
def test_mirrored_step_on_two_devices_equals_one_device():
    out = subprocess.run(
        [sys.executable, "-m", "tests.helpers.mirrored_step"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    assert result["moved"] > 1e-3, "the step must change the weights for the comparison to mean anything"
    # Same global batch, sync batch-norm: the same update up to float summation order.
    assert result["max_diff"] < 1e-4 * result["moved"] + 1e-6, result


# Processes that train on the analyzed test dataset


def _job(analyzed, out, **overrides) -> dict:
    """TrainingJob fields for the analyzed test dataset, written under ``out``."""
    examples_uri, _ = analyzed
    job = dict(
        train_files=[os.path.join(examples_uri, "Split-train", "*")],
        eval_files=[os.path.join(examples_uri, "Split-eval", "*")],
        transform_output=transform_dir(examples_uri),
        serving_model_dir=os.path.join(out, "serving"),
        model_run_dir=os.path.join(out, "run"),
        train_steps=8,
    )
    job.update(overrides)
    return job


def _spawn(spec: dict, path: str, env=None) -> tuple:
    """Starts a training process; its output goes to a file (a full pipe would block it, and
    with it every worker waiting on its collectives)."""
    with open(path, "w") as f:
        json.dump(spec, f)
    log = path + ".log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.helpers.train_process", path],
            cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}, stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    return proc, log


def _wait(proc_and_log, timeout=600) -> str:
    proc, log = proc_and_log
    proc.wait(timeout=timeout)
    with open(log) as f:
        text = f.read()
    assert proc.returncode == 0, text[-3000:]
    return text


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.fixture(scope="module")
def eval_in_four_files(analyzed, tmp_path_factory):
    """The test dataset's eval split rewritten as 4 files: more files than the 2 workers."""
    examples_uri, _ = analyzed
    out = str(tmp_path_factory.mktemp("eval_in_four_files"))
    return examples_lib.reshard(os.path.join(examples_uri, "Split-eval", "*"), out, 4)


def _keras_mean_iou(model_dir, tft_output, eval_files, batch_size) -> float:
    """Mean IoU of an exported model over ``eval_files`` in this one process: the Keras model
    reloaded from the SavedModel, Transform outputs, argmax, scored by numpy (tests/reference)."""
    net = keras.models.load_model(model_dir, compile=False)
    records = [r.numpy() for r in tf.data.TFRecordDataset(eval_files, compression_type="GZIP")]
    out = tft_output.transform_features_layer()(tf.io.parse_example(records, tft_output.raw_feature_spec()))
    predictions = np.argmax(net.predict(out[features.IMAGE], batch_size=batch_size, verbose=0), axis=-1)
    return reference.scores(list(zip(out[features.LABEL].numpy(), predictions, strict=True)))["mean_iou"]


@pytest.mark.slow
def test_multi_worker_mirrored_with_two_local_workers(analyzed, eval_in_four_files, tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    # Backbone batch-norm frozen: tracing the gradients of 52 synchronized batch-norms takes TF
    # over 10 minutes on CPU (README, Trainer); the head's are synchronized across the workers.
    config = dict(
        SMALL, strategy="multi_worker_mirrored", steps_per_epoch=4, backup_every_steps=0,
        freeze_backbone_batch_norm=True,
    )  # fmt: skip
    procs = []
    for index in range(2):
        spec = {
            # 6 steps: an epoch of 4 and one of 2, not two of 4.
            "config": config,
            "job": _job(analyzed, str(tmp_path), train_steps=6, eval_files=eval_in_four_files),
            "result": str(tmp_path / f"result{index}.json"),
        }
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        procs.append(_spawn(spec, str(tmp_path / f"spec{index}.json"), {"TF_CONFIG": tf_config}))
    for proc in procs:
        _wait(proc)
    results = [json.load(open(tmp_path / f"result{i}.json")) for i in range(2)]
    assert [r["replicas"] for r in results] == [2, 2]
    assert [r["global_batch_size"] for r in results] == [8, 8]
    assert [r["steps"] for r in results] == [6, 6]
    # Both took part in the (collective) export; only the chief's copy stays.
    loaded = tf.saved_model.load(str(tmp_path / "serving"))
    assert SERVING_DEFAULT in loaded.signatures
    assert not [d for d in os.listdir(tmp_path) if d.startswith(".scratch")]
    history = json.load(open(tmp_path / "run" / training.HISTORY_FILE))["epochs"]
    assert [r["step"] for r in history] == [4, 6]
    # The 6th and last step used the rate of a poly schedule 6 steps long, not 8.
    schedule = optimization.WarmupPolyDecay(SMALL["learning_rate"], 6, SMALL["warmup_steps"])
    assert history[-1]["learning_rate"] == pytest.approx(float(schedule(5)))
    # Each worker evaluated its half of the images; the mIoU they agree on is the exported
    # (best) weights' over all of them, counted once, as one process computes it.
    _, tft_output = analyzed
    expected = _keras_mean_iou(str(tmp_path / "serving"), tft_output, eval_in_four_files, batch_size=4)
    assert results[0]["best_mean_iou"] == results[1]["best_mean_iou"]
    assert results[0]["best_mean_iou"] == pytest.approx(expected, abs=1e-6)
    assert results[0]["best_mean_iou"] == max(r[f"val_{training.MEAN_IOU}"] for r in history)


def _class_absent_from(examples) -> int:
    present = {c for e in examples for c in feature(e, features.CLASSES_PRESENT_KEY)}
    absent = sorted(set(range(1, features.NUM_CLASSES)) - present)
    assert absent, "the test needs a class that no eval image shows"
    return absent[0]


@pytest.mark.slow
def test_killed_training_resumes_from_its_backup(analyzed, tmp_path):
    examples_uri, _ = analyzed
    # 55 steps in epochs of 10 (the last one of 5), a backup every 5 steps. The first process
    # learns from the real masks and is killed at step 23: it has finished epochs 1 and 2 and
    # resumes from the backup of step 20. The restarted one learns from masks that paint every
    # pixel in a class no eval image shows, at a higher rate, so epochs 3-6 score clearly
    # worse: the best epoch is one from before the kill.
    config = dict(SMALL, steps_per_epoch=10, backup_every_steps=5)
    job = _job(analyzed, str(tmp_path), train_steps=55)
    first = {"config": config, "job": job, "result": str(tmp_path / "result.json"),
             "weights_dir": str(tmp_path / "epochs"), "kill_at_step": 23}  # fmt: skip
    backup = tmp_path / "run" / "backup"
    proc, log = _spawn(first, str(tmp_path / "first.json"))
    proc.wait(timeout=600)
    assert proc.returncode == -signal.SIGKILL, open(log).read()[-3000:]
    assert sorted(os.listdir(tmp_path / "epochs")) == ["epoch1.npz", "epoch2.npz"]
    assert (backup / "chief" / "checkpoint").exists() and not (tmp_path / "serving").exists()

    wrong = examples_lib.relabel(
        os.path.join(examples_uri, "Split-train", "*"), str(tmp_path / "wrong"),
        _class_absent_from(read_examples(examples_uri, features.EVAL_SPLIT)),
    )  # fmt: skip
    restart = {"config": dict(config, learning_rate=0.1), "job": dict(job, train_files=wrong),
               "result": str(tmp_path / "result.json")}  # fmt: skip
    log = _wait(_spawn(restart, str(tmp_path / "restart.json")))
    result = json.load(open(tmp_path / "result.json"))
    assert result["resumed_from_step"] == 20 and "resumed from the backup at step 20" in log
    assert result["steps"] == 55, "exactly the steps asked for"
    assert not (backup / "chief").exists(), "a finished training deletes its backup"

    history = json.load(open(tmp_path / "run" / training.HISTORY_FILE))["epochs"]
    assert [r["epoch"] for r in history] == [1, 2, 3, 4, 5, 6], "epochs from before the kill are kept"
    assert [r["step"] for r in history] == [10, 20, 30, 40, 50, 55]
    # The 55th and last step used the rate of a poly schedule 55 steps long (from the restart's base).
    schedule = optimization.WarmupPolyDecay(0.1, 55, SMALL["warmup_steps"])
    assert history[-1]["learning_rate"] == pytest.approx(float(schedule(54)))
    scores = [r[f"val_{training.MEAN_IOU}"] for r in history]
    best_epoch = 1 + int(np.argmax(scores[:2]))
    assert max(scores[2:]) < scores[best_epoch - 1], f"the restart should have done worse: {scores}"
    assert (result["best_epoch"], result["best_mean_iou"]) == (best_epoch, scores[best_epoch - 1])

    # The export and the best checkpoint both hold that epoch's weights, saved before the kill.
    with np.load(tmp_path / "epochs" / f"epoch{best_epoch}.npz") as saved:
        expected = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    exported = keras.models.load_model(str(tmp_path / "serving"), compile=False)
    _assert_same_weights(exported.get_weights(), expected)
    on_disk = tf.train.latest_checkpoint(str(tmp_path / "run" / training.BEST_CHECKPOINT_DIR))
    assert callbacks.read_best(on_disk) == (pytest.approx(scores[best_epoch - 1]), best_epoch)
    exported.load_weights(on_disk)
    _assert_same_weights(exported.get_weights(), expected)
    assert (tmp_path / "serving" / "saved_model.pb").exists()


@pytest.mark.slow
def test_learns_the_generated_dataset(learning_data, trained_model):
    """200 generated images at 128 px: the tiny config's MobileNetV2 model reaches mIoU >= 0.70."""
    examples_uri, _ = learning_data
    model_dir, result = trained_model
    assert result.best_mean_iou >= 0.70, result
    # Keras' metric is at the 128 px training resolution; the exported model must also reach it
    # at each image's original resolution, scored against the PNG masks by numpy.
    serve = tf.saved_model.load(model_dir).signatures[SERVING_DEFAULT]
    pairs = []
    for example in read_examples(examples_uri, features.EVAL_SPLIT):
        out = serve(images=tf.constant([feature(example, features.IMAGE_KEY)[0]]))
        truth = png_indices(feature(example, features.MASK_KEY)[0])
        h, w = truth.shape
        assert (int(out["height"][0]), int(out["width"][0])) == (h, w)
        pairs.append((truth, out["class_ids"].numpy()[0, :h, :w]))
    mean_iou = reference.scores(pairs)["mean_iou"]
    assert mean_iou >= 0.70, mean_iou
