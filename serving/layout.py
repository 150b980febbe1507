"""TF Serving's model directory, ``<base>/<model_name>/<integer version>/``, published safely.

TF Serving's file-system source polls the base path and tries to load every directory whose
name is an integer, as soon as it sees it (with its default ``latest`` policy, the highest
one). What "safely" can mean depends on the filesystem (``core.storage.is_local``), and so
does how a version is published. Both ways, a version's files are written in one order: every
file but ``saved_model.pb`` (variables, assets, the warm-up requests), then our provenance
marker, then ``saved_model.pb``, which TF Serving takes as the sign that a version is complete.

**Local disk** (``rename(2)`` of a directory is atomic; gfile's rename refuses an existing
target, and ``rename(2)`` a non-empty one). A version is built under a hidden staging name
(``.staging-<id>``, not an integer: never loaded) and renamed to its number once complete. A
reader sees no version or a whole one, and two pushers never share a number: the loser of the
rename takes the next one.
Beside each staging directory is its lock file (``.staging-<id>.lock``), ``flock``-ed by the
pushing process for the whole push; the kernel releases the lock when that process ends, however
it ends. So a push removes a staging directory only if it can take its lock (the pusher is gone:
a leftover), never one whose lock is held (another process's push in progress).

**Object stores** (``gs://``, and Cloud Storage mounted by gcsfuse under ``/gcs/``; ``s3://``
only with tensorflow-io, which this project neither installs nor tests; ``ram://`` in tests).
No directory rename (gfile copies object by object), no locks, no "create only if absent". A
version is written in place, in the order above, as TFX's Pusher writes it. Guaranteed:

- A version is never loaded without all its files. TF Serving may try it earlier, fail (no
  ``saved_model.pb``) and retry (``--max_num_load_retries`` times, every
  ``--load_retry_interval_micros``); our server (``serving/models.py``) waits for
  ``saved_model.pb``. Whoever sees ``saved_model.pb`` finds the marker whole, so a re-run of
  the same model recognises its version instead of pushing a duplicate.
- Two pushers never write into one version. Racing for a number, each writes a claim file into
  its directory and lists it; one takes the number only if its claim is alone there, otherwise
  it withdraws its claim and moves on. That holds wherever a listing shows every object written
  before it (GCS is strongly consistent); two that see each other both move on, leaving a gap
  in the numbers (an empty directory), which TF Serving ignores.
- A push that fails with an exception removes the directory it claimed (best effort), then
  re-raises: its claim was alone there, so only its own files go, and no incomplete directory
  is left as the highest number for TF Serving's ``latest`` policy. The next push may take that
  number again; TF Serving, which may have tried it and failed, forgets a version once a poll
  finds its directory gone (every ``--file_system_poll_wait_seconds``, 1 s by default), then
  loads the new one as a new version.

NOT guaranteed on object stores: exclusion on a store whose listings lag behind writes; and
cleanup after a pushing process that is killed (SIGKILL, preemption, the OOM killer) or whose
cleanup itself fails. Those leave an integer directory without ``saved_model.pb``: not a version
(``versions``), never removed by a later push (nothing tells it from a push in progress), its
number never used again (TF Serving may have given up on it), for an operator to delete. While
it is the highest number, TF Serving (``latest``) keeps serving the version it has loaded for as
long as it runs (its availability-preserving policy never unloads the only loaded version), but
once restarted it tries only that directory, fails, and serves nothing of this model until a
later push completes; ``deeplab-tfx serve`` skips it and serves the newest complete version. A
version whose copy outlasts TF Serving's retries may also stay unloaded until TF Serving
restarts.

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

from core import artifacts, storage

STAGING_PREFIX = ".staging-"
LOCK_SUFFIX = ".lock"
CLAIM_PREFIX = ".push-"
# Written into each pushed version: which model artifact it came from, so that pushing the
# same model again (a re-run whose Evaluator re-blessed it) does not add a duplicate version.
PROVENANCE_FILE = os.path.join(artifacts.ASSETS_EXTRA, "deeplab_tfx_push.json")


def version_numbers(base_dir: str) -> list:
    """Every integer directory under ``base_dir``, complete or not, ascending: numbers in use."""
    if not tf.io.gfile.isdir(base_dir):
        return []
    names = [name.rstrip("/") for name in tf.io.gfile.listdir(base_dir)]
    return sorted(int(name) for name in names if name.isdigit())


def is_complete(version_dir: str) -> bool:
    """Whether a version has all its files: ``saved_model.pb`` is written last."""
    return tf.io.gfile.exists(os.path.join(version_dir, artifacts.SAVED_MODEL_FILE))


def versions(base_dir: str) -> list:
    """The complete versions under ``base_dir``, ascending: those a server may load."""
    return [v for v in version_numbers(base_dir) if is_complete(os.path.join(base_dir, str(v)))]


def provenance(version_dir: str) -> dict:
    """``{"source": model artifact URI}`` of a version we pushed; ``{}`` for any other."""
    path = os.path.join(version_dir, PROVENANCE_FILE)
    if not tf.io.gfile.exists(path):
        return {}
    return json.loads(storage.read_file(path, binary=False))


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
    if not tf.io.gfile.exists(os.path.join(model_dir, artifacts.SAVED_MODEL_FILE)):
        raise FileNotFoundError(f"{model_dir} is not a SavedModel: it has no {artifacts.SAVED_MODEL_FILE}")
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
    """The version's files, in the order readers rely on: all others, the marker, saved_model.pb.

    The marker before ``saved_model.pb``: a concurrent ``push`` that sees the version complete
    reads its marker and must find it whole; written after, it could be missing (a re-run of
    the same model would push a duplicate version) or partly written (unreadable JSON).
    """
    storage.copy_tree(model_dir, version_dir, exclude=[artifacts.SAVED_MODEL_FILE])
    if add_files:
        add_files(version_dir)
    marker = os.path.join(version_dir, PROVENANCE_FILE)
    tf.io.gfile.makedirs(os.path.dirname(marker))
    storage.write_file(marker, json.dumps({"source": source}))
    tf.io.gfile.copy(
        os.path.join(model_dir, artifacts.SAVED_MODEL_FILE),
        os.path.join(version_dir, artifacts.SAVED_MODEL_FILE),
    )


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
    """Object stores: claim the first free number, then write the version there, in order.

    The claimed directory is ours alone (our claim was alone in it), so a write that fails
    takes it away again rather than leave an incomplete highest version behind.
    """
    claim = f"{CLAIM_PREFIX}{uuid.uuid4().hex}"
    while not _claim(os.path.join(base_dir, str(version)), claim):
        version += 1
    version_dir = os.path.join(base_dir, str(version))
    try:
        _write_version(model_dir, version_dir, source, add_files)
    except BaseException:
        _remove_failed_version(version_dir)
        raise
    tf.io.gfile.remove(os.path.join(version_dir, claim))
    return version


def _remove_failed_version(version_dir: str) -> None:
    """Best effort: the push's own error, re-raised after this, matters more than this one."""
    try:
        storage.remove_tree(version_dir)
    except Exception:  # noqa: BLE001 - logged; the push's own error is re-raised
        logging.exception("ServingPusher: could not remove %s, left by a failed push", version_dir)
    else:
        logging.warning("ServingPusher: removed %s, left incomplete by a failed push", version_dir)


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
