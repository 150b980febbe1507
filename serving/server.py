"""``deeplab-tfx serve``: TF Serving's gRPC API (and REST) over a TF Serving model directory.

For development, demos and tests where the TF Serving binary cannot run (``serving/deploy/``
runs the real one). It implements what our clients use, with TF Serving's semantics:
``PredictionService.Predict`` and ``GetModelMetadata``, ``ModelService.GetModelStatus``, and
the REST ``:predict`` and status endpoints (``serving/rest.py``). Bad requests get
INVALID_ARGUMENT with the reason (the server keeps serving), unknown models or versions
NOT_FOUND; messages above ``max_request_bytes`` are refused by gRPC itself
(RESOURCE_EXHAUSTED). It binds 127.0.0.1 unless told otherwise: it has no authentication.

A request whose own image the signature refused (its row's ``error``: ``trainer/export.py``) is
answered INVALID_ARGUMENT, the reason naming the image by its index in that request. With
``max_batch_size`` above 1, concurrent requests to one signature are merged into one call as
TF Serving's batching merges them (``Batcher``); a refused row then fails only the request that
owns it, and the others are answered as if alone.
"""

import dataclasses
import signal
import threading
from concurrent import futures
from typing import Callable, Dict, List, Optional

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from core.signatures import BATCH_LIMIT, ENCODING_NAMES, IMAGE_ENCODINGS, IMAGES, SERVING_DEFAULT, refusals
from serving import rest
from serving.models import (
    ModelVersions,
    ServingError,
    check_inputs,
    describe_classes,
    error_reason,
    model_error,
    replay_warmup,
    short_reason,
)

DEFAULT_MAX_REQUEST_BYTES = 32 << 20
# TF Serving's batch_timeout_micros in serving/deploy/batching_parameters.txt.
DEFAULT_BATCH_TIMEOUT_S = 0.001
_MAGICS = tuple(magic for _, magic in IMAGE_ENCODINGS)


def check_images(images: np.ndarray) -> None:
    """Each element must be bytes ``tf.io.decode_image`` reads (JPEG, PNG, GIF, BMP): a clear
    answer naming the image beats TF's "Unknown image file format". The signature refuses these
    too (``trainer/export.py``), and refuses headers that declare too many pixels.
    """
    for i, data in enumerate(images.reshape(-1)):
        data = bytes(data)
        if not data:
            raise ServingError(
                "INVALID_ARGUMENT",
                f"{IMAGES}[{i}] is empty (0 bytes); send {ENCODING_NAMES} bytes",
            )
        if not data.startswith(_MAGICS):
            raise ServingError(
                "INVALID_ARGUMENT",
                f"{IMAGES}[{i}] is not a {ENCODING_NAMES} image (starts with {data[:8]!r})",
            )


def refuse_rows(outputs: Dict[str, np.ndarray], input_name: str) -> None:
    """INVALID_ARGUMENT naming the first row of ``outputs`` (one request's) that the signature
    refused, reason first: ``images[1] declares 30000x30000 pixels ...``."""
    refused = refusals(outputs, input_name)
    if refused:
        raise ServingError("INVALID_ARGUMENT", short_reason(refused[0]))


@dataclasses.dataclass
class _Waiting:
    """A request in a batch: its inputs and rows, and what its call answered."""

    tensors: Dict[str, tf.Tensor]
    rows: int
    answered: threading.Event = dataclasses.field(default_factory=threading.Event)
    outputs: Optional[Dict[str, np.ndarray]] = None  # None once answered: call it alone


@dataclasses.dataclass
class _Batch:
    requests: List[_Waiting] = dataclasses.field(default_factory=list)
    rows: int = 0
    full: threading.Event = dataclasses.field(default_factory=threading.Event)


