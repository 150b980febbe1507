"""TF Serving's model directory, ``<base>/<model_name>/<integer version>/``, published safely.

TF Serving's file-system source polls the base path and tries to load every directory whose
name is an integer, as soon as it sees it (with its default ``latest`` policy, the highest
one). What "safely" can mean depends on the filesystem (``core.storage.is_local``), and so
does how a version is published. Both ways, a version's files are written in one order: every
file but ``saved_model.pb`` (variables, assets, the warm-up requests), then our provenance
marker, then ``saved_model.pb``, which TF Serving takes as the sign that a version is complete.
Both ways, a push takes the number above every integer directory it sees, complete or not.

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
  is left as the highest number for TF Serving's ``latest`` policy.
- A push that is killed (SIGKILL, preemption, the OOM killer), or whose cleanup failed, is
  cleaned up by a later push, under a lease. The claim is the lease: it holds the pusher's
  heartbeat (``{"heartbeat": <its clock's time>, "host", "pid"}``), rewritten every
  ``HEARTBEAT_SECONDS`` by a thread for as long as the push writes, and removed only after
  ``saved_model.pb``. Every push (a re-run that adds nothing too) first removes each integer
  directory without ``saved_model.pb`` whose newest heartbeat is more than ``STALE_SECONDS``
  old: abandoned. A push in progress beats, so it is never removed. A claim gone or unreadable
  as it is rewritten counts as fresh; one without a heartbeat (written before claims carried
  one) counts from its own time on the store's clock. A directory with no claim (another
  tool's push, a gap) is judged by its files' times on the store's clock where the store keeps
  them (GCS does, ``ram://`` does not), and kept where nothing tells its age.
  ``deeplab-tfx serve`` skips such a directory (not complete) and never removes one: a server
  reads (it may hold read-only access to the bucket, and its replicas would judge with as many
  clocks), pushes write.
- The number of an abandoned directory is not taken again by the push that removes it (it
  chose its number from what it saw before removing anything), so that push's version is the
  highest, and a zombie (below) could only write under a lower number. A later push takes it
  again only if nothing was pushed above it meanwhile (the removing push was a re-run that
  added nothing, or failed): TF Serving, which may have tried the directory and failed,
  forgets a version once a poll finds its directory gone (every
  ``--file_system_poll_wait_seconds``, 1 s by default), then loads the new one as a new
  version. The same holds for the number of a push that failed with an exception.

Why ten minutes (``STALE_SECONDS``) against a 30 s heartbeat: a heartbeat is written on the
pusher's clock and judged on another pusher's, possibly on another machine, so the lease holds
while the two clocks disagree by less than ``STALE_SECONDS - HEARTBEAT_SECONDS`` (9.5 min) and
while fewer than 20 beats in a row fail (TF's GCS client retries a write for up to about 3
minutes, 1 s doubling to 32 s, 10 retries, before it gives up). Vertex AI and GCE machines keep
time by the metadata server's NTP, Google's own clock; any NTP-synchronised host is well
under a second off. A long stale age costs nothing in serving: a push goes above an abandoned
directory whatever its age, so a pusher retried at once after preemption makes a complete
highest version; only the removal of the leftover waits for a push ten minutes after the kill.
A heartbeat is one small object write per 30 s, well under GCS's limit of one write per second
to one object name.

NOT guaranteed on object stores: exclusion on a store whose listings lag behind writes; a
lease judged with clocks more than 9.5 minutes apart (a push in progress could be removed);
and fencing. A pusher alive but unable to beat for ``STALE_SECONDS`` (its machine suspended,
its process stopped) loses its number: its next beat, or its check before the marker and
``saved_model.pb``, finds its claim gone, and it fails (``ClaimLostError``) without writing
more and without removing anything (the directory is no longer its). But a write it has in
flight at the moment of the removal (a file, a beat, ``saved_model.pb``) can land after it:
gfile has no conditional writes. At worst that leaves an incomplete directory, or a complete
one missing files, under the number of the removed one: below the remover's version, unless
the remover added none.

Between a kill and the next push, the killed push's directory is the highest: TF Serving
(``latest``) keeps serving the version it has loaded for as long as it runs (its
availability-preserving policy never unloads the only loaded version), but once restarted it
tries only that directory, fails, and serves nothing of this model until a push goes above it
(or removes it); ``deeplab-tfx serve`` skips it and serves the newest complete version. A
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
import socket
import threading
import time
import uuid
from typing import Callable, Optional

import tensorflow as tf

from core import artifacts, storage

STAGING_PREFIX = ".staging-"
LOCK_SUFFIX = ".lock"
CLAIM_PREFIX = ".push-"
# The lease of a push on an object store (the module's docstring says why these figures): its
# claim is rewritten this often while it writes, and a version directory without saved_model.pb
# whose newest heartbeat is older than STALE_SECONDS is abandoned.
HEARTBEAT_SECONDS = 30.0
STALE_SECONDS = 600.0
HEARTBEAT = "heartbeat"
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
    clock: Callable[[], float] = time.time,
) -> tuple:
    """Copies SavedModel ``model_dir`` to the next version under ``base_dir``; ``(version, new)``.

    ``source`` names the model artifact; if the newest version came from the same one, nothing
    is copied and ``(that version, False)`` is returned. ``add_files(version_dir)`` may add files
    (the warm-up requests) before the version is complete. Either way the leftovers of killed
    pushes go first. ``clock`` gives the time in seconds since the epoch, for this push's
    heartbeats and for judging other pushes' (object stores); tests set it to a past time to
    play a push killed that long ago.
    """
    if not tf.io.gfile.exists(os.path.join(model_dir, artifacts.SAVED_MODEL_FILE)):
        raise FileNotFoundError(f"{model_dir} is not a SavedModel: it has no {artifacts.SAVED_MODEL_FILE}")
    tf.io.gfile.makedirs(base_dir)
    local = storage.is_local(base_dir)
    numbers = version_numbers(base_dir)
    # Before removing anything: a removed number is not taken again by this push.
    first_free = max(numbers, default=0) + 1
    complete = [v for v in numbers if is_complete(os.path.join(base_dir, str(v)))]
    if local:
        _remove_abandoned_staging(base_dir)
    else:
        _remove_abandoned_versions(base_dir, sorted(set(numbers) - set(complete)), clock())
    if complete and provenance(os.path.join(base_dir, str(complete[-1]))).get("source") == source:
        logging.info("ServingPusher: %s is already version %d; not pushed again", source, complete[-1])
        return complete[-1], False
    if local:
        return _publish_by_rename(model_dir, base_dir, source, add_files, first_free), True
    return _publish_in_place(model_dir, base_dir, source, add_files, first_free, clock), True


def _write_version(
    model_dir: str, version_dir: str, source: str, add_files, before_commit: Callable[[], None] = lambda: None
) -> None:
    """The version's files, in the order readers rely on: all others, the marker, saved_model.pb.

    The marker before ``saved_model.pb``: a concurrent ``push`` that sees the version complete
    reads its marker and must find it whole; written after, it could be missing (a re-run of
    the same model would push a duplicate version) or partly written (unreadable JSON).
    ``before_commit()`` runs before the marker, and may raise to leave the version incomplete.
    """
    storage.copy_tree(model_dir, version_dir, exclude=[artifacts.SAVED_MODEL_FILE])
    if add_files:
        add_files(version_dir)
    before_commit()
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


def _publish_in_place(
    model_dir: str, base_dir: str, source: str, add_files, version: int, clock: Callable[[], float]
) -> int:
    """Object stores: claim the first free number, then write the version there, in order.

    The claimed directory is ours alone (our claim was alone in it), so a write that fails
    takes it away again rather than leave an incomplete highest version behind; unless our
    claim was removed as abandoned, and the directory with it: then it is ours no longer.
    """
    claim = _Claim(clock)
    while not _claim(os.path.join(base_dir, str(version)), claim):
        version += 1
    version_dir = os.path.join(base_dir, str(version))
    claim.start_heartbeat()
    try:
        _write_version(model_dir, version_dir, source, add_files, before_commit=claim.check_held)
    except BaseException:
        claim.stop_heartbeat()
        _remove_failed_version(version_dir, claim)
        raise
    claim.stop_heartbeat()
    tf.io.gfile.remove(claim.path)
    return version


def _remove_failed_version(version_dir: str, claim: "_Claim") -> None:
    """Best effort: the push's own error, re-raised after this, matters more than this one."""
    try:
        if not claim.held():
            logging.error("ServingPusher: %s was removed as abandoned; not touched again", version_dir)
            return
        storage.remove_tree(version_dir)
    except Exception:  # noqa: BLE001 - logged; the push's own error is re-raised
        logging.exception("ServingPusher: could not remove %s, left by a failed push", version_dir)
    else:
        logging.warning("ServingPusher: removed %s, left incomplete by a failed push", version_dir)


