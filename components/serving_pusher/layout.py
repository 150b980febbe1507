"""TF Serving's model directory, ``<base>/<model_name>/<integer version>/``, published safely.

TF Serving's file-system source polls the base path and tries to load every directory whose
name is an integer, as soon as it sees it. What "safely" can mean depends on the filesystem
(``pipeline.storage.is_local``), and so does how a version is published:

**Local disk** (``rename(2)`` of a directory is atomic; gfile's rename refuses an existing
target, and ``rename(2)`` a non-empty one). A version is built under a hidden staging name
(``.staging-<id>``, not an integer: never loaded) and renamed to its number once complete. A
reader sees no version or a whole one, and two pushers never share a number: the loser of the
rename takes the next one.
Beside each staging directory is its lock file (``.staging-<id>.lock``), ``flock``-ed by the
pushing process for the whole push; the kernel releases the lock when that process ends, however
it ends. So a push removes a staging directory only if it can take its lock (the pusher is gone:
a leftover), never one whose lock is held (another process's push in progress).

**Object stores** (``gs://``, ``s3://``; ``ram://`` in tests). No directory rename (gfile copies
object by object), no locks, no "create only if absent". A version is written in place, in the
order TFX's Pusher uses: every file but ``saved_model.pb`` (variables, assets, the warm-up
requests), then ``saved_model.pb``, which TF Serving takes as the sign that a version is complete,
then our provenance marker. Guaranteed: a version is never loaded without all its files; TF
Serving may try it earlier, fail (no ``saved_model.pb``) and retry (``--max_num_load_retries``
times, every ``--load_retry_interval_micros``); our server (``serving/models.py``) waits for
``saved_model.pb``. A push interrupted midway leaves an integer directory without
``saved_model.pb``: not a version (``versions``), and its number is never used again, since TF
Serving may have given up on it. Two pushers racing for a number each write a claim file into
its directory and list it; one takes the number only if its claim is alone there, otherwise it
moves on. That keeps two pushers out of one version wherever a listing shows every object
written before it (GCS and S3 are strongly consistent); two that see each other both move on,
leaving a gap in the numbers, which TF Serving ignores.
NOT guaranteed on object stores: exclusion on a store whose listings lag behind writes;
removal of interrupted versions (nothing tells them from a push in progress, so they stay, as
directories without ``saved_model.pb``, for an operator to delete); and a version whose copy
outlasts TF Serving's retries may be left unloaded until TF Serving restarts.

Both ways, "complete" means ``saved_model.pb`` is there, not the provenance marker: versions
pushed by other tools (TFX's own Pusher, a person) have no marker and must still be served, and
everything a server reads is written before ``saved_model.pb``. The marker only lets a re-run
recognise its own model.
"""

import json
import logging
import os
import uuid
from typing import Callable, Optional

import tensorflow as tf

from pipeline import storage

SAVED_MODEL_FILE = "saved_model.pb"
STAGING_PREFIX = ".staging-"
LOCK_SUFFIX = ".lock"
CLAIM_PREFIX = ".push-"
# Written into each pushed version: which model artifact it came from, so that pushing the
# same model again (a re-run whose Evaluator re-blessed it) does not add a duplicate version.
PROVENANCE_FILE = os.path.join("assets.extra", "deeplab_tfx_push.json")


def version_numbers(base_dir: str) -> list:
    """Every integer directory under ``base_dir``, complete or not, ascending: numbers in use."""
    if not tf.io.gfile.isdir(base_dir):
        return []
    names = [name.rstrip("/") for name in tf.io.gfile.listdir(base_dir)]
    return sorted(int(name) for name in names if name.isdigit())


def is_complete(version_dir: str) -> bool:
    """Whether a version has all its files: ``saved_model.pb`` is written last."""
    return tf.io.gfile.exists(os.path.join(version_dir, SAVED_MODEL_FILE))


def versions(base_dir: str) -> list:
    """The complete versions under ``base_dir``, ascending: those a server may load."""
    return [v for v in version_numbers(base_dir) if is_complete(os.path.join(base_dir, str(v)))]


