"""Distribution strategy, mixed-precision policy and the chief/worker split, from config.

One function per decision so that ``training.py`` reads as the recipe and the cluster details
stay here. Every worker of a multi-worker job runs the same ``run_fn``; only the chief writes
to the real output paths, the others write to scratch directories that are deleted afterwards
(Keras and SavedModel saving are collective: every worker must take part).
"""

import ipaddress
import json
import os
from typing import Mapping, Optional, Sequence

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
    if multi_worker(name):
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


def multi_worker(name: str, strategy: Optional[tf.distribute.Strategy] = None) -> bool:
    """Whether training runs as one of a cluster's workers: ``strategy`` is a
    ``MultiWorkerMirroredStrategy`` or, when none is given yet, ``name`` (``trainer.strategy``)
    makes one."""
    if strategy is not None:
        return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    return name == "multi_worker_mirrored"


def cluster_hosts(tf_config: Mapping) -> list:
    """The machines of a ``TF_CONFIG``'s cluster, sorted: the host of every task's address, with
    every loopback address (``localhost``, ``127.x.x.x``, ``::1``) as one, this machine."""
    hosts = set()
    for addresses in tf_config.get("cluster", {}).values():
        for address in addresses:
            host = address.rsplit(":", 1)[0].strip("[]") if ":" in address else address
            hosts.add("localhost" if _is_loopback(host) else host)
    return sorted(hosts)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name
        return False


def require_shared_storage(paths: Mapping[str, str], tf_config: Mapping) -> None:
    """Fails unless every one of ``paths`` (what it is -> path) is storage that every machine of
    the ``TF_CONFIG`` cluster reads: a remote URI (``gs://``) or Cloud Storage mounted at
    ``/gcs/``, not ``storage.is_local``'s plain path, when the cluster has more than one machine.

    Every worker restores the chief's backup (``BackupAndRestore`` reads ``<backup>/chief``) and
    reads the chief's best checkpoint (``callbacks.BestCheckpoint``), so both must be where every
    worker sees what the chief wrote. On one machine's disk the others find nothing there, and
    nothing says so until late: at the end a worker keeps its last weights where the chief
    restores its best for the export (which is collective), and a restart resumes the chief
    alone while the others start again from step 0. Checked before the model is built or the
    strategy waits for the workers, from the cluster's addresses alone. Workers that all run on
    one machine (every address the same host or a loopback one, as the tests' two local
    workers) share its disk: any path will do. A plain path that every machine mounts from NFS
    is refused too: ``storage.is_local`` cannot tell it from a local disk (give the ``gs://``
    URI instead of the mount).
    """
    hosts = cluster_hosts(tf_config)
    if len(hosts) < 2:
        return
    for what, path in paths.items():
        if storage.is_local(path):
            raise ValueError(
                f"multi-worker training on {len(hosts)} machines ({', '.join(hosts)}) needs {what} on "
                f"storage every worker reads (gs://, or Cloud Storage mounted at {storage.GCSFUSE_ROOT}): "
                f"{path} is a path on this machine's disk, and every worker reads the backup and the best "
                "checkpoint the chief writes there"
            )


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
