"""The training recipe: schedule, weight decay, precision, strategies, fault tolerance, learning."""

import json
import os
import signal
import socket
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from core import artifacts, features, metrics, paths, storage
from core.config import TrainerConfig
from core.dataset_spec import VOC_SPEC
from tests import reference
from tests.conftest import feature, png_indices, read_examples, transform_dir
from tests.helpers import examples as examples_lib
from trainer import callbacks, distribute, optimization, training, warm_start
from trainer.export import SERVING_DEFAULT

ROOT = paths.PROJECT_ROOT
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


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_weight_decay_spares_batch_norm_and_biases(name):
    config = TrainerConfig(optimizer=name, learning_rate=0.5, momentum=0.0, weight_decay=0.1)
    optimizer = optimization.make_optimizer(config, total_steps=100)
    assert type(optimizer).__name__ == {"sgd": "SGD", "adamw": "AdamW"}[name]
    if name == "adamw":
        assert optimizer.beta_1 == config.momentum  # the config's momentum is Adam's beta 1
    kernel = tf.Variable(tf.ones((2, 2)), name="conv/kernel")
    gamma = tf.Variable(tf.ones(2), name="bn/gamma")
    bias = tf.Variable(tf.ones(2), name="conv/bias")
    variables = [kernel, gamma, bias]
    optimizer.apply_gradients([(tf.zeros_like(v), v) for v in variables])
    # Decoupled decay: w -= lr * wd * w for kernels only; zero gradients move nothing else (Adam's
    # step is m / (sqrt(v) + eps) = 0 / eps).
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
        net = training.build_model(
            TrainerConfig(**SMALL), 64, replicas=1, images_normalized=False, num_classes=VOC_SPEC.num_classes
        )
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


def _two_layers(seed=0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((3,))
    net = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.BatchNormalization()(inputs)))
    net.compile(keras.optimizers.SGD(0.1), "mse")
    return net


def _sixteen_examples() -> tuple:
    x, y = np.random.default_rng(0).normal(size=(2, 16, 3)).astype(np.float32)
    return x, y[:, :2]


def _tiny_fit(directory, scores, preempt_at=None, chief_best=None) -> tuple:
    """Fits a two-layer model for ``len(scores)`` epochs of 4 steps, backing up every 2 steps.

    ``chief_best``: the chief's best-checkpoint directory, for a non-chief worker's callback.
    """
    net = _two_layers(seed=len(scores))
    best = callbacks.BestCheckpoint(str(directory / "best"), "val_score", chief_directory=chief_best)
    history = callbacks.HistoryWriter(str(directory / "history.json"))
    snapshots = _Snapshots()
    cbs = [keras.callbacks.BackupAndRestore(str(directory / "backup"), save_freq=2), _Scores(scores), best,
           history, snapshots]  # fmt: skip
    if preempt_at:
        cbs.append(_PreemptAtStep(preempt_at))
    try:
        net.fit(*_sixteen_examples(), batch_size=4, epochs=len(scores), callbacks=cbs, verbose=0)
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


