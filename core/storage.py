"""What ``tf.io.gfile`` lacks, once: recursive copy, whole files, "is this local", locks.

Every read and write of an artifact URI, a serving directory or a report directory goes through
``tf.io.gfile`` (TFX's ``fileio`` is the same layer), so one code path serves local disk,
``gs://`` and, in tests, ``ram://`` (TF's in-memory filesystem, which like an object store has
no atomic directory rename). ``s3://`` only once ``tensorflow-io`` is installed and imported in
every process that touches it: TF 2.16 itself answers ``UnimplementedError: File system scheme
's3' not implemented``, and this project neither installs nor tests it. gfile has no recursive
copy, does not say which guarantees a filesystem gives, and has no locks; those helpers are here
and nowhere else, and so are whole-file reads and writes (``read_file``, ``write_file``,
``replace_file``), so that every writer gets the same guarantees and the same workarounds.

Cheap to import (TensorFlow aside): ``serving/`` uses it, and should not import TFX for a copy
(``tfx.utils.io_utils.copy_dir`` also deletes the destination first, which a publish must not).
"""

import contextlib
import fcntl
import os
import uuid
from typing import Callable, Iterable, Iterator

import tensorflow as tf

# TF's in-memory filesystem, the tests' object store.
RAM_SCHEME = "ram://"
# Where Vertex AI (and anyone following its convention) mounts Cloud Storage with gcsfuse: a
# plain path to the OS, an object store underneath (no atomic directory rename, no flock).
GCSFUSE_ROOT = "/gcs/"


def is_local(path: str) -> bool:
    """True where ``path`` is taken to be this machine's disk, with POSIX semantics.

    There ``rename(2)`` of a directory is atomic and ``flock(2)`` works. Object stores
    (``gs://``; ``s3://`` with tensorflow-io) have neither: gfile's rename of a directory copies
    object by object, and nothing there can be created "only if absent". Callers choose how to
    publish from this, so an unsure answer must be False, the safe side: any ``scheme://`` URI
    (``file://`` included) and paths under ``/gcs/`` (Cloud Storage mounted by gcsfuse, as on
    Vertex AI) are not local. Every other plain path is assumed to be a local filesystem; one
    that is an NFS or other FUSE mount without atomic rename and working ``flock`` is the
    user's to avoid (give the ``gs://`` URI instead of its mount).
    """
    if "://" in path:
        return False
    return not (path + "/").startswith(GCSFUSE_ROOT)


def _write_over(path: str, write: Callable[[str], None]) -> None:
    """``write(path)``, replacing a file already at ``path``: every write in this module ends here.

    TF 2.16's ``ram://`` filesystem appends when a file that exists is written again, with
    ``GFile(path, "w")`` and with ``tf.io.gfile.copy(..., overwrite=True)`` alike (measured:
    writing "long" then "short" reads "longshort"), so there the file is removed first. Real
    object stores and local disk replace a file whole; nothing is removed there.
    """
    if path.startswith(RAM_SCHEME) and tf.io.gfile.exists(path):
        tf.io.gfile.remove(path)
    write(path)


def copy_tree(src: str, dst: str, exclude: Iterable[str] = ()) -> None:
    """Copies directory ``src`` into ``dst`` (created if missing), in sorted order.

    Args:
      src: the directory to copy.
      dst: where its files go: ``src/a/b`` becomes ``dst/a/b``. A file already at a target is
        replaced by ``src``'s (not atomically: a reader may see it partly written; publish with
        ``replace_file`` where that matters); files in ``dst`` that ``src`` lacks are kept.
      exclude: paths relative to ``src`` not to copy, for a caller that copies them itself,
        later: TF Serving takes ``saved_model.pb`` as the sign that a version is complete, so a
        publisher copies it last.
    """
    src, skip = src.rstrip("/"), set(exclude)
    for directory, _, files in _walk(src):
        relative = directory[len(src) :].strip("/")
        target = os.path.join(dst, relative) if relative else dst
        tf.io.gfile.makedirs(target)
        for name in sorted(files):
            if os.path.join(relative, name) not in skip:
                _copy(os.path.join(directory, name), os.path.join(target, name))


