"""VocExampleGen: the TFX component that ingests Pascal VOC 2012 (+ SBD) into Examples.

Outputs an ``Examples`` artifact with splits ``train`` (the train_aug rule) and ``eval`` (VOC
val) as gzipped TFRecords of tf.Examples in the data contract of ``pipeline.features``, and a
``RejectedRecords`` artifact: the dead-letter file, a summary and a readable report.
"""

from typing import Optional

from tfx import types
from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx.types import standard_artifacts

from components.voc_example_gen import driver, executor
from components.voc_example_gen.spec import RejectedRecords, VocExampleGenSpec


class VocExampleGen(base_beam_component.BaseBeamComponent):
    """Reads a VOC root and an optional SBD root; writes train/eval Examples and a dead letter.

    Runs on any Beam runner (DirectRunner, Dataflow, Flink, Spark) through the pipeline's
    ``beam_pipeline_args``; file paths may be local or on any ``tf.io.gfile`` file system.
    """

    SPEC_CLASS = VocExampleGenSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(executor.Executor)
    DRIVER_CLASS = driver.Driver

    def __init__(
        self,
        voc_root: str,
        sbd_root: Optional[str] = None,
        max_rejected_fraction: float = 0.01,
        num_shards: int = 0,
    ):
        spec = VocExampleGenSpec(
            voc_root=voc_root,
            sbd_root=sbd_root or "",
            max_rejected_fraction=float(max_rejected_fraction),
            num_shards=int(num_shards),
            examples=types.Channel(type=standard_artifacts.Examples),
            rejected=types.Channel(type=RejectedRecords),
        )
        super().__init__(spec=spec)
