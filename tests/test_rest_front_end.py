"""The REST front end (``serving/rest.py``) against hostile and busy clients, over real sockets.

A real ``Server`` on 127.0.0.1 serves the untrained model; requests an HTTP library would not send
(a negative ``Content-Length``, a body cut short, a client that stalls) go through raw sockets.
"""

import base64
import contextlib
import http.client
import io
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from serving import layout, rest
from serving.server import Server
from tests.test_serving import free_port
from trainer.export import SERVING_DEFAULT

MODEL = "deeplab"
MAX_REQUEST_BYTES = 1 << 20
TIMEOUT_S = 1.0
PREDICT = f"/v1/models/{MODEL}:predict"


def _jpeg() -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


JPEG = _jpeg()
B64 = {"b64": base64.b64encode(JPEG).decode()}


def _json_value(name: str, value):
    """One example's output as TF Serving's JSON writes it, spelled out here independently:
    strings named ``*_bytes`` as base64, other strings (``error``) as text."""
    if isinstance(value, bytes):
        return {"b64": base64.b64encode(value).decode()} if name.endswith("_bytes") else value.decode()
    return value.tolist()


@pytest.fixture(scope="module")
def server(untrained_model, tmp_path_factory):
    """``deeplab-tfx serve``'s Server with REST, a 1 MB request limit, 1 s to receive a request and
    the default 8 workers."""
    base = str(tmp_path_factory.mktemp("rest") / MODEL)
    assert layout.push(untrained_model, base, "model/1") == (1, True)
    server = Server(MODEL, base, port=0, rest_port=free_port(), max_request_bytes=MAX_REQUEST_BYTES,
                    rest_timeout_s=TIMEOUT_S)  # fmt: skip
    server.start()
    model = tf.saved_model.load(os.path.join(base, "1"))
    out = {
        name: value.numpy()
        for name, value in model.signatures[SERVING_DEFAULT](images=tf.constant([JPEG])).items()
    }
    server.expected_mask = out["class_ids"][0].tolist()
    server.expected_row = {name: _json_value(name, value[0]) for name, value in out.items()}
    server.signature_names = sorted(model.signatures)
    yield server
    server.stop()


