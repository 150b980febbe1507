"""Beam's counters of a finished job, summed by name: what a job counted, for its summary."""

from typing import Optional

import apache_beam as beam


def counters(result, namespace: str) -> Optional[dict]:
    """``{counter name: total}`` of ``namespace`` (committed values where the runner has them);
    None where the runner reports no metrics: counters are reporting only, never a job's outcome."""
    try:
        query = result.metrics().query(beam.metrics.MetricsFilter().with_namespace(namespace))
    except Exception:  # noqa: BLE001 - metrics are reporting only; some runners lack them.
        return None
    totals = {}
    for counter in query["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + value
    return dict(sorted(totals.items()))
