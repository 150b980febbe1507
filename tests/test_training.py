"""The training recipe: schedule, weight decay, precision, strategies, fault tolerance, learning."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from pipeline import config as config_lib
from pipeline import features
from pipeline.config import TrainerConfig
from tests import reference
from tests.conftest import feature, png_indices, read_examples, transform_dir
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
            cwd=ROOT, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT,
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


@pytest.mark.slow
def test_multi_worker_mirrored_with_two_local_workers(analyzed, tmp_path):
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
            "config": config,
            "job": _job(analyzed, str(tmp_path), train_steps=4),
            "result": str(tmp_path / f"result{index}.json"),
        }
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        procs.append(_spawn(spec, str(tmp_path / f"spec{index}.json"), {"TF_CONFIG": tf_config}))
    for proc in procs:
        _wait(proc)
    results = [json.load(open(tmp_path / f"result{i}.json")) for i in range(2)]
    assert [r["replicas"] for r in results] == [2, 2]
    assert [r["global_batch_size"] for r in results] == [8, 8]
    assert [r["steps"] for r in results] == [4, 4]
    # Both took part in the (collective) export; only the chief's copy stays.
    loaded = tf.saved_model.load(str(tmp_path / "serving"))
    assert SERVING_DEFAULT in loaded.signatures
    assert not [d for d in os.listdir(tmp_path) if d.startswith(".scratch")]
    assert json.load(open(tmp_path / "run" / training.HISTORY_FILE))["epochs"][-1]["step"] == 4


@pytest.mark.slow
def test_killed_training_resumes_from_its_backup(analyzed, tmp_path):
    # About 0.1 s a step: the first run is killed seconds into its 300 steps.
    config = dict(SMALL, steps_per_epoch=150, backup_every_steps=10)
    spec = {
        "config": config,
        "job": _job(analyzed, str(tmp_path), train_steps=300),
        "result": str(tmp_path / "result.json"),
    }
    backup = tmp_path / "run" / "backup"
    first, first_log = _spawn(spec, str(tmp_path / "spec.json"))
    deadline = time.time() + 300
    while not (backup / "chief" / "checkpoint").exists():  # Keras writes the chief's state there
        assert first.poll() is None, open(first_log).read()[-3000:]
        assert time.time() < deadline, "no backup written"
        time.sleep(0.2)
    time.sleep(0.5)  # let it get a few steps past the backup
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert not (tmp_path / "result.json").exists() and not (tmp_path / "serving").exists()

    log = _wait(_spawn(spec, str(tmp_path / "spec.json")))
    result = json.load(open(tmp_path / "result.json"))
    assert 0 < result["resumed_from_step"] < 300 and result["resumed_from_step"] % 10 == 0
    assert result["steps"] == 300
    assert "resumed from the backup at step" in log
    assert not (backup / "chief").exists(), "a finished training deletes its backup"
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
