"""``deeplab-tfx serve`` over real gRPC and HTTP on 127.0.0.1, called with the official stubs."""

import io
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from components.serving_pusher import layout, warmup
from pipeline import config as config_lib
from pipeline import features
from serving import client
from serving.server import Server
from tests.conftest import feature, read_examples
from trainer.export import SERVING_DEFAULT

pytestmark = pytest.mark.slow
MODEL = "deeplab"


def _push(model_dir, base, examples_uri, source):
    images = warmup.eval_images(examples_uri, 2)
    return layout.push(
        model_dir, base, source, lambda d: warmup.write(d, warmup.prediction_logs(images, MODEL))
    )


@pytest.fixture(scope="module")
def served(untrained_model, learning_data, tmp_path_factory):
    """A ``deeplab-tfx serve`` process on a free port, serving version 1 of the untrained model."""
    examples_uri, _ = learning_data
    base = str(tmp_path_factory.mktemp("serving") / MODEL)
    assert _push(untrained_model, base, examples_uri, "model/1") == (1, True)
    log_path = str(tmp_path_factory.mktemp("serve_log") / "serve.log")
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "serve", "--model-base-path", base, "--model-name", MODEL,
         "--port", "0", "--rest-port", str(free_port()), "--poll-seconds", "0.2", "--max-request-mb", "1"],
        cwd=config_lib.PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.time() + 120
    ports = None
    while time.time() < deadline and proc.poll() is None and not ports:
        ports = re.search(
            r"on 127\.0\.0\.1:(\d+) \(gRPC\), REST on 127\.0\.0\.1:(\d+)", open(log_path).read()
        )
        time.sleep(0.2)
    assert ports, open(log_path).read()[-3000:]
    channel = grpc.insecure_channel(f"127.0.0.1:{ports.group(1)}")
    images = [feature(e, features.IMAGE_KEY)[0] for e in read_examples(examples_uri, features.EVAL_SPLIT)[:3]]
    yield {
        "base": base, "grpc": f"127.0.0.1:{ports.group(1)}", "rest": f"127.0.0.1:{ports.group(2)}",
        "channel": channel, "images": images, "model": untrained_model, "examples": examples_uri,
        "log": log_path,
    }  # fmt: skip
    channel.close()
    proc.terminate()
    assert proc.wait(timeout=60) == 0, open(log_path).read()[-3000:]
    assert "deeplab-tfx serve: stopped" in open(log_path).read()


def _in_process(model_dir, images):
    out = tf.saved_model.load(model_dir).signatures[SERVING_DEFAULT](images=tf.constant(images))
    sizes = zip(out["height"], out["width"], strict=True)
    return [out["class_ids"][i, :h, :w].numpy() for i, (h, w) in enumerate(sizes)]


def _request(images, name=MODEL, input_name="images", signature="", version=None, dtype=tf.string):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    if version:
        request.model_spec.version.value = version
    request.inputs[input_name].CopyFrom(tf.make_tensor_proto(images, dtype=dtype))
    return request


def test_masks_through_the_server_equal_the_in_process_signature(served):
    version, masks = client.GrpcClient(served["grpc"], MODEL).predict(served["images"])
    expected = _in_process(os.path.join(served["base"], "1"), served["images"])
    assert version == 1 and len(masks) == 3
    for got, want, image in zip(masks, expected, served["images"], strict=True):
        assert got.shape == Image.open(io.BytesIO(image)).size[::-1]
        np.testing.assert_array_equal(got, want)
    # REST, b64 JSON: the same masks.
    rest_version, rest_masks = client.RestClient(served["rest"], MODEL).predict(served["images"])
    assert rest_version == 1
    for got, want in zip(rest_masks, expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_predict_command_writes_palette_masks_and_overlays(served, tmp_path):
    paths = []
    for i, image in enumerate(served["images"]):
        paths.append(str(tmp_path / f"img{i}.jpg"))
        open(paths[-1], "wb").write(image)
    written = client.predict_files(served["grpc"], MODEL, paths, str(tmp_path / "out"), batch_size=2)
    expected = _in_process(os.path.join(served["base"], "1"), served["images"])
    assert [(p, v) for p, v, _ in written] == [(p, 1) for p in paths]
    for (_, _, mask_path), want in zip(written, expected, strict=True):
        with Image.open(mask_path) as png:
            assert png.mode == "P"
            np.testing.assert_array_equal(np.asarray(png), want)
        with Image.open(mask_path.replace(".png", "_overlay.jpg")) as overlay:
            assert overlay.size == want.shape[::-1]


def test_status_and_metadata(served):
    models = model_service_pb2_grpc.ModelServiceStub(served["channel"])
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = MODEL
    [status] = models.GetModelStatus(request).model_version_status
    assert (status.version, status.state) == (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE)
    request.model_spec.version.value = 9
    with pytest.raises(grpc.RpcError) as e:
        models.GetModelStatus(request)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND

    metadata_request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    metadata_request.model_spec.name = MODEL
    response = prediction_service_pb2_grpc.PredictionServiceStub(served["channel"]).GetModelMetadata(
        metadata_request
    )
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signatures)
    default = signatures.signature_def[SERVING_DEFAULT]
    assert default.inputs["images"].dtype == tf.string.as_datatype_enum
    assert set(default.outputs) == {"class_ids", "height", "width"}
    assert {"serving_examples", "transform_features"} <= set(signatures.signature_def)


