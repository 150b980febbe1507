"""Warm start: a scheduled run begins from the weights of the newest model an earlier run blessed.

The pipeline's Resolver (``warm_start_model_resolver``: the newest blessed model trained on other
data than this run's, ``pipeline/resolvers.py``) gives that model to TFX's Trainer as
``base_model`` when ``trainer.warm_start`` is on, and ``run_fn`` hands its path here. Its weights
are taken when it predicts this run's classes (names, in order: its
``assets.extra/dataset_spec.json``), has this model's layers (backbone, input scaling) and every
weight has this model's shape (widths); the input size does not enter.
Otherwise training starts from scratch and says why, since a changed architecture or class
list is a normal reason to retrain, and so is a model this code can no longer rebuild (a layer's
config changed since). A base model that cannot be read (missing, no permission) fails the run:
it was asked for, and silently training from scratch would hide it.

Only the weights travel; the optimiser's state and step start afresh, and the learning-rate
schedule (warm-up, poly decay) runs whole over this run's ``train_steps``, from a peak of
``learning_rate * warm_start_learning_rate_factor`` (``fine_tuning``): a from-scratch peak
undoes what the weights learned (the tiny model went from 0.939 to 0.602 eval mean IoU in 50
steps at its full rate, and to 0.957 at a tenth of it).
"""

import dataclasses
import json
import logging
import os
import sys
from typing import Optional

import tensorflow as tf
import tf_keras as keras

from core import artifacts, dataset_spec, storage
from core.config import TrainerConfig
from core.dataset_spec import DatasetSpec

WARM_START_FILE = "warm_start.json"
_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class WarmStart:
    base_model: str  # the base model's SavedModel directory
    warm_started: bool  # False: its weights did not fit, and training started from scratch
    reason: str = ""  # why not, when not
    initial_mean_iou: Optional[float] = None  # eval mean IoU of the taken weights, before any step

    def write(self, directory: str) -> None:
        """``warm_start.json`` in ``directory`` (the ModelRun artifact), through ``storage``;
        written before training, when nothing else has made the directory yet."""
        tf.io.gfile.makedirs(directory)
        storage.write_file(
            os.path.join(directory, WARM_START_FILE), json.dumps(dataclasses.asdict(self), indent=1)
        )


def read(directory: str) -> Optional[WarmStart]:
    """The ``WarmStart`` a training wrote into ``directory``; None when it started from scratch
    with no base model."""
    path = os.path.join(directory, WARM_START_FILE)
    if not tf.io.gfile.exists(path):
        return None
    return WarmStart(**json.loads(storage.read_file(path, binary=False)))


def first_difference(ours: list, theirs: list) -> str:
    """Where two models' weights (in creation order) stop having the same shapes; "" when none."""
    for k, (a, b) in enumerate(zip(ours, theirs, strict=False)):
        if tuple(a.shape) != tuple(b.shape):
            return f"weight {k} ({a.name}) is {tuple(a.shape)} here and {tuple(b.shape)} in the base model"
    if len(ours) != len(theirs):
        return f"this model has {len(ours)} weights and the base model {len(theirs)}"
    return ""


def restore(net: keras.Model, base_model: str, dataset: DatasetSpec) -> WarmStart:
    """Sets ``net``'s weights to ``base_model``'s when that model predicts ``dataset``'s classes
    and has ``net``'s layers and weight shapes (see the module)."""
    if not tf.io.gfile.exists(os.path.join(base_model, artifacts.SAVED_MODEL_FILE)):
        raise RuntimeError(f"warm start: the base model {base_model} holds no {artifacts.SAVED_MODEL_FILE}")
    theirs = dataset_spec.of_model(base_model).class_names
    if theirs != dataset.class_names:
        return _scratch(
            base_model,
            f"it predicts classes {list(theirs)}, this run's dataset has {list(dataset.class_names)}",
        )
    try:
        base = keras.models.load_model(base_model, compile=False)
    except (tf.errors.NotFoundError, tf.errors.PermissionDeniedError, tf.errors.UnavailableError) as e:
        raise RuntimeError(f"warm start: cannot read the base model {base_model}: {e}") from e
    except (ValueError, TypeError, KeyError, AttributeError) as e:  # layer configs this code cannot read
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return _scratch(base_model, f"this code cannot rebuild it ({type(e).__name__}: {first})")
    # Layers first: scaling of the inputs (transform.normalize_image) is a layer without weights.
    ours, its = graph_layers(net), graph_layers(base)
    if ours != its:
        only_base, only_here = sorted(set(its) - set(ours)), sorted(set(ours) - set(its))
        return _scratch(
            base_model, f"layers only in the base model {only_base}, only in this one {only_here}"
        )
    difference = first_difference(net.weights, base.weights)
    if difference:
        return _scratch(base_model, difference)
    net.set_weights(base.get_weights())
    return WarmStart(base_model, True)


def graph_layers(model: keras.Model) -> list:
    """The names of the layers in a functional model's graph, sorted: not ``model.layers``,
    which also lists Keras objects set as attributes (an exported model carries its Transform
    layer so). Keras keeps the graph as nodes by depth; a revived model has no usable
    ``get_config`` to read it from."""
    return sorted({node.layer.name for nodes in model._nodes_by_depth.values() for node in nodes})


def _scratch(base_model: str, why: str) -> WarmStart:
    return WarmStart(base_model, False, f"{why}: training from scratch")


def fine_tuning(config: TrainerConfig) -> TrainerConfig:
    """The recipe of a warm-started run: ``config`` with its learning rates (peak and end)
    scaled by ``warm_start_learning_rate_factor``."""
    factor = config.warm_start_learning_rate_factor
    return dataclasses.replace(
        config,
        learning_rate=config.learning_rate * factor,
        end_learning_rate=config.end_learning_rate * factor,
    )


def announce(warm: WarmStart, stream=None) -> None:
    """One line for the terminal (stdout, as the Trainer's epoch lines) and the log."""
    if warm.warm_started:
        line = f"warm start from {warm.base_model}: eval mean IoU {warm.initial_mean_iou:.4f} before step 1"
    else:
        line = f"no warm start from {warm.base_model}: {warm.reason}"
    _log.info(line)
    print(f"           Trainer {line}", file=stream or sys.stdout, flush=True)
