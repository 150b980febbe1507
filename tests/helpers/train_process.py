"""Runs ``trainer.training.train`` in its own process, as a TFX Trainer worker would.

Used by the tests that need what one pytest process cannot give: several workers of one
MultiWorkerMirroredStrategy cluster, a training that is killed and started again, a TF
runtime with two logical CPU devices. Arguments come as one JSON file:
``{"config": {TrainerConfig fields}, "job": {TrainingJob fields}, "result": path}``; the
TrainingResult is written to ``result`` as JSON. Optional keys, for the restart test:

* ``"weights_dir"``: after every epoch, the model's weights go to ``<dir>/epoch<N>.npz``
  (``get_weights`` order), so a test can tell which epoch's weights were exported.
* ``"kill_at_step"``: the process SIGKILLs itself once the optimizer has taken this many
  steps. A kill at a chosen step, not after a sleep, keeps the test independent of the
  machine's load; SIGKILL, so nothing of the trainer's gets to clean up.
* ``"kill_in_export"``: the process SIGKILLs itself when the export starts, after ``fit``
  has returned (every callback's ``on_train_end`` has run).

The result also has ``eval_pixels``: the pixels the Keras ``MeanIoU`` metric counted in the
last evaluation (the sum of its confusion matrix; reading it sums over every worker), so a test
can tell an evaluation that counts every image once from one that counts some twice; and
``autograph_skips_keras``: whether autograph left tf_keras alone once the trainer was imported,
and once it had trained (``trainer/autograph.py``).
"""

import dataclasses
import json
import logging
import os
import signal
import sys

import numpy as np
import tf_keras as keras

from core import config as config_lib
from trainer import autograph, training


class SaveWeightsEachEpoch(keras.callbacks.Callback):
    def __init__(self, directory: str):
        super().__init__()
        self.directory = directory

    def on_epoch_end(self, epoch, logs=None):
        os.makedirs(self.directory, exist_ok=True)
        np.savez(os.path.join(self.directory, f"epoch{epoch + 1}.npz"), *self.model.get_weights())


def _kill(why: str) -> None:
    logging.info("killing this process %s", why)
    for handler in logging.getLogger().handlers:
        handler.flush()
    os.kill(os.getpid(), signal.SIGKILL)


class KillAtStep(keras.callbacks.Callback):
    def __init__(self, step: int):
        super().__init__()
        self.step = step

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        if step >= self.step:
            _kill(f"at step {step}")


class EvalPixels(keras.callbacks.Callback):
    """Records the pixels the last evaluation's ``MeanIoU`` counted, when training ends (fit
    resets metrics at the start of an epoch and of an evaluation, not after the last one)."""

    def __init__(self):
        super().__init__()
        self.pixels = None

    def on_train_end(self, logs=None):
        (metric,) = [m for m in self.model.metrics if isinstance(m, keras.metrics.MeanIoU)]
        self.pixels = int(metric.total_cm.numpy().sum())  # sync-on-read: summed over workers


def main(path: str) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s:%(name)s:%(message)s")
    logging.info("process started")
    with open(path) as f:
        spec = json.load(f)
    config = config_lib.from_dict(config_lib.TrainerConfig, spec["config"])
    extra = []
    if spec.get("weights_dir"):
        extra.append(SaveWeightsEachEpoch(spec["weights_dir"]))
    if spec.get("kill_at_step"):
        extra.append(KillAtStep(spec["kill_at_step"]))
    if spec.get("kill_in_export"):
        training.export.export = lambda *args, **kwargs: _kill("in the export")
    pixels = EvalPixels()
    imported = autograph.keras_conversion_skipped()  # the trainer is imported, not yet started
    result = training.train(
        config, training.TrainingJob.of_files(**spec["job"]), extra_callbacks=[*extra, pixels]
    )
    with open(spec["result"], "w") as f:
        json.dump(
            {
                **dataclasses.asdict(result),
                "eval_pixels": pixels.pixels,
                "autograph_skips_keras": [imported, autograph.keras_conversion_skipped()],
            },
            f,
        )


if __name__ == "__main__":
    main(sys.argv[1])