def test_bad_requests_are_refused_and_the_server_keeps_serving(served):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(served["channel"])
    good = served["images"][0]
    cases = {
        "garbage bytes": (_request([b"this is not an image"]), "INVALID_ARGUMENT", "is not a JPEG"),
        "0-byte image": (_request([b""]), "INVALID_ARGUMENT", "is empty (0 bytes)"),
        "truncated JPEG": (_request([good[:200]]), "INVALID_ARGUMENT", "the model rejected the input"),
        "wrong input name": (_request([good], input_name="image"), "INVALID_ARGUMENT", "unknown ['image']"),
        "wrong dtype": (_request([1, 2], dtype=tf.int32), "INVALID_ARGUMENT", "must be string, got int32"),
        "wrong shape": (_request([[good]]), "INVALID_ARGUMENT", "must have shape (None,)"),
        "unknown signature": (
            _request([good], signature="classify"),
            "INVALID_ARGUMENT",
            "no signature 'classify'",
        ),
        "unknown model": (_request([good], name="resnet"), "NOT_FOUND", "no model named 'resnet'"),
        "unknown version": (_request([good], version=7), "NOT_FOUND", "version 7 is not being served"),
        "too large": (_request([b"\xff\xd8\xff" + bytes(2 << 20)]), "RESOURCE_EXHAUSTED", ""),
    }
    for case, (request, code, message) in cases.items():
        with pytest.raises(grpc.RpcError) as e:
            stub.Predict(request, timeout=30)
        assert e.value.code().name == code, (case, e.value.details())
        assert message in (e.value.details() or ""), (case, e.value.details())
        # The next good request is answered.
        assert stub.Predict(_request([good]), timeout=30).model_spec.version.value == 1, case
    # INVALID_ARGUMENT is not retried by the client: it raises at once, with the server's reason.
    with pytest.raises(grpc.RpcError, match="is not a JPEG"):
        client.GrpcClient(served["grpc"], MODEL).predict([b"GIF89a"])
    with pytest.raises(RuntimeError, match="HTTP 400.*is not a JPEG"):
        client.RestClient(served["rest"], MODEL).predict([b"GIF89a"])


def test_unavailable_is_retried_until_the_deadline():
    port = free_port()  # nothing listens there
    start = time.monotonic()
    with pytest.raises(client.ServerUnavailableError, match="server unavailable for 2 s"):
        client.GrpcClient(f"127.0.0.1:{port}", MODEL).predict([b"\xff\xd8\xff"], deadline_s=2.0)
    assert time.monotonic() - start >= 1.0, "it retried rather than giving up at the first refusal"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_eight_concurrent_clients_fifty_requests_each(served):
    image = served["images"][0]
    [expected] = _in_process(os.path.join(served["base"], "1"), [image])
    failures, done = [], []

    def worker():
        stub = client.GrpcClient(served["grpc"], MODEL)
        for _ in range(50):
            try:
                _, [mask] = stub.predict([image])
                if not np.array_equal(mask, expected):
                    failures.append("wrong mask")
                done.append(1)
            except Exception as e:  # noqa: BLE001 - counted, then asserted
                failures.append(repr(e))
        stub.close()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert failures == [] and len(done) == 400


def test_a_new_version_is_picked_up_without_failing_a_request(
    untrained_model, learning_data, tmp_path, caplog
):
    # Its own server and model directory: pushing version 2 must not change what other tests see.
    caplog.set_level(logging.INFO, logger="root")
    examples_uri, _ = learning_data
    base = str(tmp_path / MODEL)
    assert _push(untrained_model, base, examples_uri, "model/1") == (1, True)
    server = Server(MODEL, base, port=0, poll_seconds=0.2)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    image = feature(read_examples(examples_uri, features.EVAL_SPLIT)[0], features.IMAGE_KEY)[0]
    stop, versions, failures = threading.Event(), [], []

    def loop():
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        while not stop.is_set():
            try:
                versions.append(stub.Predict(_request([image]), timeout=60).model_spec.version.value)
            except grpc.RpcError as e:
                failures.append(f"{e.code().name}: {e.details()}")

    thread = threading.Thread(target=loop)
    thread.start()
    try:
        while len(versions) < 5 and not failures:
            time.sleep(0.05)
        assert _push(untrained_model, base, examples_uri, "model/2") == (2, True)
        deadline = time.time() + 120
        while time.time() < deadline and (not versions or versions[-1] != 2):
            time.sleep(0.1)
        time.sleep(0.5)
    finally:
        stop.set()
        thread.join()
    assert failures == []
    assert versions[0] == 1 and versions[-1] == 2
    switch = versions.index(2)
    assert set(versions[:switch]) == {1} and set(versions[switch:]) == {2}, "no going back to version 1"
    models = model_service_pb2_grpc.ModelServiceStub(channel)
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = MODEL
    try:
        states = {s.version: s.state for s in models.GetModelStatus(request).model_version_status}
    finally:
        channel.close()
        server.stop()
    State = get_model_status_pb2.ModelVersionStatus.State  # noqa: N806
    assert states == {1: State.END, 2: State.AVAILABLE}
    assert "model deeplab version 2 AVAILABLE (loaded and 2 warm-up requests" in caplog.text