def test_workers_take_the_best_value_from_the_chief_and_save_their_own_copy(tmp_path):
    # A pre-emption cut the chief's save of epoch 3 (score 0.9) short, not the other worker's:
    # the chief's checkpoint says 0.8 (epoch 2), the worker's own 0.9 (epoch 3). Both resume
    # from the chief's backup of step 10, in epoch 3, which now scores 0.85. The worker must
    # agree with the chief that 0.85 is better and join the (collective) save; judging by its
    # own 0.9 it left the chief waiting in the save forever.
    chief, worker = tmp_path / "chief", tmp_path / "worker"
    _tiny_fit(chief, [0.5, 0.8, 0.1, 0.2, 0.3], preempt_at=11)
    _tiny_fit(worker, [0.5, 0.8, 0.9])
    chief_best = str(chief / "best")
    assert callbacks.read_best(tf.train.latest_checkpoint(chief_best)) == (0.8, 2)
    assert callbacks.read_best(tf.train.latest_checkpoint(str(worker / "best"))) == (0.9, 3)
    storage.remove_tree(str(worker / "backup"))  # every worker restores the chief's backup
    storage.copy_tree(str(chief / "backup"), str(worker / "backup"))

    net, best, _, _ = _tiny_fit(worker, [0.5, 0.8, 0.85, 0.2, 0.3], chief_best=chief_best)
    assert (best.best, best.best_epoch) == (0.85, 3)
    assert callbacks.read_best(tf.train.latest_checkpoint(str(worker / "best"))) == (0.85, 3)
    # At the end every worker holds the chief's best weights (here the chief has not saved
    # epoch 3, as it would have with the worker): the export averages sync-on-read statistics
    # over the workers, so they must all hold the same ones.
    expected = keras.models.clone_model(net)
    expected.load_weights(tf.train.latest_checkpoint(chief_best))
    _assert_same_weights(net.get_weights(), expected.get_weights())


