"""Transform's analysis outside TFX: ingest a dataset and analyze it as the pipeline would.

The tests and the benchmarks need a transform graph without running a pipeline. This runs
the same ``preprocessing_fn`` through ``tft_beam.AnalyzeDataset`` on the train split and
writes the graph and the raw metadata where the Transform component writes them, so
``tft.TFTransformOutput`` and the trainer cannot tell the difference.
"""

import os
from typing import Optional

import apache_beam as beam
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
from tensorflow_metadata.proto.v0 import schema_pb2
from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io
from tfx.utils import io_utils
from tfx_bsl.public import tfxio

from components.segmentation_example_gen import beam_ingest, sources
from core import artifacts, dataset_spec, features, paths
from core import config as config_lib
from core.dataset_spec import VOC_SPEC
from transform import preprocessing

TRANSFORM_GRAPH = "transform_graph"


def analyze(examples_uri: str, out: str, custom_config: dict) -> tft.TFTransformOutput:
    """Analyzes the train split of ``examples_uri`` into ``<out>/transform_graph``.

    The number of classes is that of the Examples' dataset spec unless ``custom_config`` gives
    it, as the pipeline passes the spec's to the Transform component.
    """
    num_classes = dataset_spec.of_examples(examples_uri).num_classes
    custom_config = {preprocessing.NUM_CLASSES_KEY: num_classes, **custom_config}
    schema_path = paths.project_file(config_lib.ValidationConfig.schema_path)
    schema = io_utils.parse_pbtxt_file(schema_path, schema_pb2.Schema())
    source = tfxio.TFExampleRecord(
        file_pattern=artifacts.split_files(examples_uri, features.TRAIN_SPLIT),
        telemetry_descriptors=["deeplab-tfx"],
        schema=schema,
    )
    graph_dir = os.path.join(out, TRANSFORM_GRAPH)
    with beam.Pipeline() as p, tft_beam.Context(temp_dir=os.path.join(out, "tmp"), force_tf_compat_v1=False):
        raw = p | source.BeamSource()
        transform_fn = (raw, source.TensorAdapterConfig()) | tft_beam.AnalyzeDataset(
            lambda inputs: preprocessing.preprocessing_fn(inputs, custom_config)
        )
        _ = transform_fn | tft_beam.WriteTransformFn(graph_dir)
    # The raw metadata, as the Transform component writes it beside the transform graph.
    metadata_io.write_metadata(dataset_metadata.DatasetMetadata(schema), os.path.join(graph_dir, "metadata"))
    return tft.TFTransformOutput(graph_dir)


def ingest_and_analyze(
    dataset: str,
    out: str,
    image_size: int,
    spec: dataset_spec.DatasetSpec = VOC_SPEC,
    sbd_root: Optional[str] = None,
) -> tuple:
    """``(raw Examples uri, TFTransformOutput)`` of a dataset root at ``image_size``, read as
    ``roots`` says. The Examples go to ``<out>/examples``, the graph to
    ``transform_dir(examples_uri)``.
    """
    examples = os.path.join(out, "examples")
    voc_root, sbd, data_root = roots(dataset, spec, sbd_root)
    beam_ingest.run(
        lambda: beam.Pipeline(), voc_root, sbd, examples, os.path.join(out, "rejected"), dataset=spec,
        data_root=data_root,
    )  # fmt: skip
    return examples, analyze(examples, out, {"image_size": image_size})


def roots(dataset: str, spec: dataset_spec.DatasetSpec, sbd_root: Optional[str] = None) -> tuple:
    """``(voc_root, sbd_root, data_root)`` as ingestion takes them for the root ``dataset``: a
    folders spec reads it as its ``data.root``; VOC's as VOC 2012, with SBD from ``sbd_root``,
    else from under the root where it is there (the generator writes both; a user's root may
    hold VOC alone)."""
    if spec.layout != dataset_spec.VOC:
        return None, None, dataset
    if sbd_root is None:
        try:
            sources.resolve_sbd_root(dataset)
            sbd_root = dataset
        except sources.ListFileError:
            pass
    return dataset, sbd_root, None


def transform_dir(examples_uri: str) -> str:
    """The transform graph that ``ingest_and_analyze`` made for ``examples_uri``."""
    return os.path.join(os.path.dirname(examples_uri), TRANSFORM_GRAPH)
