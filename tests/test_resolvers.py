"""The Resolvers' strategies (pipeline/resolvers.py) on a lineage written into an in-memory ML
Metadata store: which artifact each one gives for this run, in the cases a schedule meets (a
stopped span, a re-delivered span, another dataset, a cached candidate), without a pipeline run.
The pipeline tests (tests/test_pipeline_local.py, tests/test_orchestration.py) show the same
strategies wired into LocalDagRunner and Airflow."""

import pytest
from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2
from tfx.components.evaluator import constants as evaluator_constants
from tfx.types import standard_artifacts

from components.segmentation_example_gen import spec
from core import artifacts
from pipeline import resolvers

COMPLETE, CACHED, FAILED = (
    metadata_store_pb2.Execution.COMPLETE,
    metadata_store_pb2.Execution.CACHED,
    metadata_store_pb2.Execution.FAILED,
)
INPUT, OUTPUT = metadata_store_pb2.Event.INPUT, metadata_store_pb2.Event.OUTPUT
# Execution types as TFX names them: the component's module path.
EXAMPLE_GEN = "components.segmentation_example_gen.component.SegmentationExampleGen"
GATE = "components.data_gate.component.DataGate"
TRANSFORM = "tfx.components.transform.component.Transform"
STATISTICS_GEN = "tfx.components.statistics_gen.component.StatisticsGen"
# TFX's legacy launcher (Airflow) records what a Resolver hands on as that Resolver's outputs.
RESOLVER = "tfx.dsl.components.common.resolver.Resolver"
TRAINER = "tfx.components.trainer.component.Trainer"


class Lineage:
    """Artifacts and the executions that took or gave them, as TFX records them."""

    def __init__(self):
        connection = metadata_store_pb2.ConnectionConfig()
        connection.fake_database.SetInParent()
        self.store = metadata_store.MetadataStore(connection)

    def artifact(self, kind, **custom):
        artifact = kind()
        artifact.type_id = self.store.put_artifact_type(artifact.artifact_type)
        for name, value in custom.items():
            if name in ("span", "version"):
                setattr(artifact, name, value)
            elif isinstance(value, str):
                artifact.set_string_custom_property(name, value)
            else:
                artifact.set_int_custom_property(name, value)
        [artifact.id] = self.store.put_artifacts([artifact.mlmd_artifact])
        return artifact

    def execution(self, type_name, state, inputs=None, outputs=None):
        """An execution of ``type_name`` (TFX names it by the component's module path) that took
        ``inputs`` and gave ``outputs`` (``{key: [artifact]}``)."""
        type_id = self.store.put_execution_type(metadata_store_pb2.ExecutionType(name=type_name))
        [execution_id] = self.store.put_executions(
            [metadata_store_pb2.Execution(type_id=type_id, last_known_state=state)]
        )
        events = []
        for kind, given in ((INPUT, inputs or {}), (OUTPUT, outputs or {})):
            for key, artifacts_of_key in given.items():
                for artifact in artifacts_of_key:
                    event = metadata_store_pb2.Event(
                        artifact_id=artifact.id, execution_id=execution_id, type=kind
                    )
                    event.path.steps.add().key = key
                    events.append(event)
        self.store.put_events(events)

    def examples(self, span, version=0, dataset="voc", files="a", spec_digest="1", fingerprint=True):
        """Ingestion's Examples of ``span``: a second call with the same arguments is a backfill
        of the same files (the same fingerprint); with ``files`` changed a delivery of others,
        with ``spec_digest`` changed the same files encoded by an edited dataset spec."""
        made = self.artifact(standard_artifacts.Examples, span=span, version=version)
        made.set_string_custom_property(artifacts.DATASET_PROPERTY, dataset)
        made.set_string_custom_property(artifacts.DATASET_DIGEST_PROPERTY, spec_digest)
        if fingerprint:  # as the driver computes it: span, version and the files, not the dataset
            made.set_string_custom_property(
                spec.INPUT_FINGERPRINT_KEY, f"span:{span},version:{version},{files}"
            )
        self.store.put_artifacts([made.mlmd_artifact])
        self.execution(EXAMPLE_GEN, COMPLETE, outputs={"examples": [made]})
        return made

    def transformed(self, examples, state=COMPLETE):
        self.execution(TRANSFORM, state, inputs={"examples": examples})

    def statistics(self, examples):
        """StatisticsGen's output for ``examples`` (its span, and its dataset through lineage)."""
        made = self.artifact(standard_artifacts.ExampleStatistics, span=examples.span)
        self.execution(
            STATISTICS_GEN, COMPLETE, inputs={"examples": [examples]}, outputs={"statistics": [made]}
        )
        return made


def window(lineage, current, every, num_spans) -> list:
    strategy = resolvers.SpanWindowStrategy(num_spans=num_spans)
    out = strategy.resolve_artifacts(
        lineage.store, {resolvers.EXAMPLES_KEY: every, resolvers.CURRENT_KEY: current}
    )  # fmt: skip
    assert out[resolvers.CURRENT_KEY] == []
    return [(e.span, e.version) for e in out[resolvers.EXAMPLES_KEY]]