class ClaimLostError(RuntimeError):
    """A push's claim was removed as abandoned: its heartbeat went unwritten for ``STALE_SECONDS``."""


class _Claim:
    """A push's claim on a version directory, and its lease: the heartbeat a thread rewrites.

    The thread never writes a claim that is gone (it would bring a removed push back to life);
    it marks the claim lost instead, which ``check_held`` reports before the version is
    committed.
    """

    def __init__(self, clock: Callable[[], float]):
        self.name = f"{CLAIM_PREFIX}{uuid.uuid4().hex}"
        self.path = ""  # set by _claim to the claim in the directory being tried
        self._clock = clock
        self._lost = False
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def content(self) -> str:
        """The heartbeat, and who writes it, for an operator looking at a stuck push."""
        return json.dumps({HEARTBEAT: self._clock(), "host": socket.gethostname(), "pid": os.getpid()})

    def start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat {self.path}", daemon=True)
        self._thread.start()

    def stop_heartbeat(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                content = self.content()  # first: the look and the write as close as they can be
                if not tf.io.gfile.exists(self.path):
                    self._lost = True
                    return
                storage.write_file(self.path, content)
            except Exception:  # noqa: BLE001 - one missed beat; STALE_SECONDS allows many
                logging.exception("ServingPusher: could not renew the claim %s", self.path)

    def held(self) -> bool:
        """Whether the claim is still there: not removed as abandoned."""
        return not self._lost and tf.io.gfile.exists(self.path)

    def check_held(self) -> None:
        if not self.held():
            raise ClaimLostError(
                f"{self.path} was removed as abandoned (no heartbeat for {STALE_SECONDS:.0f} s):"
                f" {os.path.dirname(self.path)} is no longer this push's; nothing more is written there"
            )


def _claim(version_dir: str, claim: _Claim) -> bool:
    """Writes ``claim`` into ``version_dir``; True if nothing else is there, so the number is ours.

    Two pushers that both claim one number cannot both see only their own claim, as long as
    each listing shows the objects written before it; one that sees another's withdraws its
    own claim (so it leaves nothing in a version it does not write) and moves on. The claim
    holds its first heartbeat from the start, so a push is never judged abandoned for want of one.
    """
    if tf.io.gfile.exists(version_dir):
        return False
    tf.io.gfile.makedirs(version_dir)
    claim.path = os.path.join(version_dir, claim.name)
    with tf.io.gfile.GFile(claim.path, "w") as f:
        f.write(claim.content())
    if tf.io.gfile.listdir(version_dir) == [claim.name]:
        return True
    tf.io.gfile.remove(claim.path)
    return False


def _remove_abandoned_versions(base_dir: str, incomplete: list, now: float) -> None:
    """Removes those of the ``incomplete`` versions (no ``saved_model.pb``) whose push is gone.

    Gone: its newest claim's heartbeat, or with no claim its newest file, is more than
    ``STALE_SECONDS`` older than ``now``. Best effort: a leftover left is not this push's
    failure (its version goes above it), and another push may be removing the same.
    """
    for version in incomplete:
        version_dir = os.path.join(base_dir, str(version))
        try:
            seen = set(tf.io.gfile.listdir(version_dir))
            last = _last_sign_of_life(version_dir, now)
            # Complete meanwhile: a push that lost its lease and finished anyway; it stays. Other
            # objects than those judged: another sweep removed it and a new push claimed the
            # number since (a narrow window remains: gfile has no conditional delete).
            if last is None or now - last <= STALE_SECONDS or is_complete(version_dir):
                continue
            if set(tf.io.gfile.listdir(version_dir)) != seen:
                continue
            logging.warning(
                "ServingPusher: removing %s, left without %s by a push gone %.0f s ago",
                version_dir, artifacts.SAVED_MODEL_FILE, now - last,
            )  # fmt: skip
            storage.remove_tree(version_dir)
        except tf.errors.NotFoundError:
            continue  # removed meanwhile, by its push or another
        except Exception:  # noqa: BLE001 - logged; this push goes above it anyway
            logging.exception("ServingPusher: could not judge or remove %s", version_dir)


def _last_sign_of_life(version_dir: str, now: float) -> Optional[float]:
    """When the push writing ``version_dir`` last showed it lives; None if nothing says.

    Its claims' heartbeats (on the pushers' clocks); a directory with none, not ours (another
    tool's push, an empty gap), by its files' modification times on the store's clock, None
    where the store keeps none (``ram://`` says 0) or there are no files.
    """
    claims = [name for name in tf.io.gfile.listdir(version_dir) if name.startswith(CLAIM_PREFIX)]
    if claims:
        return max(_heartbeat(os.path.join(version_dir, name), now) for name in claims)
    times = []
    for directory, _, files in tf.io.gfile.walk(version_dir):
        for name in files:
            try:
                times.append(tf.io.gfile.stat(os.path.join(directory, name)).mtime_nsec / 1e9)
            except tf.errors.NotFoundError:
                continue  # removed meanwhile, or a name ram:// invents (core.storage._walk)
    return max(times) if times and min(times) > 0 else None


def _heartbeat(claim_path: str, now: float) -> float:
    """A claim's heartbeat; ``now`` (fresh) for one gone or unreadable as it is rewritten.

    A claim without a heartbeat (written before claims carried one) counts from its own
    modification time where the store keeps one.
    """
    try:
        return float(json.loads(storage.read_file(claim_path, binary=False))[HEARTBEAT])
    except tf.errors.NotFoundError:
        return now  # rewritten (ram:// removes first) or removed by its push, now complete
    except (ValueError, KeyError, TypeError):
        pass
    try:
        return tf.io.gfile.stat(claim_path).mtime_nsec / 1e9 or now
    except tf.errors.NotFoundError:
        return now


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
