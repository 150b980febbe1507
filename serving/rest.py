"""TF Serving's REST API in front of the server's ``Predictor``: ``/v1/models/<name>[/versions/<n>]``
(status) and ``...:predict``, with TF Serving's JSON encoding and its refusals.

Hardened against hostile and busy clients (issue 17), each case tested in
tests/test_rest_front_end.py:

- A malformed body is a client error: 400 with what is wrong and where (``instances[2]``), never
  500. TF Serving's own wording where it has one, so a client written against it reads the same.
- ``Content-Length`` must be one non-negative integer (a negative one used to read to the end of
  the stream, past ``--max-request-mb``); without it, 411.
- An oversized body is answered 413 and then read and discarded (up to ``DISCARD_LIMIT_BYTES``)
  before the connection closes: closing with unread data makes the kernel send a reset, and a
  client still sending its body sees a broken pipe instead of the answer.
- Each connection holds a thread, so receiving a request has a deadline: the whole request line,
  headers and body within ``timeout_s`` (each read waits only for what is left of it). A socket
  timeout alone bounds each read, and a client sending one byte just under it held a thread for
  as long as it liked. Past the deadline a request whose headers have arrived is answered 408;
  one still in its headers is dropped without an answer (there is no request to answer yet).
- Predictions run at most ``workers`` at a time (the gRPC server's pool size): a thread per
  connection would otherwise run as many as there are clients, each slower for the others. A
  request that finds no free slot within ``busy_wait_s`` is answered 503 UNAVAILABLE at once,
  so a flood gets quick refusals (which ``deeplab-tfx predict`` retries) instead of a pile-up.
- The listen queue is as long as the system allows: socketserver's default of 5 made 1-3 of 20
  clients arriving together wait a SYN retransmission (1 s) or fail.

An image the signature refused on its own row (``error``: ``trainer/export.py``) is answered
400 with the reason naming it by its index in the request (the ``Predictor``'s
INVALID_ARGUMENT), also when the server's batching merged the request with others', which are
answered 200; a served request's rows carry ``"error": ""``, as TF Serving answers every output.
"""

import base64
import binascii
import contextlib
import io
import json
import logging
import re
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from core.signatures import SERVING_DEFAULT
from serving.models import ServingError

# To receive a whole request (and for each write of the answer). TF Serving's
# --rest_api_timeout_in_ms has the same 30 s default, but it bounds processing a call, not
# receiving it: TF Serving reads requests with its own HTTP server's limits.
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_BUSY_WAIT_S = 1.0
DISCARD_LIMIT_BYTES = 64 << 20
INSTANCES, INPUTS = "instances", "inputs"
B64 = "b64"
BYTES_SUFFIX = "_bytes"  # TF Serving answers string outputs named so as {"b64": ...}

_PATH = re.compile(r"^/v1/models/([^/:]+)(?:/versions/(\d+))?(:predict)?$")
_CONTENT_LENGTH = re.compile(r"^[0-9]{1,18}$")
# gRPC status -> HTTP status: google.rpc's canonical mapping, which TF Serving's REST API uses.
_HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "NOT_FOUND": 404,
    "RESOURCE_EXHAUSTED": 429,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}
_INVALID = "INVALID_ARGUMENT"


class HttpError(Exception):
    """A refusal of the HTTP exchange itself (length, size), before there is a request to judge.

    ``discard``: body bytes to read and drop after the answer, so that a client still sending
    them reads the answer instead of a reset.
    """

    def __init__(self, status: int, message: str, discard: int = 0):
        super().__init__(message)
        self.status = status
        self.discard = discard


# Request: JSON -> numpy


def _json_type(value) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def _is_b64(value) -> bool:
    return isinstance(value, dict) and set(value) == {B64}


def _is_named(value) -> bool:
    """A row or ``inputs`` given as ``{input name: value}`` (a ``{"b64": ...}`` is one value)."""
    return isinstance(value, dict) and not _is_b64(value)


