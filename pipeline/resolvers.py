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
from tfx.components.evaluator import constants as evaluator_constants
from tfx.dsl.components.common.resolver import Resolver, ResolverStrategy
from tfx.dsl.input_resolution.strategies.latest_blessed_model_strategy import LatestBlessedModelStrategy
from tfx.types import standard_artifacts, standard_component_specs
from tfx.types.channel import Channel

from components.segmentation_example_gen import spec
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


def dataset_of(examples: Optional[metadata_store_pb2.Artifact]) -> tuple:
    """What Examples were encoded for: ``(spec name, spec digest)``; a spec changed under the
    same name is another dataset. ``("", "")`` where unknown."""
    if examples is None:
        return ("", "")
    found = examples.custom_properties
    keys = (artifacts.DATASET_PROPERTY, artifacts.DATASET_DIGEST_PROPERTY)
    return tuple(found[key].string_value if key in found else "" for key in keys)


def contents(examples: metadata_store_pb2.Artifact) -> str:
    """What an Examples artifact holds: its files' fingerprint (which names the span and version)
    and the dataset they were encoded for, or its id where ingestion recorded no fingerprint. A
    backfill of unchanged files is a new artifact with the same contents, and must change no
    later run's choice."""
    fingerprint = examples.custom_properties.get(spec.INPUT_FINGERPRINT_KEY)
    if not fingerprint or not fingerprint.string_value:
        return f"id:{examples.id}"
    return f"{fingerprint.string_value}|{dataset_of(examples)}"


def _version(artifact: types.Artifact) -> int:
    properties = artifact.mlmd_artifact.properties
    return properties[artifacts.VERSION].int_value if artifacts.VERSION in properties else 0


def newest_deliveries(given: List[types.Artifact], contents_of) -> Dict[int, types.Artifact]:
    """``{span: artifact}``: of each span's newest delivery (version, then artifact), the first
    artifact with its ``contents_of``. A backfill of unchanged files then leaves every choice,
    and so the next scheduled run's cache key, as it was."""
    newest = {}
    for artifact in sorted(given, key=lambda a: (a.span, _version(a), a.id)):
        newest[artifact.span] = artifact
    first = {}
    for artifact in sorted(given, key=lambda a: a.id):
        if artifact.span not in first and contents_of(artifact) == contents_of(newest[artifact.span]):
            first[artifact.span] = artifact
    return first


def training_examples(store: mlmd.MetadataStore, model: types.Artifact) -> Set[str]:
    """The ``contents`` of the Examples the execution that produced ``model`` trained on."""
    events = store.get_events_by_artifact_ids([model.id])
    producers = sorted(e.execution_id for e in events if e.type == metadata_store_pb2.Event.OUTPUT)
    if not producers:
        return set()
    inputs = store.get_events_by_execution_ids(producers[:1])
    ids = [
        e.artifact_id for e in inputs if e.type == metadata_store_pb2.Event.INPUT and _key(e) == EXAMPLES_KEY
    ]
    return {contents(a) for a in store.get_artifacts_by_id(ids)} if ids else set()


def _key(event) -> str:
    return event.path.steps[0].key if event.path.steps else ""


def _answer(input_dict, found) -> Dict[str, List[types.Artifact]]:
    out = {key: [] for key in input_dict}
    if found:
        out[MODEL_KEY], out[BLESSING_KEY] = [found[0]], [found[1]]
    return out


class BaselineStrategy(ResolverStrategy):
    """The newest blessed model older than this run's candidate (``candidate``)."""

    def resolve_artifacts(self, store, input_dict):
        candidate = this_runs(store, input_dict[CANDIDATE_KEY])
        older = [(m, b) for m, b in blessed_models(input_dict) if candidate is None or m.id < candidate.id]
        return _answer(input_dict, older[0] if older else None)