def _raw(port: int, data: bytes, close_write: bool = True, timeout: float = 10.0) -> tuple:
    """Sends ``data`` as is; ``(status, headers, body)`` of the answer, read to the end."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        if close_write:
            sock.shutdown(socket.SHUT_WR)
        return _read_answer(sock)


def _read_answer(sock: socket.socket) -> tuple:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    return int(status_line.split()[1]), headers, json.loads(body) if body else None


def _post_json(port: int, body, path: str = PREDICT) -> tuple:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("POST", path, data, {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def _good(server) -> None:
    """The server still answers a good request, with the right mask."""
    status, answer = _post_json(server.rest_port, {"instances": [{"images": B64}]})
    assert status == 200, answer
    assert answer["predictions"][0]["class_ids"] == server.expected_mask


def test_bad_content_length_gets_400_or_411_and_a_negative_one_does_not_bypass_the_limit(server):
    head = f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\n"
    body = json.dumps({"instances": [{"images": B64}]}).encode()
    cases = {
        # -1 used to read to the end of the stream, past --max-request-mb, and answer 200.
        "negative": (f"{head}Content-Length: -1\r\n\r\n".encode() + body, 400,
                     "Content-Length '-1' is not one non-negative integer"),
        "not a number": (f"{head}Content-Length: abc\r\n\r\n".encode() + body, 400,
                         "Content-Length 'abc' is not one non-negative integer"),
        "signed": (f"{head}Content-Length: +{len(body)}\r\n\r\n".encode() + body, 400,
                   f"Content-Length '+{len(body)}' is not one non-negative integer"),
        "two that differ": (f"{head}Content-Length: {len(body)}\r\nContent-Length: 3\r\n\r\n".encode()
                            + body, 400, f"Content-Length '{len(body)}, 3' is not one non-negative integer"),
        "missing": (f"{head}\r\n".encode() + body, 411, "a POST needs a Content-Length header"),
        "chunked": (f"{head}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".encode(), 411,
                    "chunked bodies are not read here: send Content-Length"),
        "longer than the body": (f"{head}Content-Length: {len(body) + 10}\r\n\r\n".encode() + body, 400,
                                 f"the body ended after {len(body)} of its {len(body) + 10} bytes "
                                 "(Content-Length)"),
    }  # fmt: skip
    for case, (data, status, message) in cases.items():
        got_status, headers, answer = _raw(server.rest_port, data)
        assert (got_status, answer) == (status, {"error": message}), case
        assert headers["Connection"] == "close", case
    _good(server)


NOT_AN_OBJECT = "the body must be a JSON object with 'instances' or 'inputs'"


def test_malformed_bodies_get_400_with_the_reason(server):
    other = {"b64": base64.b64encode(b"\xff\xd8\xff").decode()}
    cases = {
        "not JSON": (b'{"instances": [', "the body is not JSON: Expecting value: line 1 column 16 (char 15)"),
        "not UTF-8": (b'{"instances": ["\xff"]}',
                      "the body is not JSON: 'utf-8' codec can't decode byte 0xff in position 16: "
                      "invalid start byte"),
        "nested too deeply": (b"[" * 100_000, "the body is nested too deeply"),
        "bare string": ("abc", f"{NOT_AN_OBJECT}, got a string"),
        "list": ([{"images": B64}], f"{NOT_AN_OBJECT}, got a list"),
        "neither key": ({"images": [B64]}, "Missing 'inputs' or 'instances' key"),
        "both keys": ({"instances": [B64], "inputs": [B64]},
                      "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist"),
        "instances not a list": ({"instances": {"images": B64}}, "'instances' must be a list, got an object"),
        "no instances": ({"instances": []}, "No values in 'instances' array"),
        "not base64": ({"instances": [{"images": {"b64": "not base64!"}}]},
                       "instances[0]['images'].b64 is not base64: Non-base64 digit found"),
        "b64 not a string": ({"instances": [{"images": {"b64": 7}}]},
                             "instances[0]['images'].b64 must be a base64 string, got a number"),
        "rows with different keys": ({"instances": [{"images": B64}, {"image": other}]},
                                     "instances[1] has keys ['image'] but instances[0] has keys ['images']: "
                                     "every instance needs the same keys"),
        "object then bare value": ({"instances": [{"images": B64}, B64]},
                                   "instances[1] has an object but instances[0] has keys ['images']: "
                                   "every instance needs the same keys"),
        "bare value then object": ({"instances": [B64, {"images": B64}]},
                                   "instances[1] is an object but instances[0] is not"),
        "null": ({"instances": [{"images": None}]},
                 'instances[0][\'images\'] is null: a value is a number, a string or {"b64": ...}'),
        "ragged": ({"inputs": {"images": [[B64], [B64, B64]]}},
                   "inputs['images'] is ragged: the lists at each depth must have one length"),
        "strings and numbers": ({"inputs": {"images": [B64, 3]}},
                                "inputs['images'] mixes strings and numbers"),
        "signature_name not a string": ({"signature_name": 1, "instances": [B64]},
                                        "'signature_name' must be a string, got a number"),
        "bare values, unknown signature": ({"signature_name": "nope", "instances": [B64]},
                                           f"no signature 'nope' (has {server.signature_names})"),
        # Past the front end: the Predictor's own checks, answered 400 the same way.
        "wrong input name": ({"instances": [{"image": B64}]},
                             "signature 'serving_default' takes inputs ['images']; missing ['images']; "
                             "unknown ['image']"),
    }  # fmt: skip
    for case, (body, message) in cases.items():
        status, answer = _post_json(server.rest_port, body)
        assert (status, answer) == (400, {"error": message}), case
    assert _post_json(server.rest_port, {"instances": [B64]}, path="/v1/models/resnet:predict") == (
        404,
        {"error": "no model named 'resnet' (serving ['deeplab'])"},
    )
    _good(server)


def test_the_formats_tf_serving_reads_get_the_same_mask(server):
    expected = server.expected_mask
    rows = {"instances": [{"images": B64}]}
    bare_rows = {"signature_name": SERVING_DEFAULT, "instances": [B64]}
    columns = {"inputs": {"images": [B64]}}
    bare_columns = {"inputs": [B64]}
    for body in (rows, bare_rows):
        status, answer = _post_json(server.rest_port, body)
        assert status == 200 and answer["model_version"] == 1
        assert answer["predictions"] == [server.expected_row]
        assert answer["predictions"][0]["class_ids"] == expected
        assert (answer["predictions"][0]["height"], answer["predictions"][0]["width"]) == (30, 40)
    for body in (columns, bare_columns):
        status, answer = _post_json(server.rest_port, body)
        assert status == 200 and answer["outputs"] == {k: [v] for k, v in server.expected_row.items()}


def test_string_outputs_are_encoded_as_tf_serving_does():
    png = b"\x89PNG\r\n\x1a\n"
    outputs = {
        "mask_bytes": np.array([png, b"\x00"], dtype=object),
        "label": np.array([b"cat", b"dog"], dtype=object),
        "height": np.array([2, 3], dtype=np.int32),
    }
    b64 = base64.b64encode(png).decode()
    assert rest.rest_outputs(outputs, columnar=False) == {
        "predictions": [
            {"mask_bytes": {"b64": b64}, "label": "cat", "height": 2},
            {"mask_bytes": {"b64": "AA=="}, "label": "dog", "height": 3},
        ]
    }
    assert rest.rest_outputs(outputs, columnar=True) == {
        "outputs": {"mask_bytes": [{"b64": b64}, {"b64": "AA=="}], "label": ["cat", "dog"], "height": [2, 3]}
    }
    assert rest.rest_outputs({"height": np.array([2, 3])}, columnar=True) == {"outputs": [2, 3]}


def test_an_oversized_body_is_read_then_answered_413(server):
    # 16 MB: more than the socket buffers hold, so answering without reading it made the
    # client's send fail (broken pipe / reset) before it could read the answer.
    size = 16 << 20
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.rest_port}{PREDICT}",
        data=bytes(size),
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(request, timeout=60)
    assert e.value.code == 413
    assert e.value.headers["Connection"] == "close"
    assert json.loads(e.value.read()) == {
        "error": f"request of {size} bytes is above the limit of {MAX_REQUEST_BYTES}"
    }
    _good(server)


def _connect_all(port: int, n: int) -> list:
    sockets, refused = [], []
    for _ in range(n):
        sock = socket.socket()
        sock.settimeout(0.5)  # a SYN dropped by a full queue is retried after 1 s
        try:
            sock.connect(("127.0.0.1", port))
            sockets.append(sock)
        except OSError as e:
            refused.append(repr(e))
            sock.close()
    return sockets, refused


def test_twenty_clients_arriving_together_wait_in_the_listen_queue(server):
    # A second front end over the same Predictor, not yet accepting: 20 clients connect while it
    # is busy. With socketserver's queue of 5, the kernel dropped the 7th and later SYNs.
    # As many workers as clients: this test is about the listen queue, not the slots.
    front = rest.make_rest_server(server.predictor, "127.0.0.1", 0, MAX_REQUEST_BYTES, TIMEOUT_S, workers=20)
    port = front.server_address[1]
    sockets, serving = [], None
    try:
        sockets, refused = _connect_all(port, 20)
        assert refused == [] and len(sockets) == 20
        body = json.dumps({"instances": [{"images": B64}]}).encode()
        for sock in sockets:
            sock.settimeout(60)
            sock.sendall(f"POST {PREDICT} HTTP/1.1\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        serving = threading.Thread(target=front.serve_forever, daemon=True)
        serving.start()
        answers = [_read_answer(sock) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
        # shutdown() waits for serve_forever to stop: called before it ever ran, it waits forever.
        if serving is not None:
            front.shutdown()
        front.server_close()
    assert [status for status, _, _ in answers] == [200] * 20
    assert all(answer["predictions"][0]["class_ids"] == server.expected_mask for _, _, answer in answers)


NOT_RECEIVED = f"the request was not received within {TIMEOUT_S:g} s: dropped"


def _handler_threads() -> int:
    return sum("process_request_thread" in t.name for t in threading.enumerate())


def _wait_for_handler_threads(count: int) -> int:
    """The number of handler threads once it is down to ``count`` (or after 10 s). It may go
    below: a thread of an earlier test's connection, alive when ``count`` was taken, may end."""
    deadline = time.monotonic() + 10
    while _handler_threads() > count and time.monotonic() < deadline:
        time.sleep(0.05)
    return _handler_threads()