def _from_json(value, where: str):
    """One value in TF Serving's REST encoding: ``{"b64": ...}`` and strings are bytes; lists nest."""
    if isinstance(value, list):
        return [_from_json(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if _is_b64(value):
        if not isinstance(value[B64], str):
            raise ServingError(_INVALID, f"{where}.b64 must be a base64 string, got {_json_type(value[B64])}")
        try:
            return base64.b64decode("".join(value[B64].split()), validate=True)
        except (binascii.Error, ValueError) as e:
            raise ServingError(_INVALID, f"{where}.b64 is not base64: {e}") from e
    if isinstance(value, str):
        return value.encode()
    if value is None or isinstance(value, dict):
        raise ServingError(
            _INVALID, f'{where} is {_json_type(value)}: a value is a number, a string or {{"b64": ...}}'
        )
    return value


def _array(values, where: str) -> np.ndarray:
    """One input as the array the signature is called with: bytes as objects, numbers as numbers."""
    try:
        array = np.array(values, dtype=object)
    except ValueError as e:
        raise ServingError(_INVALID, f"{where} is not a rectangular array: {e}") from e
    leaves = array.reshape(-1)
    if any(isinstance(v, list) for v in leaves):
        raise ServingError(_INVALID, f"{where} is ragged: the lists at each depth must have one length")
    if leaves.size and all(isinstance(v, bytes) for v in leaves):
        return array
    if all(isinstance(v, (bool, int, float)) for v in leaves):
        return np.array(values)
    raise ServingError(_INVALID, f"{where} mixes strings and numbers")


def _sole_input(signature_inputs: Callable[[], List[str]], key: str) -> str:
    names = signature_inputs()
    if len(names) != 1:
        raise ServingError(
            _INVALID,
            f"{key} holds bare values, but the signature takes inputs {names}: "
            "send objects with one key per input",
        )
    return names[0]


def _rows(instances, signature_inputs: Callable[[], List[str]]) -> Dict[str, np.ndarray]:
    if not isinstance(instances, list):
        raise ServingError(_INVALID, f"'{INSTANCES}' must be a list, got {_json_type(instances)}")
    if not instances:
        raise ServingError(_INVALID, f"No values in '{INSTANCES}' array")
    if not _is_named(instances[0]):
        for i, row in enumerate(instances):
            if _is_named(row):
                raise ServingError(_INVALID, f"{INSTANCES}[{i}] is an object but {INSTANCES}[0] is not")
        name = _sole_input(signature_inputs, INSTANCES)
        return {name: _array(_from_json(instances, INSTANCES), INSTANCES)}
    keys = sorted(instances[0])
    columns = {key: [] for key in keys}
    for i, row in enumerate(instances):
        if not _is_named(row) or sorted(row) != keys:
            got = f"keys {sorted(row)}" if _is_named(row) else _json_type(row)
            raise ServingError(
                _INVALID,
                f"{INSTANCES}[{i}] has {got} but {INSTANCES}[0] has keys {keys}: "
                "every instance needs the same keys",
            )
        for key in keys:
            columns[key].append(_from_json(row[key], f"{INSTANCES}[{i}][{key!r}]"))
    return {key: _array(values, f"{INSTANCES}[*][{key!r}]") for key, values in columns.items()}


def _columns(inputs, signature_inputs: Callable[[], List[str]]) -> Dict[str, np.ndarray]:
    if not _is_named(inputs):
        return {_sole_input(signature_inputs, INPUTS): _array(_from_json(inputs, INPUTS), INPUTS)}
    return {
        key: _array(_from_json(value, f"{INPUTS}[{key!r}]"), f"{INPUTS}[{key!r}]")
        for key, value in inputs.items()
    }


def rest_inputs(body: dict, signature_inputs: Callable[[], List[str]]) -> Tuple[Dict[str, np.ndarray], bool]:
    """The request's inputs as numpy arrays, and whether it was columnar (answered as ``outputs``).

    ``{"instances": [...]}`` is TF Serving's row format: one object per example with every input,
    or bare values when the signature has one input (``signature_inputs()`` names them; called
    only then). ``{"inputs": ...}`` is the columnar format: an object of whole inputs, or one bare
    value. Both at once is ambiguous, and TF Serving refuses it with the message used here.
    """
    if INSTANCES in body and INPUTS in body:
        raise ServingError(
            _INVALID,
            f"Not formatted correctly expecting only one of '{INPUTS}' or '{INSTANCES}' keys to exist",
        )
    if INSTANCES in body:
        return _rows(body[INSTANCES], signature_inputs), False
    if INPUTS in body:
        return _columns(body[INPUTS], signature_inputs), True
    raise ServingError(_INVALID, f"Missing '{INPUTS}' or '{INSTANCES}' key")


# Response: numpy -> JSON


def _to_json(value, name: str):
    """TF Serving's encoding of an output: strings named ``*_bytes`` as ``{"b64": ...}``, others as text."""
    if name.endswith(BYTES_SUFFIX):
        encode = lambda b: {B64: base64.b64encode(b).decode()}  # noqa: E731
    else:
        encode = lambda b: b.decode("utf-8", "replace")  # noqa: E731
    if isinstance(value, bytes):  # one example's string: np.asarray would drop its trailing NULs
        return encode(value)
    array = np.asarray(value)
    if array.dtype != object and array.dtype.kind != "S":
        return array.tolist()
    return np.vectorize(encode, otypes=[object])(array).tolist()


def rest_outputs(outputs: Dict[str, np.ndarray], columnar: bool) -> dict:
    """``{"predictions": [one object per example]}`` for row requests, ``{"outputs": ...}`` for columnar."""
    if columnar:
        encoded = {name: _to_json(value, name) for name, value in outputs.items()}
        return {"outputs": next(iter(encoded.values())) if len(encoded) == 1 else encoded}
    sizes = {name: len(value) for name, value in outputs.items()}
    if len(set(sizes.values())) != 1:
        raise ServingError(
            _INVALID, f"the outputs have different batch sizes {sizes}: ask in the columnar '{INPUTS}' format"
        )
    n = next(iter(sizes.values()))
    return {
        "predictions": [{name: _to_json(value[i], name) for name, value in outputs.items()} for i in range(n)]
    }


# HTTP


def _signature_inputs(predictor, name: str, version: Optional[int], signature_name: str) -> List[str]:
    servable = predictor.model(name).get(version)
    signature_name = signature_name or SERVING_DEFAULT
    if signature_name not in servable.signatures:
        raise ServingError(_INVALID, f"no signature {signature_name!r} (has {sorted(servable.signatures)})")
    return sorted(servable.signatures[signature_name].structured_input_signature[1])


class DeadlineReader(io.RawIOBase):
    """A connection's reads, each allowed only what is left of the time to receive the request.

    Under ``io.BufferedReader`` (the handler's ``rfile``), so ``readline`` and ``read(n)``, made
    of many ``recv`` calls, are bounded as a whole. The socket's timeout is put back after each
    read: it is also the timeout of each write of the answer.
    """

    def __init__(self, sock: socket.socket, timeout_s: float):
        self.sock = sock
        self.timeout_s = timeout_s
        self.deadline = time.monotonic() + timeout_s

    def restart(self) -> None:
        """A new request: the whole of ``timeout_s`` again."""
        self.deadline = time.monotonic() + self.timeout_s

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out")  # as the socket says it: the handler answers 408
        self.sock.settimeout(left)
        try:
            return self.sock.recv_into(buffer)
        finally:
            self.sock.settimeout(self.timeout_s)


class Slots:
    """At most ``count`` predictions at once; a request that waits ``wait_s`` for one gets 503."""

    def __init__(self, count: int, wait_s: float = DEFAULT_BUSY_WAIT_S):
        if count < 1:
            raise ValueError(f"workers must be at least 1 to serve predictions, got {count}")
        if wait_s < 0:
            raise ValueError(f"the wait for a free prediction slot must be >= 0 s, got {wait_s}")
        self.count = count
        self.wait_s = wait_s
        self._semaphore = threading.BoundedSemaphore(count)

    @contextlib.contextmanager
    def held(self):
        """One slot for the ``with`` block, or UNAVAILABLE when none frees within ``wait_s``."""
        if not self._semaphore.acquire(timeout=self.wait_s):
            raise ServingError(
                "UNAVAILABLE",
                f"all {self.count} prediction slots stayed busy for {self.wait_s:g} s: try again later",
            )
        try:
            yield
        finally:
            self._semaphore.release()


def make_rest_handler(predictor, max_request_bytes: int, timeout_s: float, slots: Slots):
    """The request handler class over ``predictor`` (``serving.server.Predictor``)."""

    class Handler(BaseHTTPRequestHandler):
        timeout = timeout_s  # StreamRequestHandler sets it on the socket: each write's timeout

        def setup(self):
            super().setup()
            self.rfile.close()  # the socket's own buffered file: replaced by one with a deadline
            self.reader = DeadlineReader(self.connection, timeout_s)
            self.rfile = io.BufferedReader(self.reader)

        def handle_one_request(self):
            self.reader.restart()
            super().handle_one_request()

        def _reply(self, code: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)

        def _route(self) -> tuple:
            match = _PATH.match(self.path)
            if not match:
                raise ServingError("NOT_FOUND", f"no such endpoint {self.path}")
            name, version, action = match.groups()
            return name, int(version) if version else None, action

        def _content_length(self) -> int:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                raise HttpError(411, "chunked bodies are not read here: send Content-Length")
            values = self.headers.get_all("Content-Length") or []
            if not values:
                raise HttpError(411, "a POST needs a Content-Length header")
            if len(set(values)) > 1 or not _CONTENT_LENGTH.match(values[0].strip()):
                raise HttpError(400, f"Content-Length {', '.join(values)!r} is not one non-negative integer")
            return int(values[0])

        def _read_body(self, length: int) -> bytes:
            body = self.rfile.read(length)
            if len(body) < length:
                raise HttpError(
                    400, f"the body ended after {len(body)} of its {length} bytes (Content-Length)"
                )
            return body

        def _discard(self, length: int) -> None:
            """Reads what the client is still sending (up to a bound), and drops it."""
            left = min(length, DISCARD_LIMIT_BYTES)
            try:
                while left > 0:
                    chunk = self.rfile.read1(min(left, 1 << 16))
                    if not chunk:
                        return
                    left -= len(chunk)
            except OSError:  # the client stalled or went away: nothing more to save
                pass

        def _predict(self, name: str, version: Optional[int], data: bytes) -> dict:
            try:
                body = json.loads(data)
                if not isinstance(body, dict):
                    raise ServingError(
                        _INVALID,
                        f"the body must be a JSON object with '{INSTANCES}' or '{INPUTS}', "
                        f"got {_json_type(body)}",
                    )
                signature_name = body.get("signature_name", "")
                if not isinstance(signature_name, str):
                    raise ServingError(
                        _INVALID, f"'signature_name' must be a string, got {_json_type(signature_name)}"
                    )
                inputs, columnar = rest_inputs(
                    body, lambda: _signature_inputs(predictor, name, version, signature_name)
                )
            except RecursionError as e:
                raise ServingError(_INVALID, "the body is nested too deeply") from e
            except ValueError as e:  # json.JSONDecodeError, UnicodeDecodeError
                raise ServingError(_INVALID, f"the body is not JSON: {e}") from e
            with slots.held():
                served, outputs = predictor.predict(name, version, signature_name, inputs)
            return {**rest_outputs(outputs, columnar), "model_version": served}

        def _answer(self, handle: Callable[[], dict]) -> None:
            """Calls ``handle`` and answers with its payload, or with the error's status and reason."""
            try:
                payload = handle()
            except HttpError as e:
                self._reply(e.status, {"error": str(e)})
                return self._discard(e.discard)
            except ServingError as e:
                return self._reply(_HTTP_STATUS.get(e.code, 500), {"error": str(e)})
            except TimeoutError:
                self.close_connection = True
                message = f"the request was not received within {timeout_s:g} s: dropped"
                return self._reply(408, {"error": message})
            except Exception as e:  # noqa: BLE001 - answer, and keep serving
                logging.exception("REST request failed")
                return self._reply(500, {"error": f"{type(e).__name__}: {e}"})
            self._reply(200, payload)

        def do_GET(self):  # noqa: N802 - http.server's method names
            def status():
                name, version, _ = self._route()
                states = predictor.model(name).states(version)
                return {"model_version_status": [
                    {"version": str(v), "state": s, "status": {"error_code": "OK" if not err else "INTERNAL",
                                                              "error_message": err}}
                    for v, (s, err) in states.items()
                ]}  # fmt: skip

            self._answer(status)

        def do_POST(self):  # noqa: N802
            def predict():
                length = self._content_length()
                if length > max_request_bytes:
                    message = f"request of {length} bytes is above the limit of {max_request_bytes}"
                    raise HttpError(413, message, discard=length)
                data = self._read_body(length)
                name, version, action = self._route()
                if action != ":predict":
                    raise ServingError("NOT_FOUND", f"POST {self.path}: only :predict is served")
                return self._predict(name, version, data)

            self._answer(predict)

        def log_message(self, fmt, *args):
            logging.debug("rest: " + fmt, *args)

    return Handler


class RestServer(ThreadingHTTPServer):
    """A thread per connection (each with the handler's deadline) and the longest listen queue."""

    slots: Optional[Slots] = None  # the handlers' bound on predictions at once (make_rest_server)
    request_queue_size = socket.SOMAXCONN  # the kernel caps it at net.core.somaxconn
    daemon_threads = True

    def handle_error(self, request, client_address):
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):  # the client went away or stalled
            logging.debug("rest: %s: %s", client_address, error)
        else:
            logging.exception("rest: connection from %s failed", client_address)


def make_rest_server(predictor, host: str, port: int, max_request_bytes: int, timeout_s: float, workers: int,
                     busy_wait_s: float = DEFAULT_BUSY_WAIT_S) -> RestServer:  # fmt: skip
    """The REST front end over ``predictor``, running at most ``workers`` predictions at once."""
    if timeout_s <= 0:
        raise ValueError(f"the REST timeout must be > 0 s, got {timeout_s}")
    slots = Slots(workers, busy_wait_s)
    server = RestServer((host, port), make_rest_handler(predictor, max_request_bytes, timeout_s, slots))
    server.slots = slots
    return server