class Batcher:
    """Merges concurrent requests to one signature of one version into one call, as TF Serving's
    batching does (``--enable_batching``, ``serving/deploy/batching_parameters.txt``): the first
    request waits up to ``timeout_s`` for others, up to ``max_batch_size`` rows in all; their
    inputs are concatenated in arrival order and the outputs split back by rows (each request's
    ``class_ids`` padded to the batch's largest image, as TF Serving answers them; clients crop).

    Where TF Serving cannot, a request the merged call did not serve whole is called alone: when
    the call failed (a model exported before the signatures were batch-safe) and when its rows
    were refused for the batch's pixel budget, which other requests' images took.
    """

    def __init__(self, max_batch_size: int, timeout_s: float):
        self.max_batch_size = max_batch_size
        self.timeout_s = timeout_s
        self.calls: List[int] = []  # the rows of every merged call, in order
        self._open: Dict[tuple, _Batch] = {}  # per (version path, signature): the batch still filling
        self._lock = threading.Lock()

    def call(
        self, key: tuple, signature, tensors: Dict[str, tf.Tensor], alone: Callable
    ) -> Dict[str, np.ndarray]:
        """This request's rows of ``signature``'s outputs, called once per batch; ``alone(tensors)``
        calls it for this request only (and maps its errors)."""
        waiting = _Waiting(tensors, int(next(iter(tensors.values())).shape[0]))
        with self._lock:
            batch = self._open.get(key)
            leads = batch is None or batch.rows + waiting.rows > self.max_batch_size
            if leads:
                batch = self._open[key] = _Batch()
            batch.requests.append(waiting)
            batch.rows += waiting.rows
            if batch.rows >= self.max_batch_size:
                batch.full.set()
        if leads:
            batch.full.wait(self.timeout_s)
            with self._lock:
                if self._open.get(key) is batch:
                    del self._open[key]
            self.calls.append(batch.rows)
            if len(batch.requests) == 1:
                return alone(tensors)
            self._run_merged(signature, batch)
        waiting.answered.wait()
        if waiting.outputs is None or any(BATCH_LIMIT in reason for reason in refusals(waiting.outputs)):
            return alone(tensors)
        return waiting.outputs

    @staticmethod
    def _run_merged(signature, batch: _Batch) -> None:
        try:
            names = batch.requests[0].tensors
            merged = {name: tf.concat([w.tensors[name] for w in batch.requests], 0) for name in names}
            outputs = {name: value.numpy() for name, value in signature(**merged).items()}
            start = 0
            for waiting in batch.requests:
                end = start + waiting.rows
                waiting.outputs = {name: value[start:end] for name, value in outputs.items()}
                start = end
        except tf.errors.OpError:  # each request is called alone, and fails alone
            pass
        finally:
            for waiting in batch.requests:
                waiting.answered.set()