def test_the_window_is_the_newest_spans_the_gate_let_in_newest_delivery_each_of_one_dataset():
    lineage = Lineage()
    span_1 = lineage.examples(1)
    span_2 = lineage.examples(2)
    span_2_again = lineage.examples(2, version=1)  # re-delivered: {VERSION}
    stopped = lineage.examples(3)  # the gate stopped it: Transform never ran on it
    retried = lineage.examples(3, version=1)  # re-delivered, and Transform failed on it
    other = lineage.examples(3, dataset="cityscapes")  # another dataset's span
    lineage.transformed([span_1])
    lineage.transformed([span_1, span_2])
    lineage.transformed([span_1, span_2_again], state=CACHED)
    lineage.transformed([other])
    lineage.transformed([retried], state=FAILED)
    current = lineage.examples(4)
    every = [span_1, span_2, span_2_again, stopped, retried, other, current]

    assert window(lineage, [current], every, num_spans=0) == [(1, 0), (2, 1), (4, 0)]
    assert window(lineage, [current], every, num_spans=2) == [(2, 1), (4, 0)]
    assert window(lineage, [current], every, num_spans=1) == [(4, 0)]
    # A backfill of span 2 reads spans up to 2 only.
    assert window(lineage, [span_2_again], every, num_spans=0) == [(1, 0), (2, 1)]
    # Airflow's legacy launcher hands the channel's every artifact: this run's is the newest
    # output, not counting what a Resolver handed on ...
    lineage.execution(RESOLVER, COMPLETE, outputs={"examples": [span_1, span_2_again]})
    assert window(lineage, every, every, num_spans=2) == [(2, 1), (4, 0)]
    # ... and by the execution, not the artifact's id: a cached ingestion that re-uses span 1's
    # Examples (a backfill of unchanged data) makes them this run's.
    lineage.execution(EXAMPLE_GEN, CACHED, outputs={"examples": [span_1]})
    assert window(lineage, every, every, num_spans=0) == [(1, 0)]
    assert window(lineage, [], every, num_spans=0) == []


def test_a_backfill_of_unchanged_files_leaves_the_next_scheduled_runs_window_as_it_was():
    lineage = Lineage()
    span_1, span_2 = lineage.examples(1), lineage.examples(2)
    lineage.transformed([span_1])
    lineage.transformed([span_1, span_2])
    backfill = lineage.examples(1)  # data.span=1 on the same files: a new artifact
    lineage.transformed([backfill])

    def chosen(every, current=span_2) -> list:
        out = resolvers.SpanWindowStrategy(num_spans=0).resolve_artifacts(
            lineage.store, {resolvers.EXAMPLES_KEY: every, resolvers.CURRENT_KEY: [current]}
        )
        return [e.id for e in out[resolvers.EXAMPLES_KEY]]

    every = [span_1, span_2, backfill]
    assert chosen(every) == [span_1.id, span_2.id]
    # An older version re-ingested after a newer one: the newer version stays.
    version_1 = lineage.examples(1, version=1)
    lineage.transformed([version_1])
    version_0_again = lineage.examples(1)
    lineage.transformed([version_0_again])
    every += [version_1, version_0_again]
    assert chosen(every) == [version_1.id, span_2.id]
    # Changed files in span 1's newest version (re-ingested, another fingerprint): taken.
    changed = lineage.examples(1, version=1, files="b")
    lineage.transformed([changed])
    every.append(changed)
    assert chosen(every) == [changed.id, span_2.id]
    # Without a fingerprint (made before ingestion recorded one) each artifact is its own contents.
    lineage = Lineage()
    old_1, old_2 = lineage.examples(1, fingerprint=False), lineage.examples(2, fingerprint=False)
    lineage.transformed([old_1])
    again = lineage.examples(1, fingerprint=False)
    lineage.transformed([again])
    assert chosen([old_1, old_2, again], current=old_2) == [again.id, old_2.id]


def test_a_dataset_spec_edited_under_the_same_name_starts_the_window_afresh():
    lineage = Lineage()
    span_1 = lineage.examples(1)
    lineage.transformed([span_1])
    span_2 = lineage.examples(2, spec_digest="2")  # e.g. the class values fixed
    assert window(lineage, [span_2], [span_1, span_2], num_spans=0) == [(2, 0)]