class WarmStartStrategy(ResolverStrategy):
    """The newest blessed model not trained on this run's Examples (``examples``; a model trained
    on a window that holds them, or another delivery of the same files, counts as trained on them)."""

    def resolve_artifacts(self, store, input_dict):
        examples = this_runs(store, input_dict[EXAMPLES_KEY])
        mine = contents(examples.mlmd_artifact) if examples is not None else None
        other = [(m, b) for m, b in blessed_models(input_dict) if mine not in training_examples(store, m)]
        return _answer(input_dict, other[0] if other else None)


def taken_by(
    store: mlmd.MetadataStore, given: List[types.Artifact], key: str, type_suffix: str
) -> List[types.Artifact]:
    """Those of ``given`` that an execution of a type named ``...<type_suffix>`` took as its input
    ``key`` and completed (or a cache hit of one that did)."""
    if not given:
        return []
    consumers = {}
    for event in store.get_events_by_artifact_ids([a.id for a in given]):
        if event.type == metadata_store_pb2.Event.INPUT and _key(event) == key:
            consumers.setdefault(event.execution_id, set()).add(event.artifact_id)
    executions = store.get_executions_by_id(list(consumers))
    names = {t.id: t.name for t in store.get_execution_types_by_id(list({e.type_id for e in executions}))}
    done = (metadata_store_pb2.Execution.COMPLETE, metadata_store_pb2.Execution.CACHED)
    taken = set()
    for execution in executions:
        if names[execution.type_id].endswith(type_suffix) and execution.last_known_state in done:
            taken |= consumers[execution.id]
    return [a for a in given if a.id in taken]


def passed_the_gate(store: mlmd.MetadataStore, statistics: List[types.Artifact]) -> List[types.Artifact]:
    """Those of ``statistics`` that the data gate passed: a span the gate stopped is no baseline,
    or the next span that drifted the same way would pass."""
    return taken_by(store, statistics, STATISTICS_KEY, GATE_TYPE_SUFFIX)


def transformed(store: mlmd.MetadataStore, examples: List[types.Artifact]) -> List[types.Artifact]:
    """Those of ``examples`` that Transform took: it runs only once the data gate has passed, so
    these are spans the gate let in."""
    return taken_by(store, examples, EXAMPLES_KEY, TRANSFORM_TYPE_SUFFIX)


class SpanWindowStrategy(ResolverStrategy):
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
        dataset = dataset_of(current.mlmd_artifact)
        same = [e for e in input_dict[EXAMPLES_KEY] if dataset_of(e.mlmd_artifact) == dataset]
        older = transformed(store, [e for e in same if e.span < current.span])
        newest = newest_deliveries(older, lambda e: contents(e.mlmd_artifact))
        spans = sorted(newest, reverse=True)
        if self._num_spans:
            spans = spans[: self._num_spans - 1]
        window = [newest[span] for span in sorted(spans)] + [current]
        # ``current`` is not read downstream; given twice, TFX's legacy launcher (Airflow) would
        # record one artifact as two outputs of this execution, which ML Metadata refuses.
        return {EXAMPLES_KEY: window, CURRENT_KEY: []}


def span_window(examples, num_spans: int) -> Resolver:
    """The Examples of the newest ``num_spans`` spans up to this run's channel ``examples``.
    Not in the compiled Vertex job, whose compiler knows only TFX's built-in strategies: there
    the pipeline reads this run's span alone."""
    every = Channel(type=standard_artifacts.Examples)
    return Resolver(
        strategy_class=SpanWindowStrategy,
        config={"num_spans": num_spans},
        **{EXAMPLES_KEY: every, CURRENT_KEY: examples},
    ).with_id(SPAN_WINDOW_RESOLVER_ID)