def _walk(top: str) -> Iterator[tuple]:
    """``tf.io.gfile.walk`` without the files TF 2.16's ``ram://`` filesystem invents: it lists
    ``d/x.y/f`` as a child ``.y`` of ``d/x`` too (a prefix match, measured with a SavedModel's
    ``assets/`` beside ``assets.extra/``), which exists nowhere. Other filesystems list right."""
    for directory, subdirs, files in tf.io.gfile.walk(top):
        if top.startswith(RAM_SCHEME):
            files = [f for f in files if tf.io.gfile.exists(os.path.join(directory, f))]
        yield directory, subdirs, files


def _copy(src: str, dst: str) -> None:
    _write_over(dst, lambda path: tf.io.gfile.copy(src, path, overwrite=True))


def _write_whole(path: str, write: Callable[[str], None]) -> None:
    """``write`` a file to ``path`` so that a reader of ``path`` sees the old file or the new one, whole.

    Locally the file is written beside ``path`` under a hidden name and renamed over it
    (``rename(2)`` is atomic). On an object store writing in place already is: an object
    appears only once its upload (or server-side copy) completes, and replaces the old one in
    one step.
    """
    if not is_local(path):
        _write_over(path, write)
        return
    partial = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.partial-{uuid.uuid4().hex}")
    try:
        write(partial)
        tf.io.gfile.rename(partial, path, overwrite=True)
    finally:
        if tf.io.gfile.exists(partial):
            tf.io.gfile.remove(partial)


def replace_file(src: str, dst: str) -> None:
    """Copies ``src`` over ``dst`` so that a reader of ``dst`` sees the old file or the new one, whole."""
    _write_whole(dst, lambda path: _copy(src, path))


def write_file(path: str, data) -> None:
    """Writes ``data`` (bytes or text) to ``path`` so that a reader sees the old file or the new
    one, whole, never a part: a file rewritten as work goes on (``history.json`` after every
    epoch) must survive a kill mid-write, and a page must never be read half-published.
    """
    mode = "wb" if isinstance(data, bytes) else "w"

    def write(target: str) -> None:
        with tf.io.gfile.GFile(target, mode) as f:
            f.write(data)

    _write_whole(path, write)


def read_file(path: str, binary: bool = True):
    """The whole file at ``path`` (bytes, or text with ``binary=False``)."""
    with tf.io.gfile.GFile(path, "rb" if binary else "r") as f:
        return f.read()


def remove_tree(path: str) -> None:
    """Removes directory ``path`` and everything under it; nothing if it is absent.

    On ``ram://`` (tests) deepest directory first, in reverse order of their paths: there
    ``rmtree`` of ``d/x`` fails on the child that ``d/x.y`` makes it list (``_walk``), unless
    ``d/x.y`` has gone first, and ``d/x.y`` sorts after ``d/x``.
    """
    if not tf.io.gfile.exists(path):
        return
    if path.startswith(RAM_SCHEME):
        for directory in sorted((d for d, _, _ in tf.io.gfile.walk(path)), reverse=True):
            tf.io.gfile.rmtree(directory)
    else:
        tf.io.gfile.rmtree(path)


@contextlib.contextmanager
def exclusive_lock(path: str, wait: bool = True) -> Iterator[bool]:
    """Holds an exclusive ``flock`` on the local file ``path`` for the block, then removes the file.

    The kernel releases a flock when its holder's process ends, however it ends (an exception,
    SIGKILL, the OOM killer), and no sooner. So "I can take this lock" proves that the process
    which held it is gone: a directory guarded by it may be removed, and one whose lock is held
    belongs to a process still working. That is what a timestamp or a PID file cannot prove.
    Local disk only (``is_local``): object stores have no locks.

    Args:
      path: the lock file; created if missing, removed (by whoever holds it) when released.
      wait: block until the lock is free; if False and another process holds it, the block runs
        at once, holding nothing.

    Yields:
      Whether the lock is held.
    """
    fd = _lock(path, wait)
    try:
        yield fd is not None
    finally:
        if fd is not None:
            # Still the file we locked (_lock checked, and only a holder removes it): remove it
            # before releasing, so a waiter never takes a lock on a file about to disappear.
            os.remove(path)
            os.close(fd)


def _lock(path: str, wait: bool):
    """An fd holding the flock of the file now at ``path``; None if held elsewhere and not ``wait``."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                return fd
        except FileNotFoundError:
            pass
        # The previous holder removed the file between our open and our lock: lock a fresh one.
        os.close(fd)
