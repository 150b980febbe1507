"""Quiet terminal, complete log file: where a ``deeplab-tfx`` command's output goes.

A pipeline run writes thousands of lines a person does not follow: TFX's INFO dumps of ML
Metadata protos, absl's feature-spec notes, Beam workers' relayed lines, TensorFlow's C++
start-up banners (once per process), library warnings. ``capture`` sends all of that to one
file and keeps the terminal for what the commands print on purpose: the progress lines, the
summary and the errors.

How, and why this way:

- File descriptors 1 and 2 are pointed at the log file (``os.dup2``) before TensorFlow is
  imported. TF's C++ runtime writes its banners to fd 2 at import, some of them (the CUDA
  factory registrations, absl's "before InitializeLog" note) whatever ``TF_CPP_MIN_LOG_LEVEL``
  says; and that variable would drop the lines instead of keeping them, in this process and in
  every Beam worker that inherits it. Redirected, they are kept, in the file. Beam's
  multi_processing workers inherit fds 1 and 2, so what they print lands in the file too, and
  what they log comes back through Beam's logging service into this process's root logger,
  which writes to the file.
- ``sys.stderr`` is the file (warnings, tracebacks, absl's handler); the root logger writes to
  it at INFO (DEBUG with ``-v``).
- ``sys.stdout`` is the terminal, copied into the file: what our commands ``print`` is what a
  person follows (the Trainer's one line per epoch included). Errors meant for the person go
  to ``errors()``: the terminal's stderr, copied into the file.

``-v`` (``verbose=True``) changes nothing but the log level: everything stays on the terminal
and no file is written. This module imports no TensorFlow: it must run before it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import time
from typing import Iterator, Optional, TextIO

LOG_DIR = "logs"  # under the pipeline root
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_errors: Optional[TextIO] = None  # the terminal's stderr while a capture is on


def errors() -> TextIO:
    """Where a message for the person goes: the terminal's stderr (and the log) while
    ``capture`` is on, else ``sys.stderr`` as it is now (pytest's capture included)."""
    return _errors or sys.stderr


def log_path(directory: str, command: str) -> str:
    """``<directory>/<command>-<local time>.log``, a new name for every run."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return os.path.join(directory, f"{command}-{stamp}-{os.getpid()}.log")


def local_log_dir(directory: str) -> str:
    """``directory`` itself when it is on this machine, else a local stand-in: the log is
    written while the run goes (by file descriptors), so it needs a path ``open`` takes; the
    runner copies it to the remote ``directory`` at the end (``publish``)."""
    if "://" not in directory:
        return directory
    return os.path.join(tempfile.gettempdir(), "deeplab-tfx-logs")


class _Tee(io.TextIOBase):
    """A text stream writing to several: the terminal and the log file."""

    def __init__(self, *streams: TextIO):
        super().__init__()
        self._streams = streams

    def write(self, text: str) -> int:
        for stream in self._streams:
            stream.write(text)
            if "\n" in text:
                stream.flush()
        return len(text)

    def flush(self) -> None:
        for stream in self._streams:
            stream.flush()

    def isatty(self) -> bool:
        return self._streams[0].isatty()

    @property
    def encoding(self) -> str:
        return "utf-8"


def _terminal(stream: TextIO) -> TextIO:
    """A stream to what ``stream`` writes to now, that survives fds 1 and 2 being redirected:
    a copy of its file descriptor, or the object itself when it has none (pytest's capsys)."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return stream
    stream.flush()
    return open(os.dup(fd), "w", buffering=1, encoding="utf-8", errors="replace")


@contextlib.contextmanager
def capture(directory: str, command: str, verbose: bool = False) -> Iterator[Optional[str]]:
    """Sends everything but what is printed on purpose to ``<directory>/<command>-<time>.log``
    while the block runs; yields the log's path (``None`` when ``verbose``).

    Everything is put back on exit (file descriptors, ``sys.stdout``/``sys.stderr``, the root
    logger's handlers and level), so that a command run in-process (tests) leaves no trace.
    """
    root = logging.getLogger()
    saved_level, saved_handlers = root.level, root.handlers[:]
    if verbose:
        logging.basicConfig(level=logging.DEBUG, format=_FORMAT)
        try:
            yield None
        finally:
            root.handlers[:] = saved_handlers
            root.setLevel(saved_level)
        return
    global _errors
    os.makedirs(directory, exist_ok=True)
    path = log_path(directory, command)
    # O_APPEND: this process's fds, its Python streams and the Beam workers all write at the end.
    log = open(path, "a", buffering=1, encoding="utf-8", errors="replace")
    saved_streams = sys.stdout, sys.stderr
    out, err = _terminal(sys.stdout), _terminal(sys.stderr)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved_fds = [os.dup(1), os.dup(2)]
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    sys.stdout, sys.stderr = _Tee(out, log), log
    _errors = _Tee(err, log)
    handler = logging.StreamHandler(log)
    handler.setFormatter(logging.Formatter(_FORMAT))
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    try:
        yield path
    except BaseException:
        # A crash: the trace to the file, and the file's name to the person (the trace follows
        # on the terminal as Python prints it).
        logging.getLogger(__name__).exception("deeplab-tfx %s failed", command)
        print(f"deeplab-tfx {command}: failed; full log in {path}", file=_errors, flush=True)
        raise
    finally:
        for stream in (sys.stdout, sys.stderr, _errors):
            stream.flush()
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        sys.stdout, sys.stderr = saved_streams
        _errors = None
        for fd, saved in zip((1, 2), saved_fds, strict=True):
            os.dup2(saved, fd)
            os.close(saved)
        for stream in (out, err):
            if stream not in saved_streams:
                stream.close()
        log.close()


def publish(path: str, directory: str) -> str:
    """Copies a log written locally to ``directory`` when that is remote; returns where it is."""
    if not path or "://" not in directory:
        return path
    import tensorflow as tf  # only now: capture must run before TensorFlow is imported

    from core import storage  # imports TensorFlow too

    target = os.path.join(directory, os.path.basename(path))
    tf.io.gfile.makedirs(directory)
    storage.replace_file(path, target)
    return target
