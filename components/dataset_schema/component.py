"""DatasetSchemaGen: the curated schema, with the parts that depend on the dataset filled in.

ImportSchemaGen imports a schema file as it is, but part of our contract depends on the
dataset: the class ids ``image/segmentation/class/present`` may hold (every class but the
background: 1 to N - 1 where the background is class 0, 0 to N - 1 without one), the values of
``image/source`` and the image formats the records may carry. This component reads the curated
file (``validation.schema_path``) and, for a ``folders`` dataset, sets those from the dataset
spec, so that ExampleValidator checks each dataset against its own classes. For VOC's layout the
curated file is the contract as it is, a stricter one of the user's included (e.g. VOC-sourced
images only). Like ImportSchemaGen it writes ``schema.pbtxt`` into its Schema artifact.
"""

import os

from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2
from tfx.dsl.component.experimental.annotations import OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts

from core import features, storage
from core.dataset_spec import VOC, DatasetSpec

# The file name TFX's schema readers look for in a Schema artifact.
SCHEMA_FILE = "schema.pbtxt"


def _feature(schema: schema_pb2.Schema, name: str) -> schema_pb2.Feature:
    found = [f for f in schema.feature if f.name == name]
    if len(found) != 1:
        raise ValueError(f"the curated schema has {len(found)} features named {name!r}, not one")
    return found[0]


def _set_string_domain(schema: schema_pb2.Schema, name: str, values) -> None:
    domains = [d for d in schema.string_domain if d.name == name]
    if len(domains) != 1:
        raise ValueError(f"the curated schema has {len(domains)} string domains named {name!r}, not one")
    del domains[0].value[:]
    domains[0].value.extend(v.decode() if isinstance(v, bytes) else v for v in values)


def schema_for(curated: schema_pb2.Schema, spec: DatasetSpec) -> schema_pb2.Schema:
    """``curated`` with the class-id domain, sources and image formats of ``spec`` (a folders
    dataset's); ``curated`` itself for VOC's layout, whose domains it already holds."""
    schema = schema_pb2.Schema()
    schema.CopyFrom(curated)
    if spec.layout == VOC:
        return schema
    present = _feature(schema, features.CLASSES_PRESENT_KEY)
    ids = spec.foreground_ids()
    # A range: a background between other ids (neither first nor last) is not excluded by it.
    present.int_domain.min = min(ids)
    present.int_domain.max = max(ids)
    present.value_count.max = len(ids)
    _set_string_domain(schema, features.SOURCE_KEY, spec.sources())
    _set_string_domain(schema, features.IMAGE_FORMAT_KEY, features.IMAGE_FORMATS)
    return schema


def read_schema(path: str) -> schema_pb2.Schema:
    return text_format.Parse(storage.read_file(path, binary=False), schema_pb2.Schema())


@component
def DatasetSchemaGen(  # noqa: N802 - TFX component names are classes.
    schema: OutputArtifact[standard_artifacts.Schema],
    schema_file: Parameter[str],
    dataset_spec: Parameter[str],
):
    """Writes the curated schema of ``schema_file`` for ``dataset_spec`` (``DatasetSpec`` JSON)."""
    spec = DatasetSpec.from_json(dataset_spec, where="DatasetSchemaGen's dataset_spec")
    result = schema_for(read_schema(schema_file), spec)
    storage.write_file(os.path.join(schema.uri, SCHEMA_FILE), text_format.MessageToString(result))
