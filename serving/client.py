"""``deeplab-tfx predict``: sends images to a TF Serving endpoint (ours or the real one).

gRPC through the official ``tensorflow-serving-api`` stub, or REST (``--rest``, ``b64`` JSON).
Several images (JPEG, PNG, GIF or BMP) go in one request (a batch). gRPC asks ``serving_default``
for ``class_ids`` (cropped to each image's size) or, with ``png=True``, ``serving_png`` for the
PNG masks; REST asks ``serving_png``, whose ``class_ids_png_bytes`` come back as
``{"b64": ...}``: a few KB per 500x375 image where ``class_ids`` as JSON lists are 0.5 MB.
UNAVAILABLE (server starting, restarting, a pod moving) is retried with exponential backoff
until the deadline; INVALID_ARGUMENT and the other errors are not, since sending the same
request again cannot change the answer. An image the signature refused is INVALID_ARGUMENT too,
whichever server answered: ``deeplab-tfx serve`` refuses the request, but the real TF Serving
answers OK with the image's reason in its row of ``error`` (its batching merges requests, so the
signatures refuse rows, not calls: ``trainer/export.py``), which ``ImageRefusedError`` raises here.

Masks and overlays are drawn in the model's classes' colours (``prediction_spec``): the dataset
spec the model carries in ``assets.extra/dataset_spec.json`` when the caller can read the
model's directory, else a spec the caller names, else VOC's. A served model does not tell its
classes over gRPC or REST: TF Serving's ``GetModelMetadata`` answers the signatures only.
"""

import base64
import io
import json
import os
import random
import time
import urllib.error
import urllib.request
from typing import List, Optional

import grpc
import numpy as np
import tensorflow as tf
from PIL import Image
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from core import dataset_spec, storage
from core.signatures import CLASS_IDS_PNG, ERROR, IMAGES, SERVING_DEFAULT, SERVING_PNG, crop_masks, refusals
from serving import layout
from transform import palette

MAX_MESSAGE_BYTES = 256 << 20


class ServerUnavailableError(RuntimeError):
    """The server stayed UNAVAILABLE until the deadline."""


class ImageRefusedError(RuntimeError):
    """The server answered, but the signature refused an image of the request: INVALID_ARGUMENT,
    with ``code()`` and ``details()`` as a ``grpc.RpcError`` has them, reason first."""

    def __init__(self, reason: str):
        super().__init__(f"INVALID_ARGUMENT: {reason}")
        self.reason = reason

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.INVALID_ARGUMENT

    def details(self) -> str:
        return self.reason


def check_refusals(outputs: dict) -> None:
    """Raises ``ImageRefusedError`` naming the request's first refused image (its row's ``error``)."""
    refused = refusals(outputs, IMAGES)
    if refused:
        more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
        raise ImageRefusedError(refused[0] + more)


def decode_png_mask(data: bytes) -> np.ndarray:
    """One ``class_ids_png_bytes`` element (a grey PNG of class ids) -> ``[H, W]`` uint8 ids."""
    with Image.open(io.BytesIO(data)) as png:
        return np.asarray(png)


def _with_retries(send, deadline_s: float, retryable):
    """Calls ``send(remaining_seconds)`` until it succeeds, fails for good, or time runs out."""
    deadline = time.monotonic() + deadline_s
    delay = 0.1
    while True:
        remaining = deadline - time.monotonic()
        try:
            return send(max(remaining, 0.001))
        except Exception as e:  # noqa: BLE001 - classified right below
            if not retryable(e):
                raise
            if time.monotonic() + delay >= deadline:
                raise ServerUnavailableError(f"server unavailable for {deadline_s:.0f} s: {e}") from e
            time.sleep(delay * random.uniform(0.5, 1.0))  # jitter: clients restarting together spread out
            delay = min(delay * 2, 2.0)


class GrpcClient:
    """``png=False``: the masks as ``class_ids`` tensors; ``png=True``: as PNGs (``serving_png``,
    less to send, a few ms more to encode on the server)."""

    def __init__(self, server: str, model_name: str, version: Optional[int] = None, png: bool = False):
        options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
        self.channel = grpc.insecure_channel(server, options=options)
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.model_name, self.version = model_name, version
        self.signature = SERVING_PNG if png else SERVING_DEFAULT

    def request(self, images: List[bytes]) -> predict_pb2.PredictRequest:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = self.model_name
        request.model_spec.signature_name = self.signature
        if self.version:
            request.model_spec.version.value = self.version
        request.inputs[IMAGES].CopyFrom(tf.make_tensor_proto(images, dtype=tf.string, shape=[len(images)]))
        return request

    def predict(self, images: List[bytes], deadline_s: float = 30.0) -> tuple:
        """``(version, [class ids [H, W] per image])``."""
        request = self.request(images)

        def retryable(e):
            return isinstance(e, grpc.RpcError) and e.code() == grpc.StatusCode.UNAVAILABLE

        response = _with_retries(lambda t: self.stub.Predict(request, timeout=t), deadline_s, retryable)
        out = {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}
        check_refusals(out)
        if CLASS_IDS_PNG in out:
            return response.model_spec.version.value, [decode_png_mask(png) for png in out[CLASS_IDS_PNG]]
        return response.model_spec.version.value, crop_masks(out)

    def close(self):
        self.channel.close()


