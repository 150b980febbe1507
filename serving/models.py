"""The versions of one model under a TF Serving base path: loading, warm-up, hot swap, lookup.

Policy as TF Serving's default (``latest``): serve the newest integer version. A poller loads a
newer version completely (SavedModel, then the warm-up requests of its
``assets.extra/tf_serving_warmup_requests``) before it becomes the one requests get, then drops
the old one. A request holds its own reference to the version it started on, so a swap never
fails a request in flight: "load new, then unload old".

Only complete versions are candidates (``layout.versions``: ``saved_model.pb``, written last, is
there). On an object store a version is written in place, so an integer directory may be
half-written for a while, or, if its pusher was killed, until a later push removes it
(``layout.STALE_SECONDS`` after its last heartbeat); TF Serving tries such a directory and
retries, this server does not try it until it is complete. Nor does it remove one: a server
only reads (it may hold read-only access to the bucket; its replicas, each with its own clock,
would each judge a lease), pushes write. All reads go through ``tf.io.gfile`` (``tf.saved_model.load``
does too), so ``--model-base-path`` may be ``gs://``.
"""

import dataclasses
import logging
import os
import re
import threading
import time
from typing import Callable, Dict, Optional

import numpy as np
import tensorflow as tf

from core import artifacts, dataset_spec
from core.signatures import SERVING_DEFAULT
from serving import layout, warmup

LOADING, AVAILABLE, UNLOADING, END = "LOADING", "AVAILABLE", "UNLOADING", "END"


