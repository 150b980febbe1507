"""Our custom ML Metadata artifact types, under the names their ``TYPE_NAME`` gives them.

TFX 1.16's Kubeflow V2 / Vertex AI runner compiles a custom artifact type into the job as its
``TYPE_NAME`` and, in each component's container, imports the class back by that name taken as a
Python path (``kubeflow_v2_entrypoint_utils._retrieve_class_path``): ``deeplab_tfx.RunReport`` is
looked up as the attribute ``RunReport`` of a module ``deeplab_tfx``. This is that module, so the
compiled job's components can read and write these artifacts; the names stay those in ML Metadata.
"""

from components.data_gate.component import DataGateDecision
from components.run_report.component import RunReport
from components.segmentation_example_gen.spec import RejectedRecords
from components.segmentation_inferrer.component import SegmentationMasks

__all__ = ["DataGateDecision", "RejectedRecords", "RunReport", "SegmentationMasks"]
