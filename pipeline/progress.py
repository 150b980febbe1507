"""Component-by-component progress of a LocalDagRunner run, from its log and ML Metadata.

LocalDagRunner logs "Component X is running." and "... is finished." and nothing a person
can follow between them. This handler turns those two lines into one line each with the time,
the duration, whether the result came from cache, and each output's URI with the numbers worth
seeing (split counts, the blessing, the pushed version), and ingestion's data warnings beneath
the Examples. It also knows which component was
running when a run fails, so the runner can name it.
"""

import contextlib
import json
import logging
import re
import sys
import time

from ml_metadata import metadata_store as mlmd
from ml_metadata.proto import metadata_store_pb2

from core import artifacts, features

_EVENT = re.compile(r"^Component (\S+) is (running|finished)\.$")
_SCALARS = ("int_value", "string_value", "double_value")
# The custom properties shown after an output's URI.
_SHOWN = (
    artifacts.SPAN,
    artifacts.VERSION,
    *(artifacts.num_examples(split) for split in features.SPLITS),
    artifacts.NUM_REJECTED,
    artifacts.BLESSED,
    artifacts.PUSHED,
    artifacts.PUSHED_VERSION,
    artifacts.NUM_MASKS,
    artifacts.LOAD_SECONDS,
    artifacts.LATENCY_P50_MS,
    artifacts.LATENCY_P99_MS,
    artifacts.PEAK_MEMORY_MB,
)


class ComponentProgress(logging.Handler):
    def __init__(self, connection_config, pipeline_name: str, stream=None):
        super().__init__(level=logging.INFO)
        self._connection_config = connection_config
        self._pipeline_name = pipeline_name
        self._stream = stream or sys.stdout
        self._started = {}
        self.running = None  # the component started and not finished, if any
        self.states = {}  # {component: its execution's state, lower case}, as they finish
        self.spans = []  # the span of each Examples artifact output (or re-used) in this run

    def emit(self, record: logging.LogRecord) -> None:
        found = _EVENT.match(record.getMessage())
        if not found:
            return
        node, what = found.groups()
        clock = time.strftime("%H:%M:%S")
        if what == "running":
            self._started[node] = time.time()
            self.running = node
            print(f"[{clock}] {node}: started", file=self._stream, flush=True)
            return
        seconds = time.time() - self._started.get(node, time.time())
        self.running = None
        try:
            state, outputs = self._outcome(node)
        except Exception as e:  # noqa: BLE001 - progress must never break the run
            state, outputs = "finished", [f"(outputs unknown: {e})"]
        self.states[node] = state
        print(f"[{clock}] {node}: {state} in {seconds:.1f} s", file=self._stream, flush=True)
        for line in outputs:
            print(f"           {line}", file=self._stream, flush=True)

    def nothing_new(self) -> bool:
        """Every component that finished was a cache hit (Resolvers, which always resolve, aside):
        the data and the config were those of an earlier run."""
        ran = {node: state for node, state in self.states.items() if not node.endswith("_resolver")}
        return bool(ran) and set(ran.values()) == {"cached"}

    def _outcome(self, node: str) -> tuple:
        store = mlmd.MetadataStore(self._connection_config)
        context = store.get_context_by_type_and_name("node", f"{self._pipeline_name}.{node}")
        if context is None:
            return "finished", []
        executions = store.get_executions_by_context(context.id)
        if not executions:
            return "finished", []
        execution = max(executions, key=lambda e: e.id)
        state = metadata_store_pb2.Execution.State.Name(execution.last_known_state).lower()
        events = store.get_events_by_execution_ids([execution.id])
        ids = [e.artifact_id for e in events if e.type == metadata_store_pb2.Event.OUTPUT]
        lines = []
        for artifact in store.get_artifacts_by_id(ids):
            props = {**artifact.properties, **artifact.custom_properties}
            shown = [
                f"{k}={getattr(props[k], props[k].WhichOneof('value'))}"
                for k in _SHOWN
                if k in props and props[k].WhichOneof("value") in _SCALARS
            ]
            kind = store.get_artifact_types_by_id([artifact.type_id])[0].name
            if kind == "Examples" and artifacts.SPAN in props:
                self.spans.append(props[artifacts.SPAN].int_value)
            lines.append(f"{kind}: {artifact.uri}" + (f" ({', '.join(shown)})" if shown else ""))
            lines += warning_lines(props) + not_inferred_lines(props)
        return state, lines


def warning_lines(props: dict) -> list:
    """``warning: ...`` per data warning an artifact carries (``artifacts.DATA_WARNINGS_PROPERTY``,
    set by ingestion on the Examples): they name what the data cannot teach and the fix, so a
    person reads them in the run's output, not only in the log and the report."""
    value = props.get(artifacts.DATA_WARNINGS_PROPERTY)
    if value is None or not value.string_value:
        return []
    return [f"warning: {warning}" for warning in json.loads(value.string_value)]


def not_inferred_lines(props: dict) -> list:
    """``not inferred: ...`` for batch inference that had nothing to do (the model was not pushed,
    the span has no unlabelled images; ``artifacts.NOT_INFERRED_REASON``): a run that ends well
    but drew no masks says why where a person reads it."""
    value = props.get(artifacts.NOT_INFERRED_REASON)
    return [f"not inferred: {value.string_value}"] if value is not None else []


@contextlib.contextmanager
def following(connection_config, pipeline_name: str, stream=None):
    """Prints progress while the block runs a pipeline; yields the handler (``.running``).

    TFX logs through absl's logger, and TF sets absl's verbosity to WARNING and above while the
    Trainer exports its model, which would drop every later "is finished" record. So the
    logger's level is held at INFO (or the caller's, if lower) until the block ends.
    """
    handler = ComponentProgress(connection_config, pipeline_name, stream)
    logger = logging.getLogger("absl")
    saved = logger.level
    logger.addHandler(handler)
    logger.setLevel(min(logger.getEffectiveLevel(), logging.INFO))
    logger.setLevel = lambda level: None  # held for the run; the class method returns below
    try:
        yield handler
    finally:
        del logger.setLevel
        logger.setLevel(saved)
        logger.removeHandler(handler)
