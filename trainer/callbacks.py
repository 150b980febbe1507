"""Training callbacks that Keras does not ship in the form a pipeline needs."""

import json
import logging
import math

import tensorflow as tf
import tf_keras as keras


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; exporting the model would push garbage."""


class RaiseOnNaN(keras.callbacks.Callback):
    """Like ``TerminateOnNaN``, but fails the run: Keras' version stops quietly and the
    pipeline would go on to export and evaluate a NaN model."""

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            step = int(self.model.optimizer.iterations.numpy())
            raise TrainingDivergedError(
                f"training loss became {loss} at step {step}; lower trainer.learning_rate, add "
                "trainer.warmup_steps, or check the input data"
            )


class StartStep(keras.callbacks.Callback):
    """Records the step training starts from: 0, or where BackupAndRestore resumed it.

    Must come after ``BackupAndRestore`` in the callback list (it restores in its own
    ``on_train_begin``).
    """

    def __init__(self):
        super().__init__()
        self.step = 0

    def on_train_begin(self, logs=None):
        self.step = int(self.model.optimizer.iterations.numpy())
        if self.step:
            logging.getLogger(__name__).info("resumed from the backup at step %d", self.step)


class KeepBestWeights(keras.callbacks.Callback):
    """Keeps the weights of the best ``monitor`` value in memory and restores them at the end.

    In memory rather than re-read from the checkpoint: every worker of a multi-worker job sees
    the same all-reduced metric, so all restore the same weights without waiting on the chief's
    file write.
    """

    def __init__(self, monitor: str, enabled: bool = True):
        super().__init__()
        self.monitor, self.enabled = monitor, enabled
        self.best, self.best_epoch, self._weights = -math.inf, None, None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is not None and value > self.best:
            self.best, self.best_epoch = float(value), epoch + 1
            if self.enabled:
                self._weights = self.model.get_weights()

    def on_train_end(self, logs=None):
        if self.enabled and self._weights is not None:
            self.model.set_weights(self._weights)


class HistoryWriter(keras.callbacks.Callback):
    """Writes per-epoch metrics and the learning rate to a JSON file after every epoch.

    The run report draws the training curves from it; rewriting it each epoch means a killed
    run still leaves the curves so far.
    """

    def __init__(self, path: str, enabled: bool = True):
        super().__init__()
        self.path, self.enabled = path, enabled
        self.epochs = []

    def on_train_begin(self, logs=None):
        # A resumed run keeps the epochs its killed predecessor finished.
        if tf.io.gfile.exists(self.path):
            with tf.io.gfile.GFile(self.path) as f:
                self.epochs = json.load(f)["epochs"]

    def on_epoch_end(self, epoch, logs=None):
        step = self.model.optimizer.iterations
        lr = self.model.optimizer.learning_rate
        if isinstance(lr, keras.optimizers.schedules.LearningRateSchedule):
            lr = lr(step)
        row = {
            "epoch": epoch + 1,
            "step": int(step.numpy()),
            "learning_rate": float(tf.convert_to_tensor(lr)),
        }
        row.update({k: float(v) for k, v in (logs or {}).items()})
        self.epochs = [r for r in self.epochs if r["epoch"] < epoch + 1] + [row]
        if self.enabled:
            with tf.io.gfile.GFile(self.path, "w") as f:
                json.dump({"epochs": self.epochs}, f, indent=1)