def provenance(version_dir: str) -> dict:
    """``{"source": model artifact URI}`` of a version we pushed; ``{}`` for any other."""
    path = os.path.join(version_dir, PROVENANCE_FILE)
    if not tf.io.gfile.exists(path):
        return {}
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def push(
    model_dir: str,
    base_dir: str,
    source: str,
    add_files: Optional[Callable[[str], None]] = None,
) -> tuple:
    """Copies SavedModel ``model_dir`` to the next version under ``base_dir``; ``(version, new)``.

    ``source`` names the model artifact; if the newest version came from the same one, nothing
    is copied and ``(that version, False)`` is returned. ``add_files(version_dir)`` may add files
    (the warm-up requests) before the version is complete.
    """
    if not tf.io.gfile.exists(os.path.join(model_dir, SAVED_MODEL_FILE)):
        raise FileNotFoundError(f"{model_dir} is not a SavedModel: it has no {SAVED_MODEL_FILE}")
    tf.io.gfile.makedirs(base_dir)
    local = storage.is_local(base_dir)
    if local:
        _remove_abandoned_staging(base_dir)
    complete = versions(base_dir)
    if complete and provenance(os.path.join(base_dir, str(complete[-1]))).get("source") == source:
        logging.info("ServingPusher: %s is already version %d; not pushed again", source, complete[-1])
        return complete[-1], False
    first_free = max(version_numbers(base_dir), default=0) + 1
    publish = _publish_by_rename if local else _publish_in_place
    return publish(model_dir, base_dir, source, add_files, first_free), True


def _write_version(model_dir: str, version_dir: str, source: str, add_files) -> None:
    """The version's files, in the order readers rely on: all others, saved_model.pb, the marker."""
    storage.copy_tree(model_dir, version_dir, exclude=[SAVED_MODEL_FILE])
    if add_files:
        add_files(version_dir)
    tf.io.gfile.copy(
        os.path.join(model_dir, SAVED_MODEL_FILE), os.path.join(version_dir, SAVED_MODEL_FILE), overwrite=True
    )
    tf.io.gfile.makedirs(os.path.dirname(os.path.join(version_dir, PROVENANCE_FILE)))
    with tf.io.gfile.GFile(os.path.join(version_dir, PROVENANCE_FILE), "w") as f:
        json.dump({"source": source}, f)


def _publish_by_rename(model_dir: str, base_dir: str, source: str, add_files, version: int) -> int:
    """Local disk: build under a locked staging name, then rename it to the first free number."""
    staging = os.path.join(base_dir, f"{STAGING_PREFIX}{uuid.uuid4().hex}")
    with storage.exclusive_lock(staging + LOCK_SUFFIX):
        try:
            _write_version(model_dir, staging, source, add_files)
            while True:
                target = os.path.join(base_dir, str(version))
                try:
                    tf.io.gfile.rename(staging, target)
                    return version
                except tf.errors.OpError:
                    if not tf.io.gfile.exists(target):
                        raise
                    version += 1  # another pusher took it meanwhile
        except BaseException:
            storage.remove_tree(staging)
            raise


def _publish_in_place(model_dir: str, base_dir: str, source: str, add_files, version: int) -> int:
    """Object stores: claim the first free number, then write the version there, in order."""
    claim = f"{CLAIM_PREFIX}{uuid.uuid4().hex}"
    while not _claim(os.path.join(base_dir, str(version)), claim):
        version += 1
    version_dir = os.path.join(base_dir, str(version))
    _write_version(model_dir, version_dir, source, add_files)
    tf.io.gfile.remove(os.path.join(version_dir, claim))
    return version


def _claim(version_dir: str, claim: str) -> bool:
    """Writes ``claim`` into ``version_dir``; True if nothing else is there, so the number is ours.

    Two pushers that both claim one number cannot both see only their own claim, as long as
    each listing shows the objects written before it; one that sees another's withdraws its
    own claim (so it leaves nothing in a version it does not write) and moves on.
    """
    if tf.io.gfile.exists(version_dir):
        return False
    tf.io.gfile.makedirs(version_dir)
    path = os.path.join(version_dir, claim)
    with tf.io.gfile.GFile(path, "w") as f:
        f.write("")
    if tf.io.gfile.listdir(version_dir) == [claim]:
        return True
    tf.io.gfile.remove(path)
    return False


def _remove_abandoned_staging(base_dir: str) -> None:
    """Removes the staging directories (and lock files) whose pushing process is gone.

    A staging directory without a lock file is a leftover too: a pusher creates its lock before
    its directory and removes it after (or it predates locks).
    """
    names = {name.rstrip("/") for name in tf.io.gfile.listdir(base_dir)}
    for name in sorted({n.removesuffix(LOCK_SUFFIX) for n in names if n.startswith(STAGING_PREFIX)}):
        staging = os.path.join(base_dir, name)
        with storage.exclusive_lock(staging + LOCK_SUFFIX, wait=False) as abandoned:
            if abandoned:
                logging.warning("ServingPusher: removing %s, left by an interrupted push", staging)
                storage.remove_tree(staging)
            else:
                logging.info("ServingPusher: leaving %s alone: another process is pushing", staging)
