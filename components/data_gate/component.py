"""DataGate: the step TFX 1.16 lacks between the validators and Transform.

ExampleValidator only *records* anomalies; Transform and Trainer run regardless. DataGate reads
the anomalies of every split (the schema's) and the drift since the previous span (``drift.py``)
and fails the run with a plain-words list of them, unless the config allows them, in which case it
records them and lets the run go on. Either way it writes its decision (``decision.json``) for the
run report. ``create_pipeline`` makes Transform depend on it, so nothing downstream starts before
the gate has passed.
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

from components.data_gate import drift as drift_lib
from core import artifacts
from core.config import ValidationConfig

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
    statistics: InputArtifact[standard_artifacts.ExampleStatistics] = None,
    previous_statistics: InputArtifact[standard_artifacts.ExampleStatistics] = None,
    allow_anomalies: Parameter[bool] = False,
    max_drift: Parameter[float] = ValidationConfig.max_drift,
    accept_drift_of_span: Parameter[int] = ValidationConfig.accept_drift_of_span,
):
    """Passes clean data; stops the run on anomalies unless ``allow_anomalies``, and on a span
    whose ``statistics`` drifted by more than ``max_drift`` from ``previous_statistics`` (the
    previous span's; none on a first span) unless it is span ``accept_drift_of_span``. Without
    ``statistics`` (the compiled Vertex job) drift is not checked, and the decision says so."""
    found = read_anomalies(anomalies)
    drifted = (
        drift_lib.compare(statistics, previous_statistics, max_drift) if statistics is not None else None
    )
    span = statistics.span if statistics is not None else None
    drift_accepted = bool(drifted) and span == accept_drift_of_span
    note = drift_lib.summary(drifted, checked=statistics is not None, span=span or 0)
    if drift_accepted:
        note = f"accepted (validation.accept_drift_of_span={span}): {note}"
    passed = (not found or allow_anomalies) and (not drifted or drift_accepted)
    with tf.io.gfile.GFile(os.path.join(decision.uri, DECISION_FILE), "w") as f:
        json.dump(
            {
                artifacts.PASSED: passed,
                "allow_anomalies": allow_anomalies,
                "anomalies": found,
                "accept_drift_of_span": accept_drift_of_span,
                # None: nothing to compare with ("drift_note" says why); {}: nothing drifted.
                "drift": drifted,
                "drift_note": note,
            },
            f,
            indent=1,
            sort_keys=True,
        )
    decision.set_int_custom_property(artifacts.PASSED, int(passed))
    decision.set_int_custom_property(artifacts.NUM_ANOMALIES, sum(len(r) for r in found.values()))
    decision.set_int_custom_property(artifacts.NUM_DRIFTED, sum(len(r) for r in (drifted or {}).values()))
    logging.info("DataGate: drift: %s", note)
    problems = []
    if found and not allow_anomalies:
        problems.append(
            f"ExampleValidator found anomalies in the ingested data:\n{explain(found)}\nFix the data or "
            f"the schema ({anomalies.uri}), or set validation.allow_anomalies=true to train anyway."
        )
    if drifted and not drift_accepted:
        problems.append(
            "the span drifted from the previous one (Jensen-Shannon divergence above "
            f"validation.max_drift):\n{explain(drifted)}\nIf the change is real, accept it: "
            f"validation.accept_drift_of_span={span} (it lets this span alone through)."
        )
    if problems:
        raise DataGateError("DataGate stopped the run before Transform: " + "\n".join(problems))
    if found or drifted:
        allowed = "\n".join(explain(rows) for rows in (found, drifted) if rows)
        logging.warning("DataGate: allowed by the config, the run goes on:\n%s", allowed)
    else:
        logging.info("DataGate: no anomalies in any split; the run goes on.")