def test_drift_is_judged_against_the_newest_older_span_the_gate_passed_of_this_dataset():
    lineage = Lineage()
    stats = {span: lineage.statistics(lineage.examples(span)) for span in (1, 2, 3, 4)}
    redelivered = lineage.statistics(lineage.examples(2, version=1))
    lineage.execution(GATE, COMPLETE, inputs={resolvers.STATISTICS_KEY: [stats[1]]})
    lineage.execution(GATE, CACHED, inputs={resolvers.STATISTICS_KEY: [stats[2]]})
    lineage.execution(GATE, COMPLETE, inputs={resolvers.STATISTICS_KEY: [redelivered]})
    lineage.execution(GATE, FAILED, inputs={resolvers.STATISTICS_KEY: [stats[3]]})  # drifted
    every = [*stats.values(), redelivered]

    def previous(current) -> list:
        out = resolvers.PreviousSpanStrategy().resolve_artifacts(
            lineage.store, {resolvers.STATISTICS_KEY: every, resolvers.CURRENT_KEY: current}
        )
        return [s.id for s in out[resolvers.STATISTICS_KEY]]

    assert previous([stats[4]]) == [redelivered.id]  # not the stopped span 3; span 2's newest delivery
    # A backfill of span 2's version 1 on unchanged files, passed: the baseline stays as it was.
    backfilled = lineage.statistics(lineage.examples(2, version=1))
    lineage.execution(GATE, COMPLETE, inputs={resolvers.STATISTICS_KEY: [backfilled]})
    every.append(backfilled)
    assert previous([stats[4]]) == [redelivered.id]
    assert previous([stats[3]]) == [redelivered.id]  # span 3's retry: still against span 2
    assert previous([stats[2]]) == [stats[1].id]  # a re-run of span 2
    assert previous([stats[1]]) == []  # a first span: nothing to compare with
    assert previous([]) == []
    # A changed dataset spec: its first span has no earlier span of its own to compare with.
    other = lineage.statistics(lineage.examples(5, dataset="cityscapes"))
    every.append(other)
    assert previous([other]) == []
    # Airflow's every-artifact channel: this run's is the newest output.
    assert previous(every) == []
    every.append(lineage.statistics(lineage.examples(6)))
    assert previous(every) == [redelivered.id]


@pytest.fixture
def models():
    """Span 1 trained model 1 (blessed); span 2 model 2 (not blessed), then model 3 (blessed) on
    the window of spans 1 and 2; model 4, trained on span 2, is not judged yet."""
    lineage = Lineage()
    spans = {1: lineage.examples(1), 2: lineage.examples(2)}
    trained, blessings = {}, []
    for n, on, blessed in ((1, [1], 1), (2, [2], 0), (3, [1, 2], 1), (4, [2], None)):
        trained[n] = lineage.artifact(standard_artifacts.Model)
        lineage.execution(
            TRAINER, COMPLETE, inputs={"examples": [spans[s] for s in on]}, outputs={"model": [trained[n]]}
        )
        if blessed is not None:
            blessing = lineage.artifact(standard_artifacts.ModelBlessing)
            blessing.set_int_custom_property(evaluator_constants.ARTIFACT_PROPERTY_BLESSED_KEY, blessed)
            blessing.set_int_custom_property(
                evaluator_constants.ARTIFACT_PROPERTY_CURRENT_MODEL_ID_KEY, trained[n].id
            )
            blessings.append(blessing)
    channels = {resolvers.MODEL_KEY: list(trained.values()), resolvers.BLESSING_KEY: blessings}
    return lineage, trained, channels, spans


def chosen(out) -> list:
    return [m.id for m in out[resolvers.MODEL_KEY]]


def test_the_baseline_is_the_newest_blessed_model_older_than_the_candidate(models):
    lineage, trained, channels, _ = models
    strategy = resolvers.BaselineStrategy()

    def baseline(candidate):
        out = strategy.resolve_artifacts(lineage.store, {**channels, resolvers.CANDIDATE_KEY: candidate})
        assert len(out[resolvers.BLESSING_KEY]) == len(out[resolvers.MODEL_KEY])
        return chosen(out)

    assert baseline([trained[4]]) == [trained[3].id]  # a new candidate: the newest blessed
    # A cached candidate (model 3 again, no new data): the baseline it was judged against, not itself.
    assert baseline([trained[3]]) == [trained[1].id]
    assert baseline([trained[1]]) == []  # the first model had none
    # Airflow's legacy launcher: every model; this run's is the newest output.
    assert baseline(list(trained.values())) == [trained[3].id]


def test_warm_start_takes_the_newest_blessed_model_not_trained_on_this_runs_examples(models):
    lineage, trained, channels, spans = models
    strategy = resolvers.WarmStartStrategy()

    def base(examples):
        return chosen(
            strategy.resolve_artifacts(lineage.store, {**channels, resolvers.EXAMPLES_KEY: examples})
        )

    span_3 = lineage.examples(3)
    assert base([span_3]) == [trained[3].id]  # a new span: from the newest blessed model
    # No new data (span 2's Examples re-used by a cached ingestion): model 3 trained on them, and
    # model 2 is not blessed, so the cached run's base of last time, model 1.
    assert base([spans[2]]) == [trained[1].id]
    assert base([spans[1]]) == []  # every blessed model saw span 1: from scratch, as then
    # Airflow's every-artifact channel: this run's Examples are the newest output (span 3's).
    assert base(list(spans.values()) + [span_3]) == [trained[3].id]
    # A backfill of span 2's unchanged files: model 3 trained on those files, as before.
    assert base([lineage.examples(2)]) == [trained[1].id]
