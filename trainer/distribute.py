"""Distribution strategy, mixed-precision policy and the chief/worker split, from config.

One function per decision so that ``training.py`` reads as the recipe and the cluster details
stay here. Every worker of a multi-worker job runs the same ``run_fn``; only the chief writes
to the real output paths, the others write to scratch directories that are deleted afterwards
(Keras and SavedModel saving are collective: every worker must take part).
"""

import json
import os
from typing import Optional, Sequence

import tensorflow as tf
import tf_keras as keras

from core import storage
from core.choices import PRECISIONS, STRATEGIES


def make_strategy(name: str, tpu: str = "") -> tf.distribute.Strategy:
    """The ``tf.distribute`` strategy called ``name`` (see ``TrainerConfig.strategy``)."""
    if name == "one_device":
        # The default strategy (first GPU, else CPU): OneDeviceStrategy would do the same, but
        # Keras' BackupAndRestore refuses it.
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return mirrored_strategy()
    if name == "multi_worker_mirrored":
        if "TF_CONFIG" not in os.environ:
            raise ValueError(
                "trainer.strategy=multi_worker_mirrored needs TF_CONFIG (cluster and task) in the "
                "environment; Vertex AI and the Kubeflow training operator set it"
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or None)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"trainer.strategy must be one of {STRATEGIES}, got {name!r}")


def mirrored_strategy(devices: Optional[Sequence[str]] = None) -> tf.distribute.MirroredStrategy:
    """MirroredStrategy over ``devices`` (default: all GPUs, else the CPU).

    Without GPUs, reductions go through one device instead of the default collective ops: on
    CPUs those pair up the collectives of sync batch-norm and of the gradients across replicas
    in different orders, which mixes up statistics (weights drifted 5-20% from a one-device
    step) or aborts with "Shape mismatch in the collective instance". Through one device, a
    step on two CPU replicas equals the one-device step to 1e-8 (tests/test_training.py).
    """
    gpus = tf.config.list_logical_devices("GPU")
    if devices is None:
        devices = [d.name for d in gpus] or ["/cpu:0"]
    cross_device_ops = None if gpus else tf.distribute.ReductionToOneDevice()
    return tf.distribute.MirroredStrategy(devices, cross_device_ops=cross_device_ops)


def precision_policy(setting: str, strategy: tf.distribute.Strategy) -> str:
    """The Keras dtype policy for ``setting``; ``auto`` picks by the hardware the strategy uses."""
    if setting not in PRECISIONS:
        raise ValueError(f"trainer.mixed_precision must be one of {PRECISIONS}, got {setting!r}")
    if setting != "auto":
        return setting
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return "mixed_bfloat16"
    if tf.config.list_logical_devices("GPU"):
        return "mixed_float16"
    return "float32"  # CPUs gain nothing from float16 and lose accuracy


def task(strategy: tf.distribute.Strategy) -> tuple:
    """``(task_type, task_id)`` of this process; ``(None, None)`` outside a cluster."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return None, None
    return resolver.task_type, resolver.task_id


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """The chief is the ``chief`` task, or worker 0 when the cluster has no chief task."""
    task_type, task_id = task(strategy)
    if task_type is None:
        return True
    cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    return task_type == "chief" or (task_type == "worker" and task_id == 0 and "chief" not in cluster)


def output_dir(path: str, strategy: tf.distribute.Strategy) -> str:
    """``path`` on the chief; on another worker, a scratch directory beside ``path`` and named
    after it (``<path>.scratch_<task type>_<task id>``).

    Named after ``path``, not only after the task: ``path`` is the execution's own (TFX gives
    every Trainer execution its own ``model_run_dir`` and ``serving_model_dir``), so two jobs
    running at once, or the two outputs of one job, never share a scratch directory. One named
    after the task alone in ``path``'s parent was shared by every execution: two concurrent
    multi-worker runs deleted each other's checkpoints.
    """
    if is_chief(strategy):
        return path
    task_type, task_id = task(strategy)
    return f"{path.rstrip('/')}.scratch_{task_type}_{task_id}"


def remove_scratch(path: str, strategy: tf.distribute.Strategy) -> None:
    """Deletes what ``output_dir`` gave a non-chief worker; a no-op on the chief."""
    if not is_chief(strategy):
        storage.remove_tree(output_dir(path, strategy))


def set_policy(policy: str) -> str:
    """Sets the global Keras dtype policy and returns the previous one's name (to restore it)."""
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(policy)
    return previous


def barrier(strategy: tf.distribute.Strategy) -> None:
    """Returns once every worker of a MultiWorkerMirroredStrategy job has called it.

    An all-reduce of one number over every replica, as TF's own strategy waits for its workers
    at start-up (TF 2.16 has no explicit barrier). Work a worker does on its own, such as
    writing the files of a checkpoint, is not collective: a worker that reads what another
    wrote must wait here first. Other strategies have one client: nothing to wait for.
    """
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return

    @tf.function
    def count():
        ones = strategy.run(lambda: tf.ones([]))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, ones, axis=None)

    count().numpy()
