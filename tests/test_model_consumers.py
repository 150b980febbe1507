"""The pushed model, loaded the way its consumers load it, answers as our own code does.

TF Serving does not run Python: its SavedModelBundle loads the MetaGraph tagged ``serve`` into a
session, runs the init op (which fills the Transform graph's tables), and serves a request by
feeding and fetching the SignatureDef's tensor names, first replaying the version's warm-up
PredictionLogs. ``tf.compat.v1.saved_model.loader.load`` is that same C++ loader, so a model that
answers here is one the real server can load and call, whatever our stand-in server does.

A Keras user runs ``tf_keras.models.load_model`` in a process that has none of our packages, as
the README says: here a fresh Python process that imports nothing of this repository.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from core import config as config_lib
from core import dataset_spec, features, paths
from core.dataset_spec import VOC_SPEC
from core.signatures import CLASS_IDS, EXAMPLES, HEIGHT, IMAGES, PROBABILITIES, TRANSFORM_FEATURES, WIDTH
from serving import layout, warmup
from tests import reference
from tests.conftest import read_examples
from tests.test_layering import LEVEL
from trainer import export, training
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
        assert set(bundle) == set(expected) == {"class_ids", "height", "width", "error"}
        for name in expected:
            np.testing.assert_array_equal(bundle[name], expected[name], err_msg=name)
        height, width = int(bundle["height"][0]), int(bundle["width"][0])
        decoded = tf.io.decode_jpeg(image).shape
        assert (height, width) == (decoded[0], decoded[1])
        assert (bundle["class_ids"][0, :height, :width] < VOC_SPEC.num_classes).all()


# What the README tells a Keras user to run, and nothing of ours: the model's own Transform
# signature makes its input from serialized tf.Examples, the Keras model predicts (called, not
# `predict`, whose first call traces Keras' predict loop: 15 s more), the signature serves.
KERAS_USER = """
import json, sys
import numpy as np
import tensorflow as tf
import tf_keras

model_dir, examples_file, out, names = sys.argv[1:]
names = json.loads(names)
net = tf_keras.models.load_model(model_dir, compile=False)
serialized = tf.constant(list(tf.data.TFRecordDataset(examples_file).as_numpy_iterator()))
transformed = net.signatures[names["transform"]](**{names["examples"]: serialized})
jpegs = tf.io.parse_example(serialized, {names["image_key"]: tf.io.FixedLenFeature([], tf.string)})
served = net.signatures[names["serve"]](**{names["images"]: jpegs[names["image_key"]]})
np.savez(out, logits=net(transformed[names["image"]], training=False).numpy(),
         **{k: transformed[k].numpy() for k in names["transformed"]},
         **{f"served_{k}": v.numpy() for k, v in served.items()})
print(json.dumps({"modules": sorted({m.split(".")[0] for m in sys.modules}), "path": sys.path}))
"""


def test_keras_loads_the_pushed_model_in_a_process_that_never_imported_ours(pushed, learning_data, tmp_path):
    examples_uri, _ = learning_data
    with tf.io.TFRecordWriter(str(tmp_path / "examples.tfrecord")) as records:
        for example in read_examples(examples_uri, features.EVAL_SPLIT)[:3]:
            records.write(example.SerializeToString())
    sizes = (features.ORIGINAL_HEIGHT, features.ORIGINAL_WIDTH)
    names = {
        "transform": TRANSFORM_FEATURES, "examples": EXAMPLES, "image": features.IMAGE,
        "transformed": [features.IMAGE, *sizes], "image_key": features.IMAGE_KEY,
        "serve": SERVING_DEFAULT, "images": IMAGES,
    }  # fmt: skip
    out = tmp_path / "keras_user.npz"
    # -I: neither the working directory nor PYTHONPATH on sys.path. Our packages stay importable
    # (the venv's editable install), so what counts is that nothing imported them.
    user = subprocess.run(
        [sys.executable, "-I", "-c", KERAS_USER, pushed, str(tmp_path / "examples.tfrecord"), str(out),
         json.dumps(names)],
        cwd=tmp_path, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert user.returncode == 0, user.stderr[-4000:]
    process = json.loads(user.stdout.strip().splitlines()[-1])
    assert not set(process["modules"]) & set(LEVEL), "the Keras user's process imported our packages"
    assert paths.PROJECT_ROOT not in process["path"]
    got = np.load(out, allow_pickle=False)
    # Our model on the pushed weights, built as the untrained_model fixture builds it, on the
    # images that the user's process transformed.
    image = got[features.IMAGE]
    net = training.build_model(
        config_lib.load_config("tiny").trainer, image.shape[1], 1, images_normalized=False,
        num_classes=dataset_spec.of_model(pushed).num_classes,
    )  # fmt: skip
    net.load_weights(os.path.join(pushed, "variables", "variables")).assert_existing_objects_matched()
    ours = net(image, training=False)
    np.testing.assert_allclose(got["logits"], ours.numpy(), rtol=1e-6, atol=1e-6)
    # The signature that the Keras-loaded model carries serves our model's masks (its graph
    # against eager ops: equal but where two classes nearly tie).
    expected = export.to_original_resolution(ours, *(got[k] for k in sizes), with_probabilities=True)
    np.testing.assert_array_equal(got["served_height"], expected[HEIGHT].numpy())
    np.testing.assert_array_equal(got["served_width"], expected[WIDTH].numpy())
    reference.assert_same_masks_but_near_ties(
        got["served_class_ids"], expected[CLASS_IDS], expected[PROBABILITIES]
    )