class RestClient:
    """Asks ``serving_png``: TF Serving's REST API answers every output of the signature."""

    def __init__(self, server: str, model_name: str, version: Optional[int] = None):
        base = server if "://" in server else f"http://{server}"
        self.url = f"{base}/v1/models/{model_name}" + (f"/versions/{version}" if version else "") + ":predict"

    def predict(self, images: List[bytes], deadline_s: float = 30.0) -> tuple:
        body = json.dumps({
            "signature_name": SERVING_PNG,
            "instances": [{IMAGES: {"b64": base64.b64encode(b).decode()}} for b in images],
        }).encode()  # fmt: skip

        def send(timeout):
            request = urllib.request.Request(
                self.url, data=body, headers={"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read())

        def retryable(e):
            if isinstance(e, urllib.error.HTTPError):
                return e.code == 503
            return isinstance(e, (urllib.error.URLError, ConnectionError))

        try:
            answer = _with_retries(send, deadline_s, retryable)
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"HTTP {e.code}: {e.read().decode(errors='replace')}") from e
        rows = answer["predictions"]
        check_refusals({ERROR: [row.get(ERROR, "") for row in rows]})
        masks = [decode_png_mask(base64.b64decode(row[CLASS_IDS_PNG]["b64"])) for row in rows]
        return answer.get("model_version"), masks

    def close(self):
        pass


def prediction_spec(
    model_base_path: Optional[str],
    dataset: Optional[str],
    version: Optional[int],
    fallback: dataset_spec.DatasetSpec,
) -> dataset_spec.DatasetSpec:
    """The classes to draw predictions in: those of the model under ``model_base_path``
    (``<serving_dir>/<model_name>``: ``version``, else its newest complete version, as the server
    picks it), else the spec ``dataset`` names (a YAML path or a name in ``datasets/specs``),
    else ``fallback`` (the caller's default). Both given: the model's, which must agree with
    ``dataset``'s classes."""
    spec = fallback
    if dataset:
        from core import config as config_lib

        spec = config_lib.load_dataset_spec(dataset, where="--dataset")
    if not model_base_path:
        return spec
    versions = layout.versions(model_base_path)
    chosen = version or (versions[-1] if versions else None)
    if chosen not in versions:
        which = f"version {chosen}" if chosen else "version"
        raise FileNotFoundError(
            f"--model-base-path {model_base_path}: no complete {which} there (has {versions})"
        )
    model_spec = dataset_spec.of_model(os.path.join(model_base_path, str(chosen)))
    if dataset and model_spec.class_names != spec.class_names:
        raise ValueError(
            f"--dataset {dataset} has classes {list(spec.class_names)} but model version {chosen} under "
            f"{model_base_path} predicts {list(model_spec.class_names)}"
        )
    return model_spec


def write_results(
    image_path: str,
    image_bytes: bytes,
    mask: np.ndarray,
    out_dir: str,
    spec: dataset_spec.DatasetSpec,
) -> tuple:
    """``<stem>.png`` (palette PNG of class ids in ``spec``'s colours) and ``<stem>_overlay.jpg``.

    Through ``core.storage`` (``tf.io.gfile``): ``out_dir`` may be a bucket (``gs://...``) as
    well as a directory, and a file written again is replaced whole.
    """
    if mask.size and int(mask.max()) >= spec.num_classes:
        raise ValueError(
            f"{image_path}: the model answered class id {int(mask.max())}, but {spec.name!r} has "
            f"{spec.num_classes} classes: predict with the model's dataset spec "
            "(--model-base-path or --dataset)"
        )
    tf.io.gfile.makedirs(out_dir)
    stem = os.path.splitext(os.path.basename(image_path))[0]
    mask_path = os.path.join(out_dir, f"{stem}.png")
    colours = spec.palette()
    storage.write_file(mask_path, palette.encode_palette_png(mask, colours))
    overlay_path = os.path.join(out_dir, f"{stem}_overlay.jpg")
    storage.write_file(
        overlay_path, palette.overlay_jpeg(image_bytes, mask, colours, background=spec.background_id)
    )
    return mask_path, overlay_path


def predict_files(server: str, model_name: str, paths: List[str], out_dir: str,
                  spec: dataset_spec.DatasetSpec, version: Optional[int] = None, rest: bool = False,
                  batch_size: int = 8, deadline_s: float = 30.0) -> list:  # fmt: skip
    """Sends ``paths`` in batches; writes each mask and overlay in ``spec``'s colours
    (``prediction_spec``); returns ``[(path, version, mask_path)]``."""
    client = (RestClient if rest else GrpcClient)(server, model_name, version)
    written = []
    try:
        for start in range(0, len(paths), batch_size):
            batch = paths[start : start + batch_size]
            images = [storage.read_file(p) for p in batch]
            served, masks = client.predict(images, deadline_s)
            for path, data, mask in zip(batch, images, masks, strict=True):
                mask_path, _ = write_results(path, data, mask, out_dir, spec)
                written.append((path, served, mask_path))
    finally:
        client.close()
    return written
