"""Warm start: training from the weights of an earlier (blessed) model, or from scratch saying why.

The pipeline's wiring (the Resolver's latest blessed model as the Trainer's base_model, on
LocalDagRunner) is tested in test_pipeline_local.py; here, what the Trainer does with it.
"""

import dataclasses
import json
import os
import re
import shutil

import pytest
import tf_keras as keras

from core import artifacts, dataset_spec
from core import config as config_lib
from core.metrics import VAL_MEAN_IOU
from tests.conftest import train_tiny
from trainer import training, warm_start

pytestmark = pytest.mark.slow
# The fraction of the first training's steps the warm-started one takes.
FRACTION = 10


def test_a_warm_started_run_starts_where_the_base_model_ended(learning_data, trained_model, tmp_path, capsys):
    examples_uri, _ = learning_data
    base_dir, base = trained_model
    steps = base.steps // FRACTION
    # The same train_steps as the base model's; warm-started, it takes warm_start_train_steps.
    serving_dir, result = train_tiny(
        examples_uri, tmp_path, base_model=base_dir, warm_start_train_steps=steps, steps_per_epoch=steps
    )
    warm = result.warm
    assert warm.warm_started and warm.base_model == base_dir and warm.reason == ""
    # Its first evaluation, before any step, is the base model's own best evaluation (the
    # exported weights are the best epoch's): the same weights on the same eval split.
    assert warm.initial_mean_iou == pytest.approx(base.best_mean_iou, abs=1e-4)
    # ... and a tenth of the steps keep it there: from scratch, 50 steps reach about 0.1, and at
    # the full learning rate the base model fell to 0.60 (trainer/warm_start.py). The margin
    # tells those apart and leaves room for another CPU's kernels (measured: 0.957 from 0.939).
    assert result.steps == steps
    assert result.best_mean_iou >= base.best_mean_iou - 0.1, (result, base)
    # The start is the first best (epoch 0): the model exported is never worse than the one given.
    with open(tmp_path / "run" / artifacts.HISTORY_FILE) as f:
        epochs = json.load(f)[artifacts.HISTORY_EPOCHS]
    scores = [warm.initial_mean_iou] + [row[VAL_MEAN_IOU] for row in epochs]
    best_epoch = max(range(len(scores)), key=lambda epoch: (scores[epoch], -epoch))
    assert (result.best_epoch, result.best_mean_iou) == (best_epoch, scores[best_epoch])
    # Written for the run (the ModelRun artifact) and said on the terminal.
    assert warm_start.read(str(tmp_path / "run")) == warm
    with open(tmp_path / "run" / warm_start.WARM_START_FILE) as f:
        assert json.load(f)["initial_mean_iou"] == warm.initial_mean_iou
    out = capsys.readouterr().out
    said = f"Trainer warm start from {base_dir}: eval mean IoU {warm.initial_mean_iou:.4f} before step 1"
    assert said in out


def test_a_base_model_of_another_shape_is_not_taken_and_the_run_says_why(
    learning_data, trained_model, tmp_path, capsys
):
    examples_uri, _ = learning_data
    base_dir, _ = trained_model
    _, result = train_tiny(examples_uri, tmp_path, base_model=base_dir, train_steps=2, aspp_filters=32)
    warm = result.warm
    assert not warm.warm_started and warm.initial_mean_iou is None
    # The first weight of another shape: the ASPP's pooled branch's convolution, 64 filters there,
    # 32 here.
    assert re.fullmatch(
        r"weight \d+ \(aspp_pool_conv/kernel:0\) is \(1, 1, \d+, 32\) here and \(1, 1, \d+, 64\) "
        r"in the base model: training from scratch",
        warm.reason,
    ), warm.reason
    assert warm_start.read(str(tmp_path / "run")) == warm
    assert f"Trainer no warm start from {base_dir}: {warm.reason}" in capsys.readouterr().out


def test_first_difference_names_the_weight_or_the_count():
    def dense(units):
        net = keras.Sequential([keras.layers.Dense(units, name="head")])
        net.build((None, 3))
        return net.weights

    assert warm_start.first_difference(dense(4), dense(4)) == ""
    assert warm_start.first_difference(dense(4), dense(5)) == (
        "weight 0 (head/kernel:0) is (3, 4) here and (3, 5) in the base model"
    )
    fewer = warm_start.first_difference(dense(4), dense(4)[:1])
    assert fewer == "this model has 2 weights and the base model 1"


def test_a_base_model_that_cannot_be_read_fails_the_run(learning_data, tmp_path):
    missing = str(tmp_path / "no_model")
    os.makedirs(missing)
    with pytest.raises(RuntimeError, match=f"warm start: the base model {missing} holds no saved_model.pb"):
        train_tiny(learning_data[0], tmp_path / "out", base_model=missing, train_steps=2)
    assert not os.path.exists(tmp_path / "out" / "serving"), "nothing exported"


def test_a_base_model_of_other_classes_is_not_taken(trained_model, tmp_path):
    """Same count and shapes, other names: the head would map onto the wrong classes. Decided
    before the base model's weights are read, so the decision alone is called here; what a run
    does with a refusal (trains from scratch, records and says why) is
    test_a_base_model_of_another_shape_is_not_taken_and_the_run_says_why's."""
    base_dir, _ = trained_model
    other = tmp_path / "other_classes"
    shutil.copytree(base_dir, other)
    spec = dataset_spec.of_model(base_dir)
    # A dataset of the folders layout whose 21 classes are VOC's but the last.
    folders = config_lib.load_config("tiny", ["dataset=cihp"]).dataset
    renamed = dataclasses.replace(
        folders, name="renamed", class_names=(*spec.class_names[:-1], "sofa_bed"), colours=()
    )
    dataset_spec.write(renamed, str(other / artifacts.ASSETS_EXTRA))
    config = config_lib.load_config("tiny").trainer
    net = training.build_model(config, 128, replicas=1, images_normalized=False, num_classes=spec.num_classes)
    before = net.get_weights()
    warm = warm_start.restore(net, str(other), spec)
    assert not warm.warm_started
    assert warm.reason == (
        f"it predicts classes {list(renamed.class_names)}, this run's dataset has {list(spec.class_names)}: "
        "training from scratch"
    )
    assert all((a == b).all() for a, b in zip(net.get_weights(), before, strict=True)), "weights untouched"
