"""SegmentationExampleGen: the TFX component that ingests a segmentation dataset into Examples.

Pascal VOC 2012 (+ SBD), or any dataset a ``DatasetSpec`` describes (an images folder and a
masks folder): the spec, required, says which. Outputs an ``Examples`` artifact with splits
``train`` and ``eval`` (for VOC the train_aug rule and VOC val) as gzipped TFRecords of
tf.Examples in the data contract of ``core.features``, with the dataset spec beside them
(``core.artifacts.SPEC_FILE``), and a ``RejectedRecords`` artifact: the dead-letter file, a
summary and a readable report.
"""

from typing import Optional

from tfx import types
from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx.types import standard_artifacts

from components.segmentation_example_gen import driver, executor, spans
from components.segmentation_example_gen.spec import RejectedRecords, SegmentationExampleGenSpec
from core.config import IngestConfig
from core.dataset_spec import DatasetSpec


class SegmentationExampleGen(base_beam_component.BaseBeamComponent):
    """Reads a VOC root and an optional SBD root, or a folders dataset's root (``data_root``),
    as ``dataset_spec`` says; writes train/eval Examples and a dead letter.

    Runs on any Beam runner (DirectRunner, Dataflow, Flink, Spark) through the pipeline's
    ``beam_pipeline_args``; file paths may be local or on any ``tf.io.gfile`` file system. The
    roots may carry TFX's span specs (``spans``): the driver resolves the newest span, or
    ``requested_span`` (an int, or a ``RuntimeParameter`` for a compiled job's backfills).
    """

    SPEC_CLASS = SegmentationExampleGenSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(executor.Executor)
    DRIVER_CLASS = driver.Driver

    def __init__(
        self,
        dataset_spec: DatasetSpec,
        voc_root: Optional[str] = None,
        sbd_root: Optional[str] = None,
        data_root: Optional[str] = None,
        max_rejected_fraction: float = IngestConfig.max_rejected_fraction,
        num_shards: int = IngestConfig.num_shards,
        requested_span=spans.NEWEST,
        max_ignored_fraction: float = IngestConfig.max_ignored_fraction,
    ):
        spec = SegmentationExampleGenSpec(
            voc_root=voc_root or "",
            sbd_root=sbd_root or "",
            data_root=data_root or "",
            dataset_spec=dataset_spec.to_json(),
            max_rejected_fraction=float(max_rejected_fraction),
            max_ignored_fraction=float(max_ignored_fraction),
            num_shards=int(num_shards),
            requested_span=requested_span,
            examples=types.Channel(type=standard_artifacts.Examples),
            rejected=types.Channel(type=RejectedRecords),
        )
        super().__init__(spec=spec)