def examples_behind(store: mlmd.MetadataStore, statistics: List[types.Artifact]) -> Dict[int, object]:
    """``{statistics id: Examples}``: the Examples (ML Metadata's artifact) StatisticsGen computed
    each of ``statistics`` from; statistics carry neither dataset nor fingerprint of their own."""
    events = store.get_events_by_artifact_ids([s.id for s in statistics])
    made_by = {}
    for event in events:
        if event.type == metadata_store_pb2.Event.OUTPUT:
            made_by.setdefault(event.execution_id, set()).add(event.artifact_id)
    examples_of = {}  # execution id -> its Examples (a Resolver's execution has none)
    for event in store.get_events_by_execution_ids(list(made_by)):
        if event.type == metadata_store_pb2.Event.INPUT and _key(event) == EXAMPLES_KEY:
            examples_of[event.execution_id] = event.artifact_id
    examples = {a.id: a for a in store.get_artifacts_by_id(list(set(examples_of.values())))}
    return {
        statistics_id: examples[example_id]
        for execution_id, example_id in examples_of.items()
        for statistics_id in made_by[execution_id]
    }


class PreviousSpanStrategy(ResolverStrategy):
    """The statistics of the newest span older than this run's (``current``) that passed the
    data gate, of this run's dataset, of its newest delivery (``newest_deliveries``): what the
    gate compares this span with. None for a first span (or the first of a changed dataset
    spec). Relative to this run's span, so a run on unchanged data compares with what it did
    before (a cache hit), and a new span with the last span the gate let through."""

    def resolve_artifacts(self, store, input_dict):
        out = {key: [] for key in input_dict}
        current = this_runs(store, input_dict[CURRENT_KEY])
        if current is None:
            return out
        older = passed_the_gate(store, [s for s in input_dict[STATISTICS_KEY] if s.span < current.span])
        behind = examples_behind(store, [current, *older])
        dataset = dataset_of(behind.get(current.id))
        older = [s for s in older if dataset_of(behind.get(s.id)) == dataset]

        def contents_of(statistics) -> str:
            examples = behind.get(statistics.id)
            return contents(examples) if examples is not None else f"statistics:{statistics.id}"

        newest = newest_deliveries(older, contents_of)
        if newest:
            out[STATISTICS_KEY] = [newest[max(newest)]]
        return out


def previous_span_statistics(statistics) -> Resolver:
    """The data gate's drift baseline for this run's ExampleStatistics channel ``statistics``.

    Not in the compiled Vertex job (``create_components``): TFX's built-in strategies cannot say
    "the previous span that passed": LatestArtifactStrategy would give the newest statistics of any
    pipeline, this span's own after a stopped run, and a drifted span would pass on its retry."""
    every = Channel(type=standard_artifacts.ExampleStatistics)
    return Resolver(
        strategy_class=PreviousSpanStrategy, **{STATISTICS_KEY: every, CURRENT_KEY: statistics}
    ).with_id(PREVIOUS_SPAN_RESOLVER_ID)


def _blessed_channels() -> dict:
    return {
        MODEL_KEY: Channel(type=standard_artifacts.Model),
        BLESSING_KEY: Channel(type=standard_artifacts.ModelBlessing),
    }


def latest_blessed_model(resolver_id: str) -> Resolver:
    """TFX's own: the newest blessed model, whatever this run's artifacts are."""
    return Resolver(strategy_class=LatestBlessedModelStrategy, **_blessed_channels()).with_id(resolver_id)


def _blessed_model(resolver_id: str, strategy_class, kfp: bool, this_run: dict) -> Resolver:
    """A blessed model chosen by ``strategy_class`` relative to ``this_run``'s channels, or on
    Vertex (``kfp``) TFX's newest blessed model."""
    if kfp:
        return latest_blessed_model(resolver_id)
    return Resolver(strategy_class=strategy_class, **_blessed_channels(), **this_run).with_id(resolver_id)


def baseline_model(candidate, kfp: bool) -> Resolver:
    """The Evaluator's baseline for the Model channel ``candidate`` (none on the first run)."""
    return _blessed_model(BASELINE_RESOLVER_ID, BaselineStrategy, kfp, {CANDIDATE_KEY: candidate})


def warm_start_model(examples, kfp: bool) -> Resolver:
    """The Trainer's base model for this run's Examples channel ``examples`` (none on the first run)."""
    return _blessed_model(WARM_START_RESOLVER_ID, WarmStartStrategy, kfp, {EXAMPLES_KEY: examples})
