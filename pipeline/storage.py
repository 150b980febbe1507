"""What ``tf.io.gfile`` lacks, once: recursive copy, whole-file replace, "is this local", locks.

Every read and write of an artifact URI, a serving directory or a report directory goes through
``tf.io.gfile`` (TFX's ``fileio`` is the same layer), so one code path serves local disk,
``gs://``, ``s3://`` and, in tests, ``ram://`` (TF's in-memory filesystem, which like an object
store has no atomic directory rename). gfile has no recursive copy, does not say which
guarantees a filesystem gives, and has no locks; those helpers are here and nowhere else.

Cheap to import (TensorFlow aside): ``serving/`` uses it, and should not import TFX for a copy
(``tfx.utils.io_utils.copy_dir`` also deletes the destination first, which a publish must not).
"""

import contextlib
import fcntl
import os
import uuid
from typing import Iterable, Iterator

import tensorflow as tf

# TF's in-memory filesystem, the tests' object store. In TF 2.16 writing a file that exists there
# appends to it instead of replacing it (measured: "long" then "short" reads "longshort"), so a
# file is removed before it is replaced there. Real object stores replace objects whole.
RAM_SCHEME = "ram://"


def is_local(path: str) -> bool:
    """True for a plain path (no ``scheme://``): this machine's disk.

    There ``rename(2)`` of a directory is atomic and ``flock(2)`` works. Object stores
    (``gs://``, ``s3://``) have neither: gfile's rename of a directory copies object by object,
    and nothing there can be created "only if absent". Callers choose how to publish from this;
    a ``file://`` URI counts as remote, which is the safe side.
    """
    return "://" not in path


def copy_tree(src: str, dst: str, exclude: Iterable[str] = ()) -> None:
    """Copies directory ``src`` into ``dst`` (created if missing), in sorted order.

    Args:
      src: the directory to copy.
      dst: where its files go: ``src/a/b`` becomes ``dst/a/b``; existing files are replaced.
      exclude: paths relative to ``src`` not to copy, for a caller that copies them itself,
        later: TF Serving takes ``saved_model.pb`` as the sign that a version is complete, so a
        publisher copies it last.
    """
    src, skip = src.rstrip("/"), set(exclude)
    for directory, _, files in tf.io.gfile.walk(src):
        relative = directory[len(src) :].strip("/")
        target = os.path.join(dst, relative) if relative else dst
        tf.io.gfile.makedirs(target)
        for name in sorted(files):
            if os.path.join(relative, name) not in skip:
                tf.io.gfile.copy(os.path.join(directory, name), os.path.join(target, name), overwrite=True)


def replace_file(src: str, dst: str) -> None:
    """Copies ``src`` over ``dst`` so that a reader of ``dst`` sees the old file or the new one, whole.

    Locally the copy is written beside ``dst`` under a hidden name and renamed over it
    (``rename(2)`` is atomic). On an object store a plain copy already is: an object appears only
    once its upload (or server-side copy) completes, and replaces the old one in one step.
    """
    if not is_local(dst):
        if dst.startswith(RAM_SCHEME) and tf.io.gfile.exists(dst):
            tf.io.gfile.remove(dst)
        tf.io.gfile.copy(src, dst, overwrite=True)
        return
    partial = os.path.join(os.path.dirname(dst), f".{os.path.basename(dst)}.partial-{uuid.uuid4().hex}")
    try:
        tf.io.gfile.copy(src, partial, overwrite=True)
        tf.io.gfile.rename(partial, dst, overwrite=True)
    finally:
        if tf.io.gfile.exists(partial):
            tf.io.gfile.remove(partial)


def remove_tree(path: str) -> None:
    """Removes directory ``path`` and everything under it; nothing if it is absent."""
    if tf.io.gfile.exists(path):
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