class Predictor:
    """The request logic both front ends share: find the version, check, call, map errors."""

    def __init__(self, models: Dict[str, ModelVersions], batcher: Optional[Batcher] = None):
        self.models = models
        self.batcher = batcher

    def model(self, name: str) -> ModelVersions:
        if name not in self.models:
            raise ServingError("NOT_FOUND", f"no model named {name!r} (serving {sorted(self.models)})")
        return self.models[name]

    @staticmethod
    def prepare(servable, signature_name: str, inputs: Dict[str, np.ndarray]) -> tuple:
        """``(signature, tensors)``: the signature asked for, and the inputs checked against it."""
        signature_name = signature_name or SERVING_DEFAULT
        if signature_name not in servable.signatures:
            raise ServingError(
                "INVALID_ARGUMENT",
                f"no signature {signature_name!r} in version {servable.version} "
                f"(has {sorted(servable.signatures)})",
            )
        signature = servable.signatures[signature_name]
        tensors = check_inputs(signature, inputs, signature_name)
        if IMAGES in tensors:
            check_images(inputs[IMAGES])
        return signature, tensors

    @staticmethod
    def run(signature, tensors: Dict[str, tf.Tensor]) -> Dict[str, np.ndarray]:
        """The signature's outputs, or the ServingError its failure maps to."""
        try:
            outputs = signature(**tensors)
        except tf.errors.OpError as e:
            raise model_error(e, Predictor.culprit(signature, tensors, e)) from e
        return {name: value.numpy() for name, value in outputs.items()}

    @staticmethod
    def call(servable, signature_name: str, inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """One request's outputs, unbatched; INVALID_ARGUMENT when the signature refused a row."""
        signature, tensors = Predictor.prepare(servable, signature_name, inputs)
        outputs = Predictor.run(signature, tensors)
        refuse_rows(outputs, next(iter(tensors)))
        return outputs

    @staticmethod
    def culprit(signature, tensors: Dict[str, tf.Tensor], error: tf.errors.OpError) -> str:
        """Which image failed the call, ``images[i]``, when TF's reason does not say ("" if none).

        For a model exported before the signatures refused images row by row
        (``trainer/export.py``), whose decoder's error names no image. With one image it is that
        one; with several, each is sent alone until one fails: bounded by the batch's own work
        (the signature's header check has refused oversized images before any decode), and paid
        only by a failed request. Not for RESOURCE_EXHAUSTED and the like, where doing the work
        again would fail again.
        """
        images = tensors.get(IMAGES)
        if images is None or error_reason(error.message).startswith(f"{IMAGES}["):
            return ""
        count = int(images.shape[0])
        if count == 1:
            return f"{IMAGES}[0]"
        if isinstance(error, tf.errors.InvalidArgumentError):
            for i in range(count):
                try:
                    signature(**{**tensors, IMAGES: images[i : i + 1]})
                except tf.errors.OpError:
                    return f"{IMAGES}[{i}]"
        return f"{IMAGES} (a batch of {count})"

    def predict(self, name: str, version: Optional[int], signature_name: str, inputs: dict) -> tuple:
        servable = self.model(name).get(version)
        if self.batcher is None:
            return servable.version, self.call(servable, signature_name, inputs)
        signature, tensors = self.prepare(servable, signature_name, inputs)
        key = (servable.path, signature_name or SERVING_DEFAULT)
        outputs = self.batcher.call(key, signature, tensors, lambda t: self.run(signature, t))
        refuse_rows(outputs, next(iter(tensors)))
        return servable.version, outputs


def _abort(context, error: ServingError):
    context.abort(getattr(grpc.StatusCode, error.code), str(error))


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, predictor: Predictor):
        self.predictor = predictor

    def Predict(self, request, context):  # noqa: N802 - gRPC method names
        spec = request.model_spec
        try:
            inputs = {}
            for name, proto in request.inputs.items():
                try:
                    inputs[name] = tf.make_ndarray(proto)
                except Exception as e:  # noqa: BLE001 - any malformed TensorProto
                    raise ServingError(
                        "INVALID_ARGUMENT", f"input {name!r} is not a valid tensor: {e}"
                    ) from e
            version = spec.version.value if spec.HasField("version") else None
            served, outputs = self.predictor.predict(spec.name, version, spec.signature_name, inputs)
        except ServingError as e:
            return _abort(context, e)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = spec.name
        response.model_spec.version.value = served
        response.model_spec.signature_name = spec.signature_name or SERVING_DEFAULT
        for name in request.output_filter or outputs:
            if name not in outputs:
                return _abort(
                    context, ServingError("INVALID_ARGUMENT", f"no output {name!r} (has {sorted(outputs)})")
                )
            response.outputs[name].CopyFrom(tf.make_tensor_proto(outputs[name]))
        return response

    def GetModelMetadata(self, request, context):  # noqa: N802
        try:
            if list(request.metadata_field) != ["signature_def"]:
                raise ServingError("INVALID_ARGUMENT", "metadata_field must be ['signature_def']")
            spec = request.model_spec
            servable = self.predictor.model(spec.name).get(
                spec.version.value if spec.HasField("version") else None
            )
        except ServingError as e:
            return _abort(context, e)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for name, fn in servable.signatures.items():
            signature = signature_map.signature_def[name]
            signature.method_name = "tensorflow/serving/predict"
            for key, tensor_spec in fn.structured_input_signature[1].items():
                _tensor_info(signature.inputs[key], key, tensor_spec)
            for key, tensor_spec in fn.structured_outputs.items():
                _tensor_info(signature.outputs[key], key, tensor_spec)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = spec.name
        response.model_spec.version.value = servable.version
        response.metadata["signature_def"].Pack(signature_map)
        return response