class ServingError(Exception):
    """A request the server refuses; ``code`` is a ``grpc.StatusCode`` name."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


# TF's canonical error codes are gRPC's (same numbers, same names): TF Serving answers a failed
# session run with the run's own status, and so do we.
_STATUS_NAMES = (
    "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
    "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
)  # fmt: skip
_STATUS_OF_TF_CODE = {getattr(tf.errors, name): name for name in _STATUS_NAMES}
# Lines of TF's message that frame the reason: the eager wrapper, the node, a v1 session's
# count of root errors; then, indented, the traceback of where the node was defined (or
# "<stack traces unavailable>" for a loaded SavedModel) and the node's name.
_FRAME_LINE = re.compile(
    r"^(Graph execution error:|Detected at node|<stack traces unavailable>|\d+ root error)"
)
_ROOT_ERROR = re.compile(r"^\s*\(\d+\) [A-Z_]+: ")  # a v1 session's "  (0) INVALID_ARGUMENT: "
_FRAME_AROUND = (
    re.compile(r"^\{\{function_node [^}]*\}\}\s*"),  # the function an op ran in
    re.compile(r"\s*\[\[\{\{node [^}]*\}\}\]\]$"),
    re.compile(r"\s*\[Op:[^\]]*\]( name:\s*\S*)?$"),  # an eager op's, with its name (often none)
)
# tf.debugging.Assert's wording around the signature's own message, graph and eager.
_ASSERTION = re.compile(r"^(?:assertion failed: \[|.*Summarized data: b')(.*?)(?:\]|')$")
# TF's parse error quotes the whole serialized input: 20 KB of it overflow gRPC's 8 KB metadata
# limit (the client gets RESOURCE_EXHAUSTED instead of the reason), and its bytes are not text.
MAX_REASON_CHARS = 300


def error_reason(message: str) -> str:
    """The line of a TF error message that says what went wrong, without TF's framing.

    A signature's error reaches Python as "Graph execution error:", the node, a traceback of
    where the node was defined, then the reason; the first line alone says nothing.
    """
    for line in message.splitlines():
        line = _ROOT_ERROR.sub("", line)
        if not line.strip() or line[0].isspace() or _FRAME_LINE.match(line):
            continue
        for frame in _FRAME_AROUND:
            line = frame.sub("", line.strip())
        assertion = _ASSERTION.match(line)
        return assertion.group(1) if assertion else line
    return message.strip()


def model_error(error: tf.errors.OpError, where: str = "") -> ServingError:
    """TF's error from calling a signature -> what a client is told: the gRPC status of TF's own
    code (INVALID_ARGUMENT, RESOURCE_EXHAUSTED, ...) and the reason, after ``where`` (the image)
    when the reason does not name it already. The one mapping: gRPC answers with it, REST maps
    the code to an HTTP status (``serving/rest.py``).
    """
    reason = error_reason(error.message)
    if where and not reason.startswith(where):
        reason = f"{where}: {reason}"
    return ServingError(_STATUS_OF_TF_CODE.get(error.error_code, "UNKNOWN"), short_reason(reason))


def short_reason(reason: str) -> str:
    """``reason`` fit for a gRPC status or a JSON error: non-printable characters escaped as
    ``repr`` does, and cut to ``MAX_REASON_CHARS`` with the length that was cut, since TF's
    messages can quote a client's whole input.
    """
    printable = "".join(c if c.isprintable() else repr(c)[1:-1] for c in reason)
    if len(printable) <= MAX_REASON_CHARS:
        return printable
    return f"{printable[:MAX_REASON_CHARS]}... ({len(printable)} characters)"


@dataclasses.dataclass
class Servable:
    version: int
    path: str
    signatures: Dict[str, Callable]
    module: object  # keeps the loaded SavedModel (and its variables) alive
    # The classes the version predicts (its artifacts.MODEL_SPEC_FILE; VOC's for older models).
    dataset: dataset_spec.DatasetSpec


def load_servable(path: str, version: int) -> Servable:
    module = tf.saved_model.load(path)
    return Servable(version, path, dict(module.signatures), module, dataset_spec.of_model(path))


# Class names shown when a version loads; a 150-class dataset's would fill the terminal.
SHOWN_CLASS_NAMES = 25


def describe_classes(servable: Servable) -> str:
    """``dataset 'cihp', 20 classes: background, hat, ...``, as a served version's classes are
    nowhere in TF Serving's API (``GetModelMetadata`` answers the signatures only)."""
    spec = servable.dataset
    names = ", ".join(spec.class_names[:SHOWN_CLASS_NAMES])
    if spec.num_classes > SHOWN_CLASS_NAMES:
        names += f" and {spec.num_classes - SHOWN_CLASS_NAMES} more"
    where = (
        ""
        if tf.io.gfile.exists(os.path.join(servable.path, artifacts.MODEL_SPEC_FILE))
        else (f" (no {artifacts.MODEL_SPEC_FILE}: a model exported before models carried their classes)")
    )
    return f"dataset {spec.name!r}, {spec.num_classes} classes: {names}{where}"


def replay_warmup(servable: Servable, call: Callable) -> int:
    """Sends the version's warm-up requests through ``call(servable, signature, inputs)``."""
    if not tf.io.gfile.exists(os.path.join(servable.path, warmup.WARMUP_FILE)):
        return 0
    logs = warmup.read(servable.path)
    for log in logs:
        request = log.predict_log.request
        inputs = {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}
        call(servable, request.model_spec.signature_name or SERVING_DEFAULT, inputs)
    return len(logs)


