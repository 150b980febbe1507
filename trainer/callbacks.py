"""Training callbacks that Keras does not ship in the form a pipeline needs."""

import json
import logging
import math
import os
import sys
import time
from typing import Optional

import tensorflow as tf
import tf_keras as keras

from core import artifacts, storage
from trainer import distribute


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


class StopAtStep(keras.callbacks.Callback):
    """Ends training once the optimizer has taken ``last_step`` steps, mid-epoch if need be.

    ``fit`` runs whole epochs of ``steps_per_epoch``; when the steps asked for are not a multiple
    of it, the last epoch is cut short here. Keras still evaluates that epoch and calls
    ``on_epoch_end`` (tf_keras 2.16 ``Model.fit`` checks ``stop_training`` after each batch,
    then validates). Every worker of a multi-worker job counts the same steps, so all stop
    together. A restart from a backup of ``last_step`` itself takes no step: ``BackupAndRestore``.
    """

    def __init__(self, last_step: int):
        super().__init__()
        self.last_step = last_step

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) >= self.last_step:
            self.model.stop_training = True


class BackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras' ``BackupAndRestore`` (tf_keras 2.16), whose backup of ``last_step`` resumes past it.

    Keras resumes a backup taken mid-epoch at the batch after it, and only one taken at an
    epoch's last batch (by ``steps_per_epoch``) at the next epoch. The last step of a short last
    epoch (``StopAtStep``) is mid-epoch by that count, so a restart from its backup (a kill in
    the export: the backup is kept until the export is complete) took step ``last_step + 1``,
    one more than asked for, and evaluated the epoch again. Here a backup taken at ``last_step``
    records the epoch's last batch, as a full last epoch's does: the restart resumes after the
    last epoch, takes no step, and goes on to restore the best weights and export.

    As for any epoch whose last batch was backed up (Keras' rule), a kill during that epoch's
    evaluation leaves it unevaluated: its weights are not among those the best is chosen from.

    The backup outlives ``fit`` (``delete_checkpoint=False``): the trainer removes it once the
    export is complete.
    """

    def __init__(self, backup_dir: str, last_step: int, save_freq="epoch"):
        super().__init__(backup_dir, save_freq=save_freq, delete_checkpoint=False)
        self.last_step = last_step

    def on_train_batch_end(self, batch, logs=None):
        # Before Keras' own, which may back up this batch: the batch it records is
        # ``ckpt_saved_batch``, set in ``on_train_batch_begin``.
        if int(self.model.optimizer.iterations.numpy()) >= self.last_step:
            self._training_state._ckpt_saved_batch.assign(self.params["steps"] - 1)
        super().on_train_batch_end(batch, logs)


def steps_backed_up(backup_dir: str) -> int:
    """The steps (batches) the training backed up in ``backup_dir`` by ``BackupAndRestore`` had
    taken: where a restart resumes; 0 when there is no backup.

    Read before ``fit``, which restores it only in its callbacks' ``on_train_begin``, after the
    input pipeline is built, since the pipeline's seed depends on it (``data.make_dataset``).
    The count is Keras' ``train_counter`` in the chief's checkpoint (every worker restores the
    chief's): the steps ``fit`` ran, as the optimizer's ``iterations`` counts them (a loss-scale
    optimizer counts the steps it skips too), but a key of the backup's own, not one under the
    optimizer, whose layout depends on its class.
    """
    latest = tf.train.latest_checkpoint(os.path.join(backup_dir, "chief"))
    if not latest:
        return 0
    return int(tf.train.load_checkpoint(latest).get_tensor(_TRAIN_COUNTER))


_TRAIN_COUNTER = "train_counter/.ATTRIBUTES/VARIABLE_VALUE"


class EpochProgress(keras.callbacks.Callback):
    """One line per epoch on stdout: epoch, step, loss, eval mean IoU, elapsed time and ETA.

    What a person follows while the Trainer runs; Keras' own progress (``fit(verbose=...)``)
    is for the log. Under ``deeplab-tfx run`` stdout is the terminal and the log file
    (``pipeline/logs.py``); in a container it is the container's log. The ETA counts the steps
    this run takes (from where ``BackupAndRestore`` resumed: it must come after it) at the
    pace of this run so far, evaluation included.
    """

    def __init__(self, total_steps: int, monitor: str, enabled: bool = True, stream=None):
        super().__init__()
        self.total_steps, self.monitor, self.enabled = total_steps, monitor, enabled
        self._stream = stream
        self._start_step, self._start_time = 0, 0.0

    def on_train_begin(self, logs=None):
        self._start_step = int(self.model.optimizer.iterations.numpy())
        self._start_time = time.time()

    def on_epoch_end(self, epoch, logs=None):
        if not self.enabled:
            return
        logs = logs or {}
        step = int(self.model.optimizer.iterations.numpy())
        elapsed = time.time() - self._start_time
        done = max(step - self._start_step, 1)
        eta = elapsed / done * max(self.total_steps - step, 0)
        figures = [f"step {step}/{self.total_steps}"]
        if "loss" in logs:
            figures.append(f"loss {float(logs['loss']):.4f}")
        if self.monitor in logs:
            figures.append(f"eval mean IoU {float(logs[self.monitor]):.4f}")
        figures.append(f"{_duration(elapsed)} so far, ETA {_duration(eta)}")
        logging.getLogger(__name__).info("epoch %d: %s", epoch + 1, logs)
        line = f"           Trainer epoch {epoch + 1}/{self.params.get('epochs', '?')}: " + ", ".join(figures)
        print(line, file=self._stream or sys.stdout, flush=True)


def _duration(seconds: float) -> str:
    """``42 s`` or ``3m05s``: short enough for a progress line."""
    seconds = round(seconds)
    return f"{seconds} s" if seconds < 60 else f"{seconds // 60}m{seconds % 60:02d}s"


def _resumed(model: keras.Model) -> bool:
    """Whether ``BackupAndRestore`` restored a backup: a fresh model has taken no step yet."""
    return int(model.optimizer.iterations.numpy()) > 0


class BestCheckpoint(keras.callbacks.Callback):
    """Keeps the weights of the best ``monitor`` value on disk, through restarts, and puts
    them back in the model when training ends (``restore``).

    One callback instead of Keras' ``ModelCheckpoint(save_best_only=True)`` and a copy in
    memory: after a kill and a ``BackupAndRestore`` resume both started again from minus
    infinity, so the first epoch after the restart overwrote a better checkpoint and a worse
    model could be exported. Here the best value and epoch are saved in the checkpoint with
    the weights and read back when the run resumes.

    A checkpoint is never changed in place: each improvement is a new ``best-<n>`` checkpoint
    (model weights without the optimizer, loadable with ``model.load_weights``, plus
    ``best_value`` and ``best_epoch``), then TF's ``checkpoint`` file is replaced atomically to
    name it, then the previous one is deleted (``tf.train.CheckpointManager``). A kill at any
    moment leaves one complete best checkpoint. TF's checkpoint I/O works on ``gs://`` paths.

    Resumed (the optimizer step restored by ``BackupAndRestore`` is past 0, so this callback
    must come after it): the checkpoint in ``chief_directory`` is this run's, and its value is
    the one to beat. Not resumed: whatever ``directory`` holds is from another run and is
    deleted.

    ``initial``: the score of the weights training starts from, when they have one (a warm
    start's ``initial_mean_iou``, measured before step 1 on the same eval split). Those weights
    are then the first best, of epoch 0, saved before any step: a run whose every epoch
    scores below its start restores and exports the weights it started from. From minus
    infinity it exported the best of its worse epochs, a model worse than the one it was given
    (fine-tuning can lose ground: at the full rate the tiny model fell from 0.939 to 0.602 in
    50 steps, ``warm_start.py``).

    Multi-worker: saving reads the batch-norm moving statistics, sync-on-read variables, which
    is a collective that every worker must join, so every worker saves, each into its own
    ``directory`` (``distribute.output_dir``). But every worker reads only the chief's
    checkpoint, ``chief_directory`` (shared storage, as ``BackupAndRestore`` needs too): if a
    pre-emption cut one worker's save short and not another's, each reading its own would
    leave them disagreeing on the best value, and an epoch scoring between the two would make
    one worker start the collective save alone and wait forever. The chief's state is
    consistent (TF names a checkpoint in its ``checkpoint`` file only once its data is
    written). At the end every worker restores the chief's best weights, after waiting until
    the chief has finished writing them (``distribute.barrier``): the export is collective too,
    and averages the sync-on-read statistics over the workers, so all must hold the same
    weights; a worker's own copy may be one that a pre-emption left behind the chief's.
    """

    def __init__(
        self,
        directory: str,
        monitor: str,
        restore: bool = True,
        chief_directory: Optional[str] = None,
        initial: Optional[float] = None,
    ):
        super().__init__()
        self.directory, self.monitor, self.restore, self.initial = directory, monitor, restore, initial
        self.chief_directory = chief_directory or directory
        self.best, self.best_epoch = -math.inf, None
        # Plain variables, made outside any strategy scope: each worker saves its own.
        self._value = tf.Variable(-math.inf, dtype=tf.float64, trainable=False, name="best_value")
        self._epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="best_epoch")
        self._manager = None

    def on_train_begin(self, logs=None):
        resumed = _resumed(self.model)
        if not resumed and tf.io.gfile.exists(self.directory):
            tf.io.gfile.rmtree(self.directory)
        # A model over the same layers, without the optimizer: the checkpoint holds weights only.
        weights = keras.Model(self.model.inputs, self.model.outputs)
        checkpoint = tf.train.Checkpoint(root=weights, best_value=self._value, best_epoch=self._epoch)
        self._manager = tf.train.CheckpointManager(
            checkpoint, self.directory, max_to_keep=1, checkpoint_name="best"
        )
        # Not resumed: nothing to read (and the chief may not have deleted its old one yet).
        latest = tf.train.latest_checkpoint(self.chief_directory) if resumed else None
        if latest:
            self.best, self.best_epoch = read_best(latest)
            logging.getLogger(__name__).info(
                "resumed: the best %s so far is %.4f, epoch %d", self.monitor, self.best, self.best_epoch
            )
        elif not resumed and self.initial is not None:
            self._save(float(self.initial), 0)

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not float(value) > self.best:  # NaN never counts as better
            return
        self._save(float(value), epoch + 1)

    def _save(self, value: float, epoch: int) -> None:
        """The model's weights as the best, of ``value`` at ``epoch`` (0: the start)."""
        self.best, self.best_epoch = value, epoch
        self._value.assign(value)
        self._epoch.assign(epoch)
        latest = self._manager.latest_checkpoint
        self._manager.save(checkpoint_number=self._number(latest) + 1 if latest else 0)

    def on_train_end(self, logs=None):
        if not self.restore:
            return
        distribute.barrier(self.model.distribute_strategy)
        latest = tf.train.latest_checkpoint(self.chief_directory)
        if latest:
            self._manager.checkpoint.read(latest).expect_partial()

    @staticmethod
    def _number(path: str) -> int:
        return int(path.rsplit("-", 1)[1])


def read_best(checkpoint: str) -> tuple:
    """``(value, epoch)`` saved with a ``BestCheckpoint`` checkpoint."""
    reader = tf.train.load_checkpoint(checkpoint)
    value = reader.get_tensor("best_value/.ATTRIBUTES/VARIABLE_VALUE")
    epoch = reader.get_tensor("best_epoch/.ATTRIBUTES/VARIABLE_VALUE")
    return float(value), int(epoch)


class HistoryWriter(keras.callbacks.Callback):
    """Writes per-epoch metrics and the learning rate to a JSON file after every epoch.

    The run report draws the training curves from it; rewriting it each epoch means a killed
    run still leaves the curves so far. Each rewrite replaces the file whole
    (``storage.write_file``), so a kill mid-write leaves the previous epoch's file.
    ``learning_rate`` is the rate the epoch's last step used (Keras 2.16 optimizers return the
    schedule's current value, not the schedule).
    """

    def __init__(self, path: str, enabled: bool = True):
        super().__init__()
        self.path, self.enabled = path, enabled
        self.epochs = []

    def on_train_begin(self, logs=None):
        # A resumed run keeps the epochs its killed predecessor finished (it must come after
        # BackupAndRestore); a fresh one does not take up another run's.
        self.epochs = []
        if tf.io.gfile.exists(self.path):
            if _resumed(self.model):
                self.epochs = json.loads(storage.read_file(self.path, binary=False))[artifacts.HISTORY_EPOCHS]
            elif self.enabled:
                tf.io.gfile.remove(self.path)

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
            # Whole or not at all: a kill mid-write must not leave JSON that no resume can read.
            storage.write_file(self.path, json.dumps({artifacts.HISTORY_EPOCHS: self.epochs}, indent=1))