def _tensor_info(info: meta_graph_pb2.TensorInfo, name: str, spec) -> None:
    info.name = name
    info.dtype = spec.dtype.as_datatype_enum
    info.tensor_shape.CopyFrom(spec.shape.as_proto())


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, predictor: Predictor):
        self.predictor = predictor

    def GetModelStatus(self, request, context):  # noqa: N802
        spec = request.model_spec
        try:
            states = self.predictor.model(spec.name).states(
                spec.version.value if spec.HasField("version") else None
            )
        except ServingError as e:
            return _abort(context, e)
        response = get_model_status_pb2.GetModelStatusResponse()
        for version, (state, error) in states.items():
            status = response.model_version_status.add(version=version)
            status.state = get_model_status_pb2.ModelVersionStatus.State.Value(state)
            if error:
                status.status.error_code = 13  # INTERNAL: the version failed to load
                status.status.error_message = error
        return response


class Server:
    """The gRPC server (and the REST one when ``rest_port``) over one model's versions; with
    ``max_batch_size`` above 1, concurrent requests merged into calls of up to that many rows
    (``Batcher``)."""

    def __init__(self, model_name: str, model_base_path: str, host: str = "127.0.0.1", port: int = 8500,
                 rest_port: int = 0, poll_seconds: float = 1.0,
                 max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES, workers: int = 8,
                 rest_timeout_s: float = rest.DEFAULT_TIMEOUT_S, max_batch_size: int = 1,
                 batch_timeout_s: float = DEFAULT_BATCH_TIMEOUT_S):  # fmt: skip
        self.models = ModelVersions(
            model_name,
            model_base_path,
            warm=lambda s: replay_warmup(s, Predictor.call),
            poll_seconds=poll_seconds,
        )
        batcher = Batcher(max_batch_size, batch_timeout_s) if max_batch_size > 1 else None
        self.predictor = Predictor({model_name: self.models}, batcher)
        options = [
            ("grpc.max_receive_message_length", max_request_bytes),
            ("grpc.max_send_message_length", 256 << 20),
        ]
        self.grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=options)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionService(self.predictor), self.grpc
        )
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(self.predictor), self.grpc)
        self.port = self.grpc.add_insecure_port(f"{host}:{port}")
        if not self.port:
            raise OSError(f"cannot bind gRPC to {host}:{port}")
        self.rest = None
        if rest_port:
            self.rest = rest.make_rest_server(
                self.predictor, host, rest_port, max_request_bytes, rest_timeout_s, workers
            )
            self.rest_port = self.rest.server_address[1]
        self.host = host

    def start(self, wait_seconds: float = 0.0) -> None:
        self.models.start(wait_seconds)
        self.grpc.start()
        if self.rest:
            threading.Thread(target=self.rest.serve_forever, name="rest", daemon=True).start()

    def stop(self) -> None:
        self.grpc.stop(grace=5).wait()
        if self.rest:
            self.rest.shutdown()
            self.rest.server_close()
        self.models.stop()


def serve(model_name: str, model_base_path: str, host: str, port: int, rest_port: int, poll_seconds: float,
          max_request_bytes: int, wait_seconds: float, rest_timeout_s: Optional[float] = None,
          max_batch_size: int = 1, batch_timeout_s: float = DEFAULT_BATCH_TIMEOUT_S) -> int:  # fmt: skip
    """Runs until SIGINT or SIGTERM; returns an exit code. ``max_batch_size`` above 1 merges
    concurrent requests (``Batcher``), as TF Serving's ``--enable_batching``."""
    server = Server(model_name, model_base_path, host, port, rest_port, poll_seconds, max_request_bytes,
                    rest_timeout_s=rest_timeout_s or rest.DEFAULT_TIMEOUT_S, max_batch_size=max_batch_size,
                    batch_timeout_s=batch_timeout_s)  # fmt: skip
    server.start(wait_seconds)
    servable = server.models.get()
    rest_on = f", REST on {host}:{server.rest_port}" if server.rest else ""
    print(
        f"deeplab-tfx serve: model {model_name!r} version {servable.version} on {host}:{server.port} "
        f"(gRPC){rest_on}; {describe_classes(servable)}",
        flush=True,
    )
    stopped = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopped.set())
    stopped.wait()
    server.stop()
    print("deeplab-tfx serve: stopped", flush=True)
    return 0
