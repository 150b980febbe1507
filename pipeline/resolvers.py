"""The earlier artifacts a run needs, chosen so that a run on unchanged data is a cache hit.

TFX's ``LatestBlessedModelStrategy`` gives the newest blessed model. On a scheduled run with no
new data that is the model the last run trained and blessed, so the Trainer (warm-started from it)
and the Evaluator (judging the cached candidate against itself) see new inputs and run again; on
Airflow the Evaluator then fails outright: TFX's legacy launcher registers one artifact as two
inputs of one execution (``AlreadyExistsError: Given event already exists``). Both strategies here
answer relative to this run's own artifacts, so that unchanged data gives the inputs of last time:

- ``BaselineStrategy`` (the Evaluator's baseline): the newest blessed model *older than this run's
  candidate*. A cached candidate finds the baseline it was judged against when it was trained.
- ``WarmStartStrategy`` (the Trainer's base model, with ``trainer.warm_start``): the newest blessed
  model *not trained on this run's Examples*. A run whose ingestion was a cache hit warm-starts
  from what the cached training did; a new span starts from the model of the spans before it.
- ``PreviousSpanStrategy`` (the data gate's drift baseline): the statistics of the newest span
  *older than this run's*.

"This run's" artifact: the portable launcher (LocalDagRunner) resolves a channel to the producer's
output in this pipeline run, one artifact. TFX's legacy launcher (Airflow) resolves a Resolver's
channel to every artifact the producer ever output; this run's is the one output (or re-used, by a
cached execution) most recently, which holds while runs of one pipeline do not overlap (Airflow:
``max_active_runs=1``, set by ``pipeline/airflow_dag.py``).

Kubeflow V2 / Vertex AI compiles only TFX's two built-in strategies into its job; the compiled job
uses ``LatestBlessedModelStrategy`` (``create_pipeline(..., kfp_resolvers=True)``), so there a run on
unchanged data is cached through ingestion and Transform, and the Evaluator judges the cached
model against itself (no change: nothing new is pushed).
"""

from typing import Dict, List, Optional, Set

import ml_metadata as mlmd
from ml_metadata.proto import metadata_store_pb2
from tfx import types
from tfx import v1 as tfx
from tfx.components.evaluator import constants as evaluator_constants

STATISTICS_KEY = "statistics"
CURRENT_KEY = "current"
MODEL_KEY = "model"
BLESSING_KEY = "model_blessing"
CANDIDATE_KEY = "candidate"
EXAMPLES_KEY = "examples"
BASELINE_RESOLVER_ID = "latest_blessed_model_resolver"
WARM_START_RESOLVER_ID = "warm_start_model_resolver"
PREVIOUS_SPAN_RESOLVER_ID = "previous_span_statistics_resolver"


def this_runs(store: mlmd.MetadataStore, artifacts: List[types.Artifact]) -> Optional[types.Artifact]:
    """The artifact of ``artifacts`` this run output or re-used (see the module docstring)."""
    if len(artifacts) <= 1:
        return artifacts[0] if artifacts else None
    by_id = {a.id: a for a in artifacts}
    outputs = [
        e for e in store.get_events_by_artifact_ids(list(by_id))
        if e.type in (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT)
    ]  # fmt: skip
    newest = max(outputs, key=lambda e: (e.execution_id, e.artifact_id))
    return by_id[newest.artifact_id]


def blessed_models(input_dict: Dict[str, List[types.Artifact]]) -> list:
    """``[(model, blessing)]`` of every blessed model, newest model first."""
    blessings = {
        b.get_int_custom_property(evaluator_constants.ARTIFACT_PROPERTY_CURRENT_MODEL_ID_KEY): b
        for b in input_dict[BLESSING_KEY]
        if b.get_int_custom_property(evaluator_constants.ARTIFACT_PROPERTY_BLESSED_KEY) == 1
    }
    models = sorted(input_dict[MODEL_KEY], key=lambda m: m.id, reverse=True)
    return [(m, blessings[m.id]) for m in models if m.id in blessings]


def training_examples(store: mlmd.MetadataStore, model: types.Artifact) -> Set[int]:
    """Ids of the Examples the execution that produced ``model`` trained on."""
    events = store.get_events_by_artifact_ids([model.id])
    producers = sorted(e.execution_id for e in events if e.type == metadata_store_pb2.Event.OUTPUT)
    if not producers:
        return set()
    inputs = store.get_events_by_execution_ids(producers[:1])
    return {
        e.artifact_id for e in inputs if e.type == metadata_store_pb2.Event.INPUT and _key(e) == EXAMPLES_KEY
    }