class ModelVersions:
    """Serves the newest version under ``base_path`` and follows new pushes."""

    def __init__(self, name: str, base_path: str, warm: Callable, poll_seconds: float = 1.0):
        self.name = name
        self.base_path = base_path
        self._warm = warm
        self._poll_seconds = poll_seconds
        self._lock = threading.Lock()
        self._current: Optional[Servable] = None
        self._states: Dict[int, str] = {}
        self._failed: Dict[int, str] = {}
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self, wait_seconds: float = 0.0) -> None:
        """Loads the newest version (waiting up to ``wait_seconds`` for one), then polls."""
        deadline = time.time() + wait_seconds
        while not self.poll() and time.time() < deadline:
            time.sleep(min(self._poll_seconds, 0.5))
        if self._current is None:
            raise FileNotFoundError(
                f"no loadable version (an integer directory with saved_model.pb) under {self.base_path}"
            )
        self._thread = threading.Thread(target=self._run, name=f"poll-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._poll_seconds):
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - keep serving the loaded version whatever happens
                logging.exception("polling %s failed", self.base_path)

    def poll(self) -> bool:
        """Loads the newest complete version if it is newer than the served one; True if one is served."""
        versions = layout.versions(self.base_path)
        current = self._current.version if self._current else 0
        newest = versions[-1] if versions else 0
        if newest > current and newest not in self._failed:
            self._load(newest)
        return self._current is not None

    def _load(self, version: int) -> None:
        path = os.path.join(self.base_path, str(version))
        self._states[version] = LOADING
        start = time.time()
        try:
            servable = load_servable(path, version)
            warmed = self._warm(servable)
        except Exception as e:  # noqa: BLE001 - a broken version must not take the server down
            self._failed[version] = f"{type(e).__name__}: {e}"
            self._states[version] = END
            logging.error(
                "model %s version %d failed to load, still serving the previous: %s", self.name, version, e
            )
            return
        with self._lock:
            old, self._current = self._current, servable
            self._states[version] = AVAILABLE
            if old:
                self._states[old.version] = END  # requests still holding it finish on it
        logging.info(
            "model %s version %d AVAILABLE (loaded and %d warm-up requests in %.1f s); %s",
            self.name, version, warmed, time.time() - start, describe_classes(servable),
        )  # fmt: skip

    def get(self, version: Optional[int] = None) -> Servable:
        """The served version, or ``version`` if it is the one being served."""
        servable = self._current
        if servable is None:
            raise ServingError("UNAVAILABLE", f"model {self.name!r} has no version loaded yet")
        if version and version != servable.version:
            raise ServingError(
                "NOT_FOUND",
                f"model {self.name!r} version {version} is not being served (serving {servable.version})",
            )
        return servable

    def states(self, version: Optional[int] = None) -> Dict[int, tuple]:
        """``{version: (state, error message)}``; only ``version`` if given (NOT_FOUND if unknown)."""
        found = {v: (s, self._failed.get(v, "")) for v, s in sorted(self._states.items())}
        if version:
            if version not in found:
                raise ServingError("NOT_FOUND", f"model {self.name!r} has no version {version}")
            return {version: found[version]}
        return found


def check_inputs(signature: Callable, inputs: Dict[str, np.ndarray], signature_name: str) -> dict:
    """Validates names, dtypes and shapes against the signature; returns tensors to call it with."""
    _, specs = signature.structured_input_signature
    missing, unknown = sorted(set(specs) - set(inputs)), sorted(set(inputs) - set(specs))
    if missing or unknown:
        raise ServingError(
            "INVALID_ARGUMENT",
            f"signature {signature_name!r} takes inputs {sorted(specs)}; "
            + (f"missing {missing}" if missing else "")
            + ("; " if missing and unknown else "")
            + (f"unknown {unknown}" if unknown else ""),
        )
    tensors = {}
    for name, spec in specs.items():
        value = inputs[name]
        if tf.as_dtype(value.dtype) != spec.dtype and not (spec.dtype == tf.string and value.dtype == object):
            raise ServingError(
                "INVALID_ARGUMENT",
                f"input {name!r} must be {spec.dtype.name}, got {tf.as_dtype(value.dtype).name}",
            )
        if not spec.shape.is_compatible_with(value.shape):
            raise ServingError(
                "INVALID_ARGUMENT", f"input {name!r} must have shape {spec.shape}, got {value.shape}"
            )
        try:
            tensors[name] = tf.constant(value, dtype=spec.dtype)
        except (ValueError, TypeError) as e:
            message = f"input {name!r} cannot be a {spec.dtype.name} tensor: {e}"
            raise ServingError("INVALID_ARGUMENT", message) from e
    return tensors