def test_history_cut_short_mid_write_keeps_the_previous_file(tmp_path, monkeypatch):
    # A kill while history.json is rewritten: what reaches the disk is a part of the new text.
    path = tmp_path / "history.json"
    _tiny_fit(tmp_path, [0.5, 0.8])
    real_write = tf.io.gfile.GFile.write

    def write_half_then_die(f, data):
        real_write(f, data[: len(data) // 2])
        raise _PreemptedError()

    monkeypatch.setattr(tf.io.gfile.GFile, "write", write_half_then_die)
    writer = callbacks.HistoryWriter(str(path))
    writer.set_model(keras.Sequential([keras.layers.Dense(1, input_shape=(1,))]))
    writer.model.compile(keras.optimizers.SGD(0.1), "mse")
    writer.epochs = json.loads(path.read_text())["epochs"]
    with pytest.raises(_PreemptedError):
        writer.on_epoch_end(2, {"val_score": 0.3})
    monkeypatch.undo()
    assert [r["val_score"] for r in json.loads(path.read_text())["epochs"]] == [0.5, 0.8]


def test_a_restart_from_the_backup_of_the_last_step_takes_no_step(tmp_path):
    # 6 steps in epochs of 4 (16 examples, batches of 4): the last epoch is cut short after 2,
    # and a backup every 2 steps takes one at step 6, mid-epoch by Keras' count. The training
    # keeps it (as the trainer does until its export is complete); a kill then, and the restart
    # resumes from it. Keras' own callback resumed at the epoch's next batch: step 7.
    backup = str(tmp_path / "backup")
    assert callbacks.steps_backed_up(backup) == 0

    def fit():
        net, snapshots = _two_layers(), _Snapshots()
        cbs = [callbacks.BackupAndRestore(backup, 6, save_freq=2), callbacks.StopAtStep(6), snapshots]
        net.fit(*_sixteen_examples(), batch_size=4, epochs=2, callbacks=cbs, verbose=0)
        return net, snapshots

    first, snapshots = fit()
    assert int(first.optimizer.iterations.numpy()) == 6 and sorted(snapshots.weights) == [1, 2]
    assert callbacks.steps_backed_up(backup) == 6
    again, snapshots = fit()
    assert int(again.optimizer.iterations.numpy()) == 6, "exactly the steps asked for"
    assert snapshots.weights == {}, "nothing left to train or evaluate"
    _assert_same_weights(again.get_weights(), first.get_weights())


def test_a_warm_start_that_every_epoch_scores_below_exports_its_own_weights(tmp_path):
    # The tracker starts from the warm start's score, 0.9: epochs of 0.5 and 0.8 do not beat it,
    # so the weights training started from are the best, on disk (epoch 0) and at the end.
    best_dir = str(tmp_path / "best")
    net, snapshots = _two_layers(), _Snapshots()
    start = net.get_weights()
    best = callbacks.BestCheckpoint(best_dir, "val_score", initial=0.9)
    net.fit(
        *_sixteen_examples(),
        batch_size=4,
        epochs=2,
        callbacks=[_Scores([0.5, 0.8]), best, snapshots],
        verbose=0,
    )
    assert not np.array_equal(snapshots.weights[2][-1], start[-1]), "the epochs moved the weights"
    assert (best.best, best.best_epoch) == (0.9, 0)
    _assert_same_weights(net.get_weights(), start)
    on_disk = tf.train.latest_checkpoint(best_dir)
    assert callbacks.read_best(on_disk) == (0.9, 0)
    reloaded = keras.models.clone_model(net)
    reloaded.load_weights(on_disk)
    _assert_same_weights(reloaded.get_weights(), start)

    # An epoch that beats the start replaces it.
    net, snapshots = _two_layers(), _Snapshots()
    best = callbacks.BestCheckpoint(best_dir, "val_score", initial=0.9)
    net.fit(
        *_sixteen_examples(),
        batch_size=4,
        epochs=2,
        callbacks=[_Scores([0.5, 0.95]), best, snapshots],
        verbose=0,
    )
    assert (best.best, best.best_epoch) == (0.95, 2)
    assert callbacks.read_best(tf.train.latest_checkpoint(best_dir)) == (0.95, 2)
    _assert_same_weights(net.get_weights(), snapshots.weights[2])


def test_a_restarted_worker_takes_the_warm_start_the_chief_recorded(tmp_path):
    # Only the chief writes warm_start.json, into the model run directory; a worker's own run
    # directory is a scratch one. Restarted (a backup is there), a worker that read its scratch
    # found nothing and evaluated the start again, a collective the chief never joined.
    job = training.TrainingJob(
        train_files=[], eval_files=[], transform_output="", serving_model_dir=str(tmp_path / "serving"),
        model_run_dir=str(tmp_path / "run"), train_steps=6, dataset=VOC_SPEC,
        base_model=str(tmp_path / "absent"),
    )  # fmt: skip
    recorded = warm_start.WarmStart(job.base_model, True, initial_mean_iou=0.75)
    recorded.write(job.model_run_dir)
    backup = tmp_path / "backup"
    backup.mkdir()
    # The base model is absent: a worker that tried to take it again would fail here.
    assert training._warm_start(None, job, str(backup)) == recorded


TWO_MACHINES = {"cluster": {"chief": ["10.0.0.2:2222"], "worker": ["10.0.0.3:2222", "10.0.0.4:2222"]}}


def test_multi_worker_training_on_several_machines_needs_shared_storage():
    run = {"the model run directory": "/tmp/job/run"}
    with pytest.raises(ValueError) as e:
        distribute.require_shared_storage(run, TWO_MACHINES)
    assert str(e.value) == (
        "multi-worker training on 3 machines (10.0.0.2, 10.0.0.3, 10.0.0.4) needs the model run directory "
        "on storage every worker reads (gs://, or Cloud Storage mounted at /gcs/): /tmp/job/run is a path "
        "on this machine's disk, and every worker reads the backup and the best checkpoint the chief writes "
        "there"
    )
    with pytest.raises(ValueError, match="needs trainer.backup_dir on .*: /backups is a path"):
        distribute.require_shared_storage(
            {"the model run directory": "gs://bucket/run", "trainer.backup_dir": "/backups"},
            {"cluster": {"worker": ["a:1", "b:1"]}},
        )
    for shared in ("gs://bucket/run", "/gcs/bucket/run"):
        distribute.require_shared_storage({"the model run directory": shared}, TWO_MACHINES)
    # One machine: two workers on loopback addresses, or on one host, share its disk.
    for cluster in ({"worker": ["127.0.0.1:1", "localhost:2", "[::1]:3"]}, {"worker": ["a:1", "a:2"]}, {}):
        distribute.require_shared_storage(run, {"cluster": cluster})
    assert distribute.cluster_hosts({"cluster": {"worker": ["127.0.0.1:1", "[::1]:3", "b:2"]}}) == [
        "b",
        "localhost",
    ]


def test_multi_worker_training_fails_at_start_naming_the_path(monkeypatch, tmp_path):
    # Before anything is read or built (the Transform output and the files do not exist), and
    # before the strategy, which waits for every worker: without the check this test's chief
    # waited there for machines that do not exist (over 12 minutes, until killed).
    monkeypatch.setenv("TF_CONFIG", json.dumps({**TWO_MACHINES, "task": {"type": "chief", "index": 0}}))

    def wait_for_the_workers(*args):
        raise AssertionError("the strategy was made before the check")

    monkeypatch.setattr(distribute, "make_strategy", wait_for_the_workers)
    job = training.TrainingJob(
        train_files=[], eval_files=[], transform_output=str(tmp_path / "absent"),
        serving_model_dir=str(tmp_path / "serving"), model_run_dir=str(tmp_path / "run"), train_steps=6,
        dataset=VOC_SPEC,
    )  # fmt: skip
    with pytest.raises(ValueError, match=f"{tmp_path / 'run'} is a path on this machine's disk"):
        training.train(TrainerConfig(strategy="multi_worker_mirrored"), job)


def test_backup_is_keyed_by_the_execution():
    run = "gs://bucket/root/Trainer/model_run/7"
    assert training.backup_dir(TrainerConfig(), run) == f"{run}/backup"
    config = TrainerConfig(backup_dir="gs://bucket/backup")
    mine = training.backup_dir(config, run)
    assert mine.startswith("gs://bucket/backup/") and mine != "gs://bucket/backup"
    assert training.backup_dir(config, run + "/") == mine, "a restart of the same execution resumes"
    assert training.backup_dir(config, "gs://bucket/root/Trainer/model_run/8") != mine, "a new run does not"


def test_non_chief_scratch_belongs_to_the_execution_and_the_output(monkeypatch):
    cluster = {"worker": ["a:1", "b:1"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}}))
    worker = types.SimpleNamespace(cluster_resolver=types.SimpleNamespace(task_type="worker", task_id=1))
    root = "gs://bucket/root/Trainer"
    # Two executions' ModelRun directories; two outputs under one parent (as the tests lay out).
    paths = (f"{root}/model_run/7", f"{root}/model_run/8", "/tmp/job/serving", "/tmp/job/run")
    scratch = {path: distribute.output_dir(path, worker) for path in paths}
    assert len(set(scratch.values())) == len(paths), scratch
    for path, scratch_dir in scratch.items():
        assert scratch_dir.startswith(path) and scratch_dir != path
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}}))
    chief = types.SimpleNamespace(cluster_resolver=types.SimpleNamespace(task_type="worker", task_id=0))
    assert distribute.output_dir(f"{root}/model_run/7", chief) == f"{root}/model_run/7"


