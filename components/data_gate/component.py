"""DataGate: the step TFX 1.16 lacks between ExampleValidator and Transform.

ExampleValidator only *records* anomalies; Transform and Trainer run regardless. DataGate
reads the anomalies of every split and fails the run with a plain-words list of them, unless
the config allows anomalies, in which case it records them and lets the run go on. Either way
it writes its decision (``decision.json``) for the run report. ``create_pipeline`` makes
Transform depend on it, so nothing downstream starts before the gate has passed.
"""

import json
import logging
import os

import tensorflow as tf
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx import types
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import artifact_utils, standard_artifacts

from core import artifacts

DECISION_FILE = "decision.json"
# ExampleValidator writes one Anomalies proto per split under this name.
ANOMALIES_FILE = "SchemaDiff.pb"


class DataGateDecision(types.Artifact):
    """decision.json: {"passed", "allow_anomalies", "anomalies": {split: [{feature, ...}]}}."""

    TYPE_NAME = "deeplab_tfx.DataGateDecision"


class DataGateError(RuntimeError):
    """The data failed validation and the config does not allow training on it."""


def read_anomalies(anomalies_artifact: types.Artifact) -> dict:
    """``{split: [{"feature", "severity", "description"}...]}`` for every split with anomalies."""
    found = {}
    for split in artifact_utils.decode_split_names(anomalies_artifact.split_names):
        path = os.path.join(artifact_utils.get_split_uri([anomalies_artifact], split), ANOMALIES_FILE)
        anomalies = anomalies_pb2.Anomalies()
        with tf.io.gfile.GFile(path, "rb") as f:
            anomalies.ParseFromString(f.read())
        rows = [
            {
                "feature": feature,
                "severity": anomalies_pb2.AnomalyInfo.Severity.Name(info.severity),
                "description": info.description or info.short_description,
            }
            for feature, info in sorted(anomalies.anomaly_info.items())
        ]
        if anomalies.HasField("dataset_anomaly_info"):
            info = anomalies.dataset_anomaly_info
            rows.append(
                {
                    "feature": "(dataset)",
                    "severity": anomalies_pb2.AnomalyInfo.Severity.Name(info.severity),
                    "description": info.description or info.short_description,
                }
            )
        if rows:
            found[split] = rows
    return found


def explain(found: dict) -> str:
    lines = []
    for split, rows in found.items():
        lines += [f"  split {split}: feature {r['feature']!r}: {r['description']}" for r in rows]
    return "\n".join(lines)


@component
def DataGate(  # noqa: N802 - TFX component names are classes.
    anomalies: InputArtifact[standard_artifacts.ExampleAnomalies],
    decision: OutputArtifact[DataGateDecision],
    allow_anomalies: Parameter[bool] = False,
):
    """Passes clean data; stops the run on anomalies unless ``allow_anomalies``."""
    found = read_anomalies(anomalies)
    passed = not found or allow_anomalies
    with tf.io.gfile.GFile(os.path.join(decision.uri, DECISION_FILE), "w") as f:
        json.dump(
            {artifacts.PASSED: passed, "allow_anomalies": allow_anomalies, "anomalies": found},
            f,
            indent=1,
            sort_keys=True,
        )
    decision.set_int_custom_property(artifacts.PASSED, int(passed))
    decision.set_int_custom_property(artifacts.NUM_ANOMALIES, sum(len(r) for r in found.values()))
    if not found:
        logging.info("DataGate: no anomalies in any split; the run goes on.")
        return
    if allow_anomalies:
        logging.warning(
            "DataGate: anomalies found, but validation.allow_anomalies is set; the " "run goes on:\n%s",
            explain(found),
        )
        return
    raise DataGateError(
        "DataGate stopped the run before Transform: ExampleValidator found anomalies in the "
        f"ingested data:\n{explain(found)}\nFix the data or the schema "
        f"({anomalies.uri}), or set validation.allow_anomalies=true to train anyway."
    )
