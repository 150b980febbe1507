"""``deeplab-tfx serve`` over real gRPC and HTTP on 127.0.0.1, called with the official stubs."""

import base64
import io
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request

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

from core import config as config_lib
from core import features, paths, signatures
from core.dataset_spec import VOC_SPEC
from serving import client, layout, warmup
from serving.models import MAX_REASON_CHARS, model_error
from serving.server import Server
from tests.conftest import feature, read_examples
from tests.helpers.images import declaring, encode
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
        cwd=paths.PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT,
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
    # The same masks as PNGs, from serving_png.
    png_version, png_masks = client.GrpcClient(served["grpc"], MODEL, png=True).predict(served["images"])
    assert png_version == 1
    for got, want in zip(png_masks, expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_png_bmp_and_gif_are_served_with_the_jpegs_masks(served):
    jpeg = served["images"][0]
    pixels = tf.io.decode_jpeg(jpeg, channels=3).numpy()
    few = np.asarray(Image.fromarray(pixels).quantize(256).convert("RGB"))  # GIF holds 256 colours
    grpc_client = client.GrpcClient(served["grpc"], MODEL)
    _, [by_jpeg, by_png, by_bmp] = grpc_client.predict([jpeg, encode(pixels, "PNG"), encode(pixels, "BMP")])
    np.testing.assert_array_equal(by_png, by_jpeg)
    np.testing.assert_array_equal(by_bmp, by_jpeg)
    _, [by_gif, by_few_png] = grpc_client.predict([encode(few, "GIF"), encode(few, "PNG")])
    np.testing.assert_array_equal(by_gif, by_few_png)
    assert by_gif.shape == pixels.shape[:2]


def test_predict_command_writes_palette_masks_and_overlays(served, tmp_path):
    paths = []
    for i, image in enumerate(served["images"]):
        paths.append(str(tmp_path / f"img{i}.jpg"))
        open(paths[-1], "wb").write(image)
    written = client.predict_files(
        served["grpc"], MODEL, paths, str(tmp_path / "out"), VOC_SPEC, batch_size=2
    )
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
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_map)
    default = signature_map.signature_def[SERVING_DEFAULT]
    assert default.inputs[signatures.IMAGES].dtype == tf.string.as_datatype_enum
    assert set(default.outputs) == {
        signatures.CLASS_IDS,
        signatures.HEIGHT,
        signatures.WIDTH,
        signatures.ERROR,
    }
    assert default.outputs[signatures.ERROR].dtype == tf.string.as_datatype_enum
    png = signature_map.signature_def[signatures.SERVING_PNG]
    assert set(png.outputs) == {
        signatures.CLASS_IDS_PNG,
        signatures.HEIGHT,
        signatures.WIDTH,
        signatures.ERROR,
    }
    assert png.outputs[signatures.CLASS_IDS_PNG].dtype == tf.string.as_datatype_enum
    assert {signatures.SERVING_EXAMPLES, signatures.TRANSFORM_FEATURES} <= set(signature_map.signature_def)
    # The classes are not in TF Serving's API; `serve` says which it serves when it starts.
    started = re.search(r"model 'deeplab' version 1 on .*; (.*)", open(served["log"]).read()).group(1)
    assert started == f"dataset 'voc', 21 classes: {', '.join(VOC_SPEC.class_names)}"


