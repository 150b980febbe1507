"""The earlier artifacts a run needs, chosen so that a run on unchanged data is a cache hit.

TFX's ``LatestBlessedModelStrategy`` gives the newest blessed model. On a scheduled run with no
new data that is the model the last run trained and blessed, so the Trainer (warm-started from it)
and the Evaluator (judging the cached candidate against itself) see new inputs and run again; on
Airflow the Evaluator then fails outright: TFX's legacy launcher registers one artifact as two
inputs of one execution (``AlreadyExistsError: Given event already exists``). The strategies here
answer relative to this run's own artifacts, so that unchanged data gives the inputs of last time:

- ``BaselineStrategy`` (the Evaluator's baseline): the newest blessed model *older than this run's
  candidate*. A cached candidate finds the baseline it was judged against when it was trained.
- ``WarmStartStrategy`` (the Trainer's base model, with ``trainer.warm_start``): the newest blessed
  model *not trained on this run's Examples*. A run whose ingestion was a cache hit warm-starts
  from what the cached training did; a new span starts from the model of the spans before it.
- ``PreviousSpanStrategy`` (the data gate's drift baseline): the statistics of the newest span
  *older than this run's* that the gate passed.
- ``SpanWindowStrategy`` (what Transform, the Trainer and the Evaluator read): this run's Examples
  and those of the newest ``data.num_spans`` - 1 older spans the gate let in.

"This run's" artifact: the portable launcher (LocalDagRunner) resolves a channel to the producer's
output in this pipeline run, one artifact. TFX's legacy launcher (Airflow) resolves a Resolver's
channel to every artifact the producer ever output; this run's is the one output (or re-used, by a
cached execution) most recently, which holds while runs of one pipeline do not overlap (Airflow:
``max_active_runs=1``, set by ``pipeline/airflow_dag.py``).

Kubeflow V2 / Vertex AI compiles only TFX's two built-in strategies into its job; the compiled job
uses ``LatestBlessedModelStrategy`` (``create_pipeline(..., kfp_resolvers=True)``), has no drift
baseline and reads this run's span alone. There a run on unchanged data is cached through
ingestion and Transform; without warm start the Trainer is cached too and the Evaluator judges the
cached model against itself, which the pusher does not push again; with warm start
(``vertex.yaml``) the Trainer retrains from the last blessed model, and the new model may be
blessed and pushed.
"""

from typing import Dict, List, Optional, Set

import ml_metadata as mlmd
from ml_metadata.proto import metadata_store_pb2
from tfx import types
from tfx import v1 as tfx
from tfx.components.evaluator import constants as evaluator_constants
from tfx.types import standard_component_specs

from core import artifacts

# The channels' keys: TFX's own names where the same channel is a TFX component's input (also the
# event keys these strategies read in ML Metadata), ours for "this run's" artifact.
STATISTICS_KEY = standard_component_specs.STATISTICS_KEY
MODEL_KEY = standard_component_specs.MODEL_KEY
BLESSING_KEY = standard_component_specs.MODEL_BLESSING_KEY
EXAMPLES_KEY = standard_component_specs.EXAMPLES_KEY
CURRENT_KEY = "current"
CANDIDATE_KEY = "candidate"
BASELINE_RESOLVER_ID = "baseline_model_resolver"
WARM_START_RESOLVER_ID = "warm_start_model_resolver"
PREVIOUS_SPAN_RESOLVER_ID = "previous_span_statistics_resolver"
SPAN_WINDOW_RESOLVER_ID = "span_window_resolver"
# The data gate's execution type (its module path) ends with its name, on every launcher.
GATE_TYPE_SUFFIX = "DataGate"
TRANSFORM_TYPE_SUFFIX = "Transform"
RESOLVER_TYPE_SUFFIX = "Resolver"


def this_runs(store: mlmd.MetadataStore, artifacts: List[types.Artifact]) -> Optional[types.Artifact]:
    """The artifact of ``artifacts`` this run output or re-used (see the module docstring)."""
    if len(artifacts) <= 1:
        return artifacts[0] if artifacts else None
    by_id = {a.id: a for a in artifacts}
    outputs = [
        e for e in store.get_events_by_artifact_ids(list(by_id))
        if e.type in (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT)
    ]  # fmt: skip
    # Not what a Resolver handed on: the legacy launcher records that as the Resolver's output
    # too, and the window Resolver re-outputs older spans' Examples.
    executions = {e.id: e for e in store.get_executions_by_id({e.execution_id for e in outputs})}
    type_names = {
        t.id: t.name for t in store.get_execution_types_by_id({e.type_id for e in executions.values()})
    }
    produced = [
        e
        for e in outputs
        if not type_names[executions[e.execution_id].type_id].endswith(RESOLVER_TYPE_SUFFIX)
    ]
    newest = max(produced or outputs, key=lambda e: (e.execution_id, e.artifact_id))
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
    """The newest blessed model not trained on this run's Examples (``examples``; a model trained
    on a window that holds them counts as trained on them)."""

    def resolve_artifacts(self, store, input_dict):
        examples = this_runs(store, input_dict[EXAMPLES_KEY])
        other = [
            (m, b)
            for m, b in blessed_models(input_dict)
            if examples is None or examples.id not in training_examples(store, m)
        ]
        return _answer(input_dict, other[0] if other else None)


