"""``assets.extra/tf_serving_warmup_requests``: PredictionLog records TF Serving replays on load.

The first call of a SavedModel builds and optimises its graph, which takes seconds; TF Serving
replays these requests when it loads a version, before marking it AVAILABLE, so no client pays
for it. The requests are real eval images, one per request, in the form clients send them
(``serving_default``, encoded JPEG bytes), so the replay exercises the path real requests take.
Read and written through ``tf.io.gfile``, so the examples and the version may be on object stores.
"""

import os

import tensorflow as tf
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

from core import artifacts, features
from core.signatures import IMAGES, SERVING_DEFAULT

# TF Serving's name, beside the model's ``artifacts.MODEL_SPEC_FILE``, which the push copies with it.
WARMUP_FILE = os.path.join(artifacts.ASSETS_EXTRA, "tf_serving_warmup_requests")


def eval_records(examples_uri: str, count: int) -> list:
    """The first ``count`` serialized eval examples, in file order."""
    files = sorted(tf.io.gfile.glob(artifacts.split_files(examples_uri, features.EVAL_SPLIT)))
    if not files:
        raise FileNotFoundError(f"no eval split under {examples_uri}")
    return [record.numpy() for record in tf.data.TFRecordDataset(files, compression_type="GZIP").take(count)]


def eval_images(examples_uri: str, count: int) -> list:
    """The encoded JPEG bytes of the first ``count`` eval examples, in file order."""
    return [
        tf.train.Example.FromString(record).features.feature[features.IMAGE_KEY].bytes_list.value[0]
        for record in eval_records(examples_uri, count)
    ]


def prediction_logs(images: list, model_name: str) -> list:
    logs = []
    for image in images:
        request = predict_pb2.PredictRequest(
            model_spec=model_pb2.ModelSpec(name=model_name, signature_name=SERVING_DEFAULT)
        )
        request.inputs[IMAGES].CopyFrom(tf.make_tensor_proto([image], dtype=tf.string))
        logs.append(
            prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
        )
    return logs


def write(version_dir: str, logs: list) -> str:
    path = os.path.join(version_dir, WARMUP_FILE)
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.TFRecordWriter(path) as writer:
        for log in logs:
            writer.write(log.SerializeToString())
    return path


def read(version_dir: str) -> list:
    """The PredictionLog records of a pushed version's warm-up file."""
    path = os.path.join(version_dir, WARMUP_FILE)
    return [
        prediction_log_pb2.PredictionLog.FromString(record.numpy())
        for record in tf.data.TFRecordDataset(path)
    ]