def _key(event) -> str:
    return event.path.steps[0].key if event.path.steps else ""


def _answer(input_dict, found) -> Dict[str, List[types.Artifact]]:
    out = {key: [] for key in input_dict}
    if found:
        out[MODEL_KEY], out[BLESSING_KEY] = [found[0]], [found[1]]
    return out


class BaselineStrategy(tfx.dsl.experimental.ResolverStrategy):
    """The newest blessed model older than this run's candidate (``candidate``)."""

    def resolve_artifacts(self, store, input_dict):
        candidate = this_runs(store, input_dict[CANDIDATE_KEY])
        older = [(m, b) for m, b in blessed_models(input_dict) if candidate is None or m.id < candidate.id]
        return _answer(input_dict, older[0] if older else None)


class WarmStartStrategy(tfx.dsl.experimental.ResolverStrategy):
    """The newest blessed model not trained on this run's Examples (``examples``)."""

    def resolve_artifacts(self, store, input_dict):
        examples = this_runs(store, input_dict[EXAMPLES_KEY])
        current = {examples.id} if examples else set()
        other = [(m, b) for m, b in blessed_models(input_dict) if training_examples(store, m) != current]
        return _answer(input_dict, other[0] if other else None)


class PreviousSpanStrategy(tfx.dsl.experimental.ResolverStrategy):
    """The statistics of the newest span older than this run's (``current``), the newest
    delivery of it: what the data gate compares this span with. None for a first span.
    Relative to this run's span, so a run on unchanged data compares with what it did before
    (a cache hit), and a new span with the span before it."""

    def resolve_artifacts(self, store, input_dict):
        out = {key: [] for key in input_dict}
        current = this_runs(store, input_dict[CURRENT_KEY])
        if current is None:
            return out
        older = [s for s in input_dict[STATISTICS_KEY] if s.span < current.span]
        if older:
            out[STATISTICS_KEY] = [max(older, key=lambda s: (s.span, s.id))]
        return out


def previous_span_statistics(statistics, kfp: bool) -> tfx.dsl.Resolver:
    """The data gate's drift baseline for this run's ExampleStatistics channel ``statistics``.
    Compiled for Vertex, TFX's LatestArtifactStrategy: the statistics of the run before (which on
    a run without new data are this span's own, so nothing drifts)."""
    every = tfx.dsl.Channel(type=tfx.types.standard_artifacts.ExampleStatistics)
    if kfp:
        return tfx.dsl.Resolver(
            strategy_class=tfx.dsl.experimental.LatestArtifactStrategy, **{STATISTICS_KEY: every}
        ).with_id(PREVIOUS_SPAN_RESOLVER_ID)
    return tfx.dsl.Resolver(
        strategy_class=PreviousSpanStrategy, **{STATISTICS_KEY: every, CURRENT_KEY: statistics}
    ).with_id(PREVIOUS_SPAN_RESOLVER_ID)


def _blessed_channels() -> dict:
    return {
        MODEL_KEY: tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        BLESSING_KEY: tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
    }


def latest_blessed_model(resolver_id: str) -> tfx.dsl.Resolver:
    """TFX's own: the newest blessed model, whatever this run's artifacts are."""
    return tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy, **_blessed_channels()
    ).with_id(resolver_id)


def baseline_model(candidate, kfp: bool) -> tfx.dsl.Resolver:
    """The Evaluator's baseline for the Model channel ``candidate`` (none on the first run)."""
    if kfp:
        return latest_blessed_model(BASELINE_RESOLVER_ID)
    return tfx.dsl.Resolver(
        strategy_class=BaselineStrategy, **_blessed_channels(), **{CANDIDATE_KEY: candidate}
    ).with_id(BASELINE_RESOLVER_ID)


def warm_start_model(examples, kfp: bool) -> tfx.dsl.Resolver:
    """The Trainer's base model for this run's Examples channel ``examples`` (none on the first run)."""
    if kfp:
        return latest_blessed_model(WARM_START_RESOLVER_ID)
    return tfx.dsl.Resolver(
        strategy_class=WarmStartStrategy, **_blessed_channels(), **{EXAMPLES_KEY: examples}
    ).with_id(WARM_START_RESOLVER_ID)