def passed_the_gate(store: mlmd.MetadataStore, statistics: List[types.Artifact]) -> List[types.Artifact]:
    """Those of ``statistics`` that a DataGate execution took as its input and passed (its
    execution complete, or a cache hit of one that was): a span the gate stopped is no baseline,
    or the next span that drifted the same way would pass."""
    if not statistics:
        return []
    events = store.get_events_by_artifact_ids([s.id for s in statistics])
    consumers = {}
    for event in events:
        if event.type == metadata_store_pb2.Event.INPUT and _key(event) == STATISTICS_KEY:
            consumers.setdefault(event.execution_id, set()).add(event.artifact_id)
    passed = set()
    for execution in store.get_executions_by_id(list(consumers)):
        kind = store.get_execution_types_by_id([execution.type_id])[0].name
        done = (metadata_store_pb2.Execution.COMPLETE, metadata_store_pb2.Execution.CACHED)
        if kind.endswith(GATE_TYPE_SUFFIX) and execution.last_known_state in done:
            passed |= consumers[execution.id]
    return [s for s in statistics if s.id in passed]


def transformed(store: mlmd.MetadataStore, examples: List[types.Artifact]) -> List[types.Artifact]:
    """Those of ``examples`` that a Transform execution took (complete, or a cache hit of one
    that was): Transform runs only once the data gate has passed, so these are spans it let in."""
    if not examples:
        return []
    consumers = {}
    for event in store.get_events_by_artifact_ids([e.id for e in examples]):
        if event.type == metadata_store_pb2.Event.INPUT and _key(event) == EXAMPLES_KEY:
            consumers.setdefault(event.execution_id, set()).add(event.artifact_id)
    let_in = set()
    done = (metadata_store_pb2.Execution.COMPLETE, metadata_store_pb2.Execution.CACHED)
    for execution in store.get_executions_by_id(list(consumers)):
        kind = store.get_execution_types_by_id([execution.type_id])[0].name
        if kind.endswith(TRANSFORM_TYPE_SUFFIX) and execution.last_known_state in done:
            let_in |= consumers[execution.id]
    return [e for e in examples if e.id in let_in]


class SpanWindowStrategy(tfx.dsl.experimental.ResolverStrategy):
    """This run's Examples (``current``) and those of the ``num_spans - 1`` newest older spans the
    gate let in (0: all), the newest delivery of each: what Transform, the Trainer and the
    Evaluator read, as TFX's rolling-range resolvers do. Relative to this run's span, so unchanged
    data gives the window of last time (a cache hit)."""

    def __init__(self, num_spans: int = 0):
        self._num_spans = num_spans

    def resolve_artifacts(self, store, input_dict):
        current = this_runs(store, input_dict[CURRENT_KEY])
        if current is None:
            return {EXAMPLES_KEY: [], CURRENT_KEY: []}
        # Older spans of the same dataset (a changed dataset spec starts the window afresh).
        dataset = current.get_string_custom_property(artifacts.DATASET_PROPERTY)
        same = [
            e
            for e in input_dict[EXAMPLES_KEY]
            if e.get_string_custom_property(artifacts.DATASET_PROPERTY) == dataset
        ]
        older = transformed(store, [e for e in same if e.span < current.span])
        newest = {}
        for examples in sorted(older, key=lambda e: (e.span, e.version or 0, e.id)):
            newest[examples.span] = examples
        spans = sorted(newest, reverse=True)
        if self._num_spans:
            spans = spans[: self._num_spans - 1]
        window = [newest[span] for span in sorted(spans)] + [current]
        # ``current`` is not read downstream; given twice, TFX's legacy launcher (Airflow) would
        # record one artifact as two outputs of this execution, which ML Metadata refuses.
        return {EXAMPLES_KEY: window, CURRENT_KEY: []}


def span_window(examples, num_spans: int) -> tfx.dsl.Resolver:
    """The Examples of the newest ``num_spans`` spans up to this run's channel ``examples``.
    Not in the compiled Vertex job, whose compiler knows only TFX's built-in strategies: there
    the pipeline reads this run's span alone."""
    every = tfx.dsl.Channel(type=tfx.types.standard_artifacts.Examples)
    return tfx.dsl.Resolver(
        strategy_class=SpanWindowStrategy,
        config={"num_spans": num_spans},
        **{EXAMPLES_KEY: every, CURRENT_KEY: examples},
    ).with_id(SPAN_WINDOW_RESOLVER_ID)


class PreviousSpanStrategy(tfx.dsl.experimental.ResolverStrategy):
    """The statistics of the newest span older than this run's (``current``) that passed the
    data gate, the newest delivery of it: what the gate compares this span with. None for a
    first span. Relative to this run's span, so a run on unchanged data compares with what it did
    before (a cache hit), and a new span with the last span the gate let through."""

    def resolve_artifacts(self, store, input_dict):
        out = {key: [] for key in input_dict}
        current = this_runs(store, input_dict[CURRENT_KEY])
        if current is None:
            return out
        older = passed_the_gate(store, [s for s in input_dict[STATISTICS_KEY] if s.span < current.span])
        if older:
            out[STATISTICS_KEY] = [max(older, key=lambda s: (s.span, s.id))]
        return out


def previous_span_statistics(statistics) -> tfx.dsl.Resolver:
    """The data gate's drift baseline for this run's ExampleStatistics channel ``statistics``.

    Not in the compiled Vertex job (``create_components``): TFX's built-in strategies cannot say
    "the previous span that passed": LatestArtifactStrategy would give the newest statistics of any
    pipeline, this span's own after a stopped run, and a drifted span would pass on its retry."""
    every = tfx.dsl.Channel(type=tfx.types.standard_artifacts.ExampleStatistics)
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
