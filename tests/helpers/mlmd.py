"""Reading a run's ML Metadata back, the same way for LocalDagRunner and Airflow.

The portable launcher (LocalDagRunner) files each execution under a ``node`` context; TFX's legacy
launcher (Airflow) records the component id as an execution property. ``executions`` gives both
as ``{component id: [execution, oldest first]}``.
"""

import collections

from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2


def store(sqlite_path: str) -> metadata_store.MetadataStore:
    connection = metadata_store_pb2.ConnectionConfig()
    connection.sqlite.filename_uri = sqlite_path
    connection.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    return metadata_store.MetadataStore(connection)


def executions(db: metadata_store.MetadataStore) -> dict:
    """``{component id: [execution, oldest first]}``."""
    node_of = {}
    for ctx in db.get_contexts_by_type("node"):
        for execution in db.get_executions_by_context(ctx.id):
            node_of[execution.id] = ctx.name.split(".")[-1]
    out = collections.defaultdict(list)
    for execution in sorted(db.get_executions(), key=lambda e: e.id):
        if "component_id" in execution.properties:
            out[execution.properties["component_id"].string_value].append(execution)
        elif execution.id in node_of:
            out[node_of[execution.id]].append(execution)
    return dict(out)


def state(execution) -> str:
    return metadata_store_pb2.Execution.State.Name(execution.last_known_state)


def artifacts(db, execution, event_type, key: str) -> list:
    """The artifacts ``execution`` took (``Event.INPUT``) or gave (``Event.OUTPUT``) under ``key``."""
    ids = [
        e.artifact_id for e in db.get_events_by_execution_ids([execution.id])
        if e.type == event_type and e.path.steps and e.path.steps[0].key == key
    ]  # fmt: skip
    return db.get_artifacts_by_id(ids) if ids else []


def int_property(artifact, name: str):
    for properties in (artifact.properties, artifact.custom_properties):
        if name in properties:
            return properties[name].int_value
    return None


def inputs(db, execution, key: str) -> list:
    return artifacts(db, execution, metadata_store_pb2.Event.INPUT, key)


def outputs(db, execution, key: str) -> list:
    return artifacts(db, execution, metadata_store_pb2.Event.OUTPUT, key)


def custom_properties(artifact) -> dict:
    """``{name: value}`` of an artifact's custom properties, each in its own type."""
    return {k: getattr(v, v.WhichOneof("value")) for k, v in artifact.custom_properties.items()}