# First of the slow tests here: it builds the session's trained model (tests/conftest.py), which
# the Evaluator and warm-start tests wait for when pytest-xdist runs them on the other worker.
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


def _transformed(tft_output, files) -> dict:
    """The Transform outputs of every record of ``files``, in this one process."""
    records = [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]
    return tft_output.transform_features_layer()(tf.io.parse_example(records, tft_output.raw_feature_spec()))


def _eval_labels(tft_output, files) -> np.ndarray:
    """The labels of ``files`` at the model's resolution, ``[N, S, S]`` int64."""
    return _transformed(tft_output, files)[features.LABEL].numpy().astype(np.int64)


def _keras_mean_iou(model_dir, tft_output, eval_files, batch_size) -> float:
    """Mean IoU of an exported model over ``eval_files`` in this one process: the Keras model
    reloaded from the SavedModel, Transform outputs, argmax, scored by numpy (tests/reference)."""
    net = keras.models.load_model(model_dir, compile=False)
    out = _transformed(tft_output, eval_files)
    predictions = np.argmax(net.predict(out[features.IMAGE], batch_size=batch_size, verbose=0), axis=-1)
    return reference.scores(list(zip(out[features.LABEL].numpy(), predictions, strict=True)))["mean_iou"]


@pytest.mark.slow
def test_eval_dataset_of_a_worker_with_two_replicas_counts_every_image_once(
    analyzed, eval_in_four_files, tmp_path
):
    # One worker, two replicas: the worker's one input pipeline feeds both, one batch each per
    # step, so it must give eval steps x 2 batches (the multi-worker test has one replica per
    # worker and never takes this path).
    spec = {"job": _job(analyzed, str(tmp_path), eval_files=eval_in_four_files), "batch_size_per_replica": 2}
    with open(tmp_path / "spec.json", "w") as f:
        json.dump(spec, f)
    out = subprocess.run(
        [sys.executable, "-m", "tests.helpers.mirrored_step", "eval", str(tmp_path / "spec.json")],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    _, tft_output = analyzed
    labels = _eval_labels(tft_output, eval_in_four_files)
    n = len(labels)
    assert result["replicas"] == 2 and result["eval_steps"] == -(-n // 4) >= 2
    # Both replicas get a whole batch at every one of those steps (as the all-reduce needs) ...
    assert [[len(b) for b in batches] for batches in result["batches"]] == [[2] * result["eval_steps"]] * 2
    # ... and between them every eval image once; the rest are all-void fillers.
    seen = [d for batches in result["batches"] for batch in batches for d in batch]
    filler = examples_lib.label_digest(np.full(labels.shape[1:], features.IGNORE_LABEL))
    expected = sorted(examples_lib.label_digest(label) for label in labels)
    assert sorted(d for d in seen if d != filler) == expected


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
    # Both took part in the (collective) export; only the chief's copy stays, and no scratch
    # directory (<path>.scratch_worker_1) or backup is left.
    loaded = tf.saved_model.load(str(tmp_path / "serving"))
    assert SERVING_DEFAULT in loaded.signatures
    assert not [d for d in os.listdir(tmp_path) if "scratch" in d], os.listdir(tmp_path)
    assert not (tmp_path / "run" / "backup").exists()
    history = json.load(open(tmp_path / "run" / artifacts.HISTORY_FILE))["epochs"]
    assert [r["step"] for r in history] == [4, 6]
    # The 6th and last step used the rate of a poly schedule 6 steps long, not 8.
    schedule = optimization.WarmupPolyDecay(SMALL["learning_rate"], 6, SMALL["warmup_steps"])
    assert history[-1]["learning_rate"] == pytest.approx(float(schedule(5)))
    # Each worker evaluated its half of the images; the mIoU they agree on is the exported
    # (best) weights' over all of them, counted once, as one process computes it.
    _, tft_output = analyzed
    expected = _keras_mean_iou(str(tmp_path / "serving"), tft_output, eval_in_four_files, batch_size=4)
    assert results[0]["best_mean_iou"] == results[1]["best_mean_iou"]
    # mIoU would not change if every image were counted twice: the pixels must be those of
    # the eval split, each once (fillers are void and count for nothing).
    pixels = int((_eval_labels(tft_output, eval_in_four_files) != features.IGNORE_LABEL).sum())
    assert [r["eval_pixels"] for r in results] == [pixels, pixels]
    assert results[0]["best_mean_iou"] == pytest.approx(expected, abs=1e-6)
    assert results[0]["best_mean_iou"] == max(r[f"val_{metrics.MEAN_IOU}"] for r in history)


def _class_absent_from(examples) -> int:
    present = {c for e in examples for c in feature(e, features.CLASSES_PRESENT_KEY)}
    absent = sorted(set(range(1, VOC_SPEC.num_classes)) - present)
    assert absent, "the test needs a class that no eval image shows"
    return absent[0]


@pytest.mark.slow
def test_killed_training_resumes_from_its_backup(analyzed, tmp_path):
    examples_uri, _ = analyzed
    # 55 steps in epochs of 10 (the last one of 5), a backup every 10 steps, in a backup_dir
    # that every run's config names. The first process learns from the real masks and is
    # killed at step 23: it has finished epochs 1 and 2 and resumes from the backup of step 20.
    # The restarted one learns from masks that paint every pixel in a class no eval image
    # shows, at a higher rate, so epochs 3-6 score clearly worse: the best epoch is one from
    # before the kill. It is killed again as the export starts, after fit; the third process
    # resumes from the last backup, of step 50, and finishes.
    config = dict(SMALL, steps_per_epoch=10, backup_every_steps=10, backup_dir=str(tmp_path / "backups"))
    job = _job(analyzed, str(tmp_path), train_steps=55)
    first = {"config": config, "job": job, "result": str(tmp_path / "result.json"),
             "weights_dir": str(tmp_path / "epochs"), "kill_at_step": 23}  # fmt: skip
    backup = Path(training.backup_dir(TrainerConfig(**config), job["model_run_dir"]))
    proc, log = _spawn(first, str(tmp_path / "first.json"))
    proc.wait(timeout=600)
    assert proc.returncode == -signal.SIGKILL, open(log).read()[-3000:]
    assert sorted(os.listdir(tmp_path / "epochs")) == ["epoch1.npz", "epoch2.npz"]
    # The backup is where training.backup_dir puts this execution's: another execution, of the
    # same config, gets another directory (test_backup_is_keyed_by_the_execution).
    assert (backup / "chief" / "checkpoint").exists() and not (tmp_path / "serving").exists()

    wrong = examples_lib.relabel(
        os.path.join(examples_uri, "Split-train", "*"), str(tmp_path / "wrong"),
        _class_absent_from(read_examples(examples_uri, features.EVAL_SPLIT)),
    )  # fmt: skip
    restart = {"config": dict(config, learning_rate=0.1), "job": dict(job, train_files=wrong),
               "result": str(tmp_path / "result.json"), "kill_in_export": True}  # fmt: skip
    proc, log = _spawn(restart, str(tmp_path / "restart.json"))
    proc.wait(timeout=600)
    text = open(log).read()
    assert proc.returncode == -signal.SIGKILL, text[-3000:]
    assert "resumed from the backup at step 20" in text and "killing this process in the export" in text
    assert (backup / "chief" / "checkpoint").exists(), "the backup outlives fit until the export is done"

    log = _wait(_spawn(dict(restart, kill_in_export=False), str(tmp_path / "again.json")))
    result = json.load(open(tmp_path / "result.json"))
    assert result["resumed_from_step"] == 50 and "resumed from the backup at step 50" in log
    assert result["autograph_skips_keras"] == [
        False,
        True,
    ], "importing the trainer changes nothing; train does"
    assert result["steps"] == 55, "exactly the steps asked for"
    assert not backup.exists(), "a finished training deletes its backup"

    history = json.load(open(tmp_path / "run" / artifacts.HISTORY_FILE))["epochs"]
    assert [r["epoch"] for r in history] == [1, 2, 3, 4, 5, 6], "epochs from before the kill are kept"
    assert [r["step"] for r in history] == [10, 20, 30, 40, 50, 55]
    # The 55th and last step used the rate of a poly schedule 55 steps long (from the restart's base).
    schedule = optimization.WarmupPolyDecay(0.1, 55, SMALL["warmup_steps"])
    assert history[-1]["learning_rate"] == pytest.approx(float(schedule(54)))
    scores = [r[metrics.VAL_MEAN_IOU] for r in history]
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