def test_bad_requests_are_refused_and_the_server_keeps_serving(served):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(served["channel"])
    good = served["images"][0]
    png = encode(np.zeros((8, 8, 3), np.uint8), "PNG")
    bomb = declaring(png, 30000, 30000)
    limit = config_lib.TrainerConfig.max_image_pixels
    declared = f"images[1] declares 30000x30000 pixels (900000000), above the limit of {limit}"
    cases = {
        "garbage bytes": (
            _request([good, b"this is not an image"]),
            "INVALID_ARGUMENT",
            "images[1] is not a JPEG, PNG, GIF or BMP image (starts with b'this is ')",
        ),
        "0-byte image": (_request([b""]), "INVALID_ARGUMENT", "images[0] is empty (0 bytes)"),
        "truncated JPEG": (
            _request([good[:200]]),
            "INVALID_ARGUMENT",
            "images[0] (200 bytes) does not decode as JPEG: its data is damaged or cut short",
        ),
        "truncated JPEG in a batch": (
            _request([good, png, good[:200]]),
            "INVALID_ARGUMENT",
            "images[2] (200 bytes) does not decode as JPEG: its data is damaged or cut short",
        ),
        "JPEG cut short after its header": (
            _request([good, good[: len(good) // 2]]),
            "INVALID_ARGUMENT",
            f"images[1] ({len(good) // 2} bytes) does not decode as JPEG: its data is damaged or cut short",
        ),
        "PNG declaring 30000x30000": (_request([good, bomb]), "INVALID_ARGUMENT", declared),
        "JPEG declaring 30000x30000": (
            _request([good, declaring(encode(np.zeros((8, 8, 3), np.uint8), "JPEG"), 30000, 30000)]),
            "INVALID_ARGUMENT",
            declared,
        ),
        "GIF header without a size": (
            _request([b"GIF89a"]),
            "INVALID_ARGUMENT",
            "images[0] declares 0x0 pixels: an empty image",
        ),
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
        # The first line says what went wrong, and which image: no TF framing, no trace.
        assert "\n" not in e.value.details() and "Graph execution" not in e.value.details(), case
        # The next good request is answered.
        assert stub.Predict(_request([good]), timeout=30).model_spec.version.value == 1, case
    # INVALID_ARGUMENT is not retried by the client: it raises at once, with the server's reason.
    with pytest.raises(grpc.RpcError, match="is not a JPEG, PNG, GIF or BMP image"):
        client.GrpcClient(served["grpc"], MODEL).predict([b"RIFF\0\0\0\0WEBPVP8 "])


def test_a_20kb_garbage_example_gets_invalid_argument_with_a_short_reason(served):
    # TF's parse error quotes the whole input: uncut, 20 KB of it overflow gRPC's metadata limit.
    stub = prediction_service_pb2_grpc.PredictionServiceStub(served["channel"])
    garbage = b"\x01garbage" * 2500
    with pytest.raises(grpc.RpcError) as e:
        stub.Predict(
            _request([garbage], input_name=signatures.EXAMPLES, signature=signatures.SERVING_EXAMPLES),
            timeout=30,
        )
    details = e.value.details()
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, details
    assert len(details) <= MAX_REASON_CHARS + len("... (99999 characters)")
    assert details.isprintable() and "\\x01garbage" in details, details


def test_tf_errors_map_to_their_grpc_status_with_the_reason_first():
    # Real TF errors, raised by running graphs, as a signature call raises them.
    @tf.function
    def allocate(n):
        return tf.reduce_sum(tf.fill([n], 1.0))

    with pytest.raises(tf.errors.ResourceExhaustedError) as e:
        allocate(tf.constant(1 << 40, tf.int64))
    error = model_error(e.value, "images[3]")
    assert error.code == "RESOURCE_EXHAUSTED"
    # Ours: the image first, then the one line of TF's that names the failure (here the shape
    # asked for). The rest of that line is TF's and differs between CPUs (the allocator is
    # "cpu" on some, oneDNN's "mklcpu" on others), so it is not pinned.
    where, reason = str(error).split(": ", 1)
    assert where == "images[3]" and "\n" not in reason and "Graph execution" not in reason
    assert "shape[1099511627776]" in reason and reason in e.value.message

    @tf.function
    def decode(data):
        return tf.io.decode_png(data)

    with pytest.raises(tf.errors.InvalidArgumentError) as e:
        decode(tf.constant(b"\x89PNG\r\n\x1a\n"))
    assert len(e.value.message.splitlines()) > 3, "TF frames the reason in lines of its own"
    error = model_error(e.value, "images[0]")
    assert error.code == "INVALID_ARGUMENT"
    where, reason = str(error).split(": ", 1)
    assert where == "images[0]" and "\n" not in reason and "Graph execution" not in reason
    assert "PNG" in reason and reason in e.value.message


def test_unavailable_is_retried_until_the_deadline():
    # A port bound and never listened on refuses connections, and no other process (the other
    # test worker's servers and Beam workers) can take it while the socket is held.
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        start = time.monotonic()
        with pytest.raises(client.ServerUnavailableError, match="server unavailable for 2 s"):
            client.GrpcClient(f"127.0.0.1:{port}", MODEL).predict([b"\xff\xd8\xff"], deadline_s=2.0)
    # Jittered sleeps of at least 0.05 + 0.1 + 0.2 + 0.4 s before the next (1.6 s) passes the deadline.
    assert time.monotonic() - start >= 0.75, "it retried rather than giving up at the first refusal"


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


def test_two_clients_merged_into_one_call_one_bad_one_good_get_their_own_answers(
    untrained_model, learning_data, tmp_path
):
    """Batching on, as TF Serving's merges requests: a good client's request and a bad one's go
    into one call of the signature; the good one gets OK with the mask it gets alone, the bad one
    INVALID_ARGUMENT naming its own image."""
    examples_uri, _ = learning_data
    base = str(tmp_path / MODEL)
    assert layout.push(untrained_model, base, source="model/1") == (1, True)
    # A long wait for a second request: the two requests always merge, however slow the machine.
    server = Server(MODEL, base, port=0, max_batch_size=2, batch_timeout_s=60)
    server.start()
    good = feature(read_examples(examples_uri, features.EVAL_SPLIT)[0], features.IMAGE_KEY)[0]
    [alone] = _in_process(untrained_model, [good])
    bad = {
        "cut short": (good[: len(good) // 2], f"({len(good) // 2} bytes) does not decode as JPEG"),
        "oversized header": (
            declaring(encode(np.zeros((8, 8, 3), np.uint8), "PNG"), 30000, 30000),
            "declares 30000x30000 pixels (900000000), above the limit of",
        ),
    }

    def send(answers, name, images):
        grpc_client = client.GrpcClient(f"127.0.0.1:{server.port}", MODEL)
        try:
            answers[name] = grpc_client.predict(images)
        except grpc.RpcError as e:
            answers[name] = e
        finally:
            grpc_client.close()

    try:
        for case, (image, reason) in bad.items():
            answers = {}
            threads = [
                threading.Thread(target=send, args=(answers, name, images))
                for name, images in (("good", [good]), ("bad", [image]))
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=120)
            version, [mask] = answers["good"]
            assert version == 1, case
            np.testing.assert_array_equal(mask, alone, err_msg=case)
            assert answers["bad"].code() == grpc.StatusCode.INVALID_ARGUMENT, case
            assert answers["bad"].details().startswith(f"images[0] {reason}"), (
                case,
                answers["bad"].details(),
            )
        assert server.predictor.batcher.calls == [2, 2], "each pair in one call of the signature"
    finally:
        server.stop()


def test_the_client_raises_invalid_argument_for_its_own_refused_rows(untrained_model):
    # The real TF Serving answers a merged batch OK, each request its rows with their `error`:
    # the client raises for its own refused image, by its index in its own request.
    good = encode(np.full((20, 30, 3), 90, np.uint8), "JPEG")
    merged = {
        name: value.numpy()
        for name, value in tf.saved_model.load(untrained_model)
        .signatures[SERVING_DEFAULT](images=tf.constant([good, b"GIF89a", good]))
        .items()
    }
    first, second = (
        {name: value[rows] for name, value in merged.items()} for rows in (slice(0, 1), slice(1, 3))
    )
    client.check_refusals(first)
    assert signatures.crop_masks(first)[0].shape == (20, 30)
    with pytest.raises(client.ImageRefusedError) as e:
        client.check_refusals(second)
    assert (e.value.code(), e.value.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "images[0] declares 0x0 pixels: an empty image",
    )
    assert str(e.value) == "INVALID_ARGUMENT: images[0] declares 0x0 pixels: an empty image"


# REST: what the REST front end answers for our signatures (its HTTP handling is tested in
# tests/test_rest_front_end.py).


def _post(served, body: dict) -> bytes:
    request = urllib.request.Request(
        f"http://{served['rest']}/v1/models/{MODEL}:predict",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.read()


def test_rest_answers_png_masks_a_fraction_of_the_json_class_ids(served):
    # A 500x375 image, VOC's commonest size. The figures go to the README (`-s` prints them).
    with Image.open(io.BytesIO(served["images"][0])) as small:
        image = encode(np.asarray(small.convert("RGB").resize((500, 375))), "JPEG")
    instances = [{signatures.IMAGES: {"b64": base64.b64encode(image).decode()}}]
    answers = {
        name: _post(served, {"signature_name": name, "instances": instances})
        for name in (signatures.SERVING_DEFAULT, signatures.SERVING_PNG)
    }
    [full] = json.loads(answers[signatures.SERVING_DEFAULT])["predictions"]
    [png_only] = json.loads(answers[signatures.SERVING_PNG])["predictions"]
    assert set(png_only) == {signatures.CLASS_IDS_PNG, signatures.HEIGHT, signatures.WIDTH, signatures.ERROR}
    assert png_only[signatures.ERROR] == ""
    class_ids = np.asarray(full[signatures.CLASS_IDS], np.uint8)
    assert class_ids.shape == (375, 500) and (png_only[signatures.HEIGHT], png_only[signatures.WIDTH]) == (
        375,
        500,
    )
    np.testing.assert_array_equal(
        client.decode_png_mask(base64.b64decode(png_only[signatures.CLASS_IDS_PNG]["b64"])), class_ids
    )
    json_ids = len(json.dumps(full[signatures.CLASS_IDS]))
    print(
        f"REST answer for 500x375: {signatures.SERVING_DEFAULT} {len(answers[signatures.SERVING_DEFAULT])} "
        f"bytes (class_ids as JSON {json_ids}), {signatures.SERVING_PNG} "
        f"{len(answers[signatures.SERVING_PNG])} bytes"
    )
    assert json_ids >= 2 * 500 * 375  # at least "d," per pixel
    assert len(answers[signatures.SERVING_PNG]) * 20 < json_ids
    # `deeplab-tfx predict --rest` asks serving_png and decodes the PNG.
    _, [mask] = client.RestClient(served["rest"], MODEL).predict([image])
    np.testing.assert_array_equal(mask, class_ids)


def test_rest_refusals_name_the_image(served):
    good = served["images"][0]
    bomb = declaring(encode(np.zeros((8, 8, 3), np.uint8), "PNG"), 30000, 30000)
    rest_client = client.RestClient(served["rest"], MODEL)
    with pytest.raises(RuntimeError, match=re.escape("HTTP 400: ") + ".*images\\[1\\] declares 30000x30000"):
        rest_client.predict([good, bomb])
    with pytest.raises(
        RuntimeError, match="HTTP 400: .*images\\[0\\] \\(200 bytes\\) does not decode as JPEG"
    ):
        rest_client.predict([good[:200]])
    with pytest.raises(RuntimeError, match="HTTP 400: .*images\\[0\\] is not a JPEG, PNG, GIF or BMP image"):
        rest_client.predict([b"RIFF\0\0\0\0WEBPVP8 "])
    _, [mask] = rest_client.predict([good])
    [expected] = _in_process(os.path.join(served["base"], "1"), [good])
    np.testing.assert_array_equal(mask, expected)
