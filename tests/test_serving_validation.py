"""The serving validation before the push: what TF Serving could not load or would answer
otherwise is refused, with the reason, and not pushed.

The good path (a trained model validated, its figures in ML Metadata and the report) runs in every
pipeline test (``test_pipeline_local.py``, ``test_orchestration.py``); here the refusals.
"""

import json
import os
import shutil

import pytest
import tensorflow as tf
from ml_metadata import metadata_store
from tensorflow.core.protobuf import saved_model_pb2
from tfx import v1 as tfx

from components.serving_pusher.component import ServingPusher
from components.serving_validator.component import ServingValidator
from core import artifacts, features
from core.signatures import CLASS_IDS, EXAMPLES, HEIGHT, IMAGES, SERVING_DEFAULT, SERVING_EXAMPLES, WIDTH
from serving import layout, validation, warmup
from tests.helpers.mlmd import custom_properties

SIDE = 16


class _DropoutAtServing(tf.Module):
    """A model whose masks change from call to call, as one exported with dropout left on: it
    loads and answers everywhere, and the Evaluator's scores say nothing of the next answer."""

    def _answer(self, n):
        ids = tf.random.uniform([n, SIDE, SIDE], 0, 21, dtype=tf.int32)
        side = tf.fill([n], tf.constant(SIDE, tf.int64))
        return {CLASS_IDS: tf.cast(ids, tf.uint8), HEIGHT: side, WIDTH: side}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=EXAMPLES)])
    def serve_examples(self, examples):
        return self._answer(tf.size(examples))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=IMAGES)])
    def serve_images(self, images):
        return self._answer(tf.size(images))


def _model_artifact(model_dir_of, root) -> str:
    """A Trainer-like Model artifact directory (``<uri>/Format-Serving``) made by ``model_dir_of``."""
    uri = os.path.join(root, "model")
    model_dir_of(artifacts.serving_model_dir(uri))
    return uri


def test_a_model_that_answers_otherwise_than_evaluated_is_refused_and_not_pushed(learning_data, tmp_path):
    examples_uri, _ = learning_data
    module = _DropoutAtServing()

    def save(path):
        signatures = {SERVING_EXAMPLES: module.serve_examples, SERVING_DEFAULT: module.serve_images}
        tf.saved_model.save(module, path, signatures=signatures)

    model_uri = _model_artifact(save, tmp_path)
    importers = {
        "examples": (tfx.types.standard_artifacts.Examples, examples_uri, {}),
        "model": (tfx.types.standard_artifacts.Model, model_uri, {}),
        # As the Evaluator leaves a blessed candidate.
        "blessing": (tfx.types.standard_artifacts.ModelBlessing, str(tmp_path / "blessing"), {"blessed": 1}),
        "evaluation": (tfx.types.standard_artifacts.ModelEvaluation, str(tmp_path / "evaluation"), {}),
    }
    nodes = {
        key: tfx.dsl.Importer(
            source_uri=uri, artifact_type=kind, custom_properties=props,
            properties={"split_names": json.dumps(list(features.SPLITS))} if key == "examples" else None,
        ).with_id(key)
        for key, (kind, uri, props) in importers.items()
    }  # fmt: skip
    given = {key: node.outputs["result"] for key, node in nodes.items()}
    validator = ServingValidator(
        model=given["model"], model_blessing=given["blessing"], examples=given["examples"], num_examples=2,
        warmup_requests=1,
    )  # fmt: skip
    base = str(tmp_path / "serving" / "deeplab")
    pusher = ServingPusher(
        model=given["model"], model_blessing=given["blessing"], evaluation=given["evaluation"],
        examples=given["examples"], infra_blessing=validator.outputs["blessing"], model_base_path=base,
        model_name="deeplab",
    )  # fmt: skip
    db = str(tmp_path / "metadata.sqlite")
    connection = tfx.orchestration.metadata.sqlite_metadata_connection_config(db)
    pipeline = tfx.dsl.Pipeline(
        pipeline_name="validate", pipeline_root=str(tmp_path / "root"), enable_cache=False,
        components=[*nodes.values(), validator, pusher], metadata_connection_config=connection,
    )  # fmt: skip
    tfx.orchestration.LocalDagRunner().run(pipeline)

    store = metadata_store.MetadataStore(connection)
    [blessing] = store.get_artifacts_by_type("InfraBlessing")
    [pushed] = store.get_artifacts_by_type("PushedModel")
    verdict = custom_properties(blessing)
    assert verdict[artifacts.BLESSED] == 0
    pixels = 2 * SIDE * SIDE
    reason = verdict[artifacts.NOT_VALIDATED_REASON]
    assert reason.startswith("its masks differ from those the Evaluator scored on ")
    assert f" of {pixels} pixels " in reason and "of 2 eval images" in reason
    assert "(infra_validator.max_mask_disagreement)" in reason
    assert tf.io.gfile.exists(os.path.join(blessing.uri, artifacts.INFRA_NOT_BLESSED_FILE))
    # It loaded and answered: the figures are there, the warm-up record and the two examples.
    recorded = json.loads(open(os.path.join(blessing.uri, artifacts.VALIDATION_FILE)).read())
    assert recorded["num_requests"] == 3 and recorded["pixels"] == pixels
    assert recorded["load_seconds"] > 0 and 0 < recorded["latency_p50_ms"] <= recorded["latency_p99_ms"]
    assert verdict[artifacts.PEAK_MEMORY_MB] == pytest.approx(recorded["peak_memory_mb"])
    assert len(warmup.read(blessing.uri)) == 1

    told = custom_properties(pushed)
    assert told[artifacts.PUSHED] == 0
    assert told[artifacts.NOT_PUSHED_REASON] == f"refused by the serving validation: {reason}"
    assert layout.version_numbers(base) == []


def _examples(learning_data, count=2) -> list:
    return warmup.eval_records(learning_data[0], count)


def test_a_signature_tf_serving_cannot_run_is_refused_though_python_loads_it(
    untrained_model, learning_data, tmp_path
):
    """TF Serving runs a signature by its SignatureDef's tensor names; ``tf.saved_model.load``
    (TFMA, the report) calls the function the object graph keeps, and never reads them."""
    broken = str(tmp_path / "broken")
    shutil.copytree(untrained_model, broken)
    proto = saved_model_pb2.SavedModel()
    path = os.path.join(broken, artifacts.SAVED_MODEL_FILE)
    with open(path, "rb") as f:
        proto.ParseFromString(f.read())
    outputs = proto.meta_graphs[0].signature_def[SERVING_EXAMPLES].outputs
    outputs[CLASS_IDS].name = "no_such_tensor:0"
    with open(path, "wb") as f:
        f.write(proto.SerializeToString())

    outcome = validation.validate(broken, _examples(learning_data))
    assert not outcome.validated
    assert outcome.reason.startswith("TF Serving's loader could not load or run it (exit 1: ValueError: ")
    assert "no_such_tensor:0" in outcome.reason


def test_a_model_that_outgrows_the_memory_limit_is_refused(untrained_model, learning_data):
    outcome = validation.validate(untrained_model, _examples(learning_data), max_memory_mb=150)
    assert not outcome.validated
    assert outcome.reason.startswith(
        "it needed more than 150 MB of memory to load and serve (infra_validator.max_memory_mb): "
    )
    assert outcome.peak_memory_mb > 150
