"""Drift between spans: TFDV's Jensen-Shannon comparator on the features a span can move in.

This span's statistics (StatisticsGen) against the previous span's (``pipeline/resolvers.py``,
``PreviousSpanStrategy``), split by split, by TFDV's own comparator, as TFX's DistributionValidator
runs it: a schema inferred from the previous span with a drift comparator on each feature below,
and ``tfdv.validate_statistics(..., previous_statistics=...)``. The Jensen-Shannon divergence is 0
for the same distribution and 1 for disjoint ones; above ``validation.max_drift`` for any feature,
the gate stops the run (unless ``validation.accept_drift_of_span`` is this span), naming the feature
and the divergence.

In the gate rather than TFX's DistributionValidator component: TFX 1.16's legacy launcher (Airflow)
names an output ``<key>:<run id>``, and DistributionValidator's ``anomalies`` then collides with
ExampleValidator's in ML Metadata (``AlreadyExistsError``) on the first run.
"""

import json
from typing import Optional

import tensorflow_data_validation as tfdv
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2
from tfx import types
from tfx.components.statistics_gen import stats_artifact_utils
from tfx.types import artifact_utils

from core import features

DRIFT_FEATURES = (
    features.SOURCE_KEY,
    features.IMAGE_FORMAT_KEY,
    features.HEIGHT_KEY,
    features.WIDTH_KEY,
    features.CLASSES_PRESENT_KEY,
)
_DRIFT = frozenset(
    {
        anomalies_pb2.AnomalyInfo.Type.COMPARATOR_JENSEN_SHANNON_DIVERGENCE_HIGH,
        anomalies_pb2.AnomalyInfo.Type.COMPARATOR_L_INFTY_HIGH,
    }
)


def comparator_schema(previous, max_drift: float) -> schema_pb2.Schema:
    """A schema inferred from the previous span's statistics, with a Jensen-Shannon comparator at
    ``max_drift`` on each of ``DRIFT_FEATURES`` that it has."""
    schema = tfdv.infer_schema(previous)
    for feature in schema.feature:
        if feature.name in DRIFT_FEATURES:
            feature.drift_comparator.jensen_shannon_divergence.threshold = max_drift
    return schema


def compare(
    statistics: types.Artifact, previous: Optional[types.Artifact], max_drift: float
) -> Optional[dict]:
    """``{split: [{"feature", "severity", "description"}]}`` of the features that moved beyond
    ``max_drift`` (empty: none did); None when there is no earlier span to compare with."""
    if previous is None:
        return None
    found = {}
    for split in artifact_utils.decode_split_names(statistics.split_names):
        before = stats_artifact_utils.load_statistics(previous, split).proto()
        now = stats_artifact_utils.load_statistics(statistics, split).proto()
        anomalies = tfdv.validate_statistics(
            now, comparator_schema(before, max_drift), previous_statistics=before
        )
        rows = [
            {
                "feature": feature,
                "severity": anomalies_pb2.AnomalyInfo.Severity.Name(info.severity),
                # TFDV puts the comparator's finding (divergence, threshold) in its reasons.
                "description": " ".join(r.description for r in info.reason if r.type in _DRIFT),
            }
            for feature, info in sorted(anomalies.anomaly_info.items())
            if any(r.type in _DRIFT for r in info.reason)
        ]
        if rows:
            found[split] = rows
    return found


def summary(found: Optional[dict], checked: bool, span: int) -> str:
    """One line for the log and the decision: what was compared, and what moved."""
    if not checked:
        return "not checked: this orchestrator's job has no previous-span baseline (Vertex)"
    if found is None:
        if span == 0:
            return "not compared: a data root without span specs is one span, span 0, with no earlier one"
        return f"span {span} is the first span the gate passed: no earlier span to compare with"
    if not found:
        return "no feature moved beyond validation.max_drift since the previous span"
    return json.dumps(found)