def test_a_client_that_stalls_is_dropped_and_others_are_served(server):
    before = _handler_threads()
    body = json.dumps({"instances": [{"images": B64}]}).encode()
    half_body = socket.create_connection(("127.0.0.1", server.rest_port), timeout=10)
    half_body.sendall(f"POST {PREDICT} HTTP/1.1\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body[:10])
    half_head = socket.create_connection(("127.0.0.1", server.rest_port), timeout=10)
    half_head.sendall(f"POST {PREDICT} HTTP/1.1\r\nContent-Le".encode())
    start = time.monotonic()
    try:
        _good(server)  # while both stall
        status, _, answer = _read_answer(half_body)
        assert (status, answer) == (408, {"error": NOT_RECEIVED})
        assert half_head.recv(1) == b""  # closed without an answer: there is no request to answer
        assert time.monotonic() - start < 10 * TIMEOUT_S
    finally:
        half_body.close()
        half_head.close()
    assert _wait_for_handler_threads(before) <= before, "the stalled clients' threads were let go"


def _trickle(sock: socket.socket, data: bytes, every_s: float) -> threading.Thread:
    """Sends ``data`` a byte every ``every_s`` (less than ``TIMEOUT_S``) until the server closes it."""

    def send():
        for i in range(len(data)):
            time.sleep(every_s)
            try:
                sock.sendall(data[i : i + 1])
            except OSError:  # dropped by the server: what the test waits for
                return

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def test_a_client_that_trickles_is_dropped_at_the_deadline_and_others_are_served(server):
    # A byte every 0.3 s never stalls a read for 1 s: with only a read timeout, both held their
    # threads until they had sent everything (the body: 60 s; the headers: forever).
    before = _handler_threads()
    body = json.dumps({"instances": [{"images": B64}]}).encode()
    start = time.monotonic()
    in_body = socket.create_connection(("127.0.0.1", server.rest_port), timeout=10)
    in_body.sendall(f"POST {PREDICT} HTTP/1.1\r\nContent-Length: {len(body)}\r\n\r\n".encode())
    in_head = socket.create_connection(("127.0.0.1", server.rest_port), timeout=10)
    senders = [_trickle(in_body, body, 0.3), _trickle(in_head, f"POST {PREDICT} HTTP/1.1\r\n".encode(), 0.3)]
    try:
        _good(server)  # while both trickle
        status, _, answer = _read_answer(in_body)
        assert (status, answer) == (408, {"error": NOT_RECEIVED})
        assert in_head.recv(1) == b""  # closed without an answer: its headers never arrived
        elapsed = time.monotonic() - start
        # At the deadline, not when the trickle would end (60 s; never for the headers). The
        # bound leaves room for the good prediction above on a machine busy with other work.
        assert TIMEOUT_S <= elapsed < 10 * TIMEOUT_S, elapsed
    finally:
        in_body.close()
        in_head.close()
    for sender in senders:
        sender.join(timeout=10)
    assert _wait_for_handler_threads(before) <= before, "the trickling clients' threads were let go"


def test_predictions_beyond_the_workers_wait_then_get_503_and_freed_slots_serve_the_next(server):
    slots = server.rest.slots
    assert (slots.count, slots.wait_s) == (8, rest.DEFAULT_BUSY_WAIT_S)  # the gRPC pool's size
    busy = f"all 8 prediction slots stayed busy for {rest.DEFAULT_BUSY_WAIT_S:g} s: try again later"
    with contextlib.ExitStack() as held:
        for _ in range(slots.count):
            held.enter_context(slots.held())
        start = time.monotonic()
        assert _post_json(server.rest_port, {"instances": [{"images": B64}]}) == (503, {"error": busy})
        elapsed = time.monotonic() - start
        # It waited for a slot, and not for ever (room for a machine busy with other work).
        assert rest.DEFAULT_BUSY_WAIT_S <= elapsed < 5 * rest.DEFAULT_BUSY_WAIT_S, elapsed
        # Freed while the next request waits for a slot: that one is served, not refused.
        release = threading.Timer(0.3, held.close)
        release.start()
        start = time.monotonic()
        try:
            _good(server)
            assert time.monotonic() - start >= 0.3
        finally:
            release.join()  # before the ``with`` releases what is still held: never twice


def test_bad_rest_settings_are_refused_with_the_reason(server):
    with pytest.raises(ValueError, match=r"^workers must be at least 1 to serve predictions, got 0$"):
        rest.make_rest_server(server.predictor, "127.0.0.1", 0, MAX_REQUEST_BYTES, TIMEOUT_S, workers=0)
    with pytest.raises(ValueError, match=r"^the REST timeout must be > 0 s, got -1$"):
        rest.make_rest_server(server.predictor, "127.0.0.1", 0, MAX_REQUEST_BYTES, -1, workers=8)
    with pytest.raises(ValueError, match=r"^the wait for a free prediction slot must be >= 0 s, got -1$"):
        rest.Slots(8, wait_s=-1)
