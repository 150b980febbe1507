"""The pushed model, loaded the way TF Serving loads it, answers as ``tf.saved_model.load`` does.

TF Serving does not run Python: its SavedModelBundle loads the MetaGraph tagged ``serve`` into a
session, runs the init op (which fills the Transform graph's tables), and serves a request by
feeding and fetching the SignatureDef's tensor names, first replaying the version's warm-up
PredictionLogs. ``tf.compat.v1.saved_model.loader.load`` is that same C++ loader, so a model that
answers here is one the real server can load and call, whatever our stand-in server does.
"""

import os

import numpy as np
import pytest
import tensorflow as tf

from core.dataset_spec import VOC_SPEC
from serving import layout, warmup
from trainer.export import SERVING_DEFAULT

pytestmark = pytest.mark.slow
MODEL = "deeplab"


@pytest.fixture(scope="module")
def pushed(untrained_model, learning_data, tmp_path_factory):
    """Version 1 of the untrained model, pushed with warm-up requests made of 3 eval images."""
    examples_uri, _ = learning_data
    base = str(tmp_path_factory.mktemp("consumers") / MODEL)
    images = warmup.eval_images(examples_uri, 3)
    version, _ = layout.push(
        untrained_model, base, "model/1", lambda d: warmup.write(d, warmup.prediction_logs(images, MODEL))
    )
    return os.path.join(base, str(version))


def test_tf_serving_session_bundle_answers_the_warmup_requests_like_saved_model_load(pushed):
    logs = warmup.read(pushed)
    assert len(logs) == 3
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], pushed)
        signature = meta_graph.signature_def[SERVING_DEFAULT]
        assert signature.method_name == "tensorflow/serving/predict"
        fetches = {name: info.name for name, info in signature.outputs.items()}
        answers = []
        for log in logs:
            request = log.predict_log.request
            assert request.model_spec.signature_name == SERVING_DEFAULT
            feed = {
                signature.inputs[name].name: tf.make_ndarray(proto) for name, proto in request.inputs.items()
            }
            answers.append(session.run(fetches, feed_dict=feed))
    serve = tf.saved_model.load(pushed).signatures[SERVING_DEFAULT]
    for log, bundle in zip(logs, answers, strict=True):
        [image] = tf.make_ndarray(log.predict_log.request.inputs["images"])
        expected = {k: v.numpy() for k, v in serve(images=tf.constant([image])).items()}
        assert set(bundle) == set(expected) == {"class_ids", "height", "width"}
        for name in expected:
            np.testing.assert_array_equal(bundle[name], expected[name], err_msg=name)
        height, width = int(bundle["height"][0]), int(bundle["width"][0])
        decoded = tf.io.decode_jpeg(image).shape
        assert (height, width) == (decoded[0], decoded[1])
        assert (bundle["class_ids"][0, :height, :width] < VOC_SPEC.num_classes).all()
