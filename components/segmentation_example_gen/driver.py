"""Driver of SegmentationExampleGen: fingerprints the input files before TFX checks its cache.

The portable launcher runs a component's driver before computing the cache key and adds the
exec properties the driver returns to it. Without this, a component with no input artifacts
would be served from cache after the dataset on disk changed.
"""

from tfx.dsl.components.base import base_driver
from tfx.orchestration import data_types_utils
from tfx.orchestration.portable import base_driver as ir_base_driver
from tfx.proto.orchestration import driver_output_pb2

from components.segmentation_example_gen import sources, spec
from core.dataset_spec import VOC_SPEC, DatasetSpec


class Driver(base_driver.BaseDriver, ir_base_driver.BaseDriver):
    """Adds ``input_fingerprint`` (the planned ids + size/mtime of every file they name), for
    either layout."""

    def __init__(self, metadata_handle):
        base_driver.BaseDriver.__init__(self, metadata_handle)
        ir_base_driver.BaseDriver.__init__(self, metadata_handle)

    def run(self, execution_info) -> driver_output_pb2.DriverOutput:
        props = execution_info.exec_properties
        result = driver_output_pb2.DriverOutput()
        fingerprint = sources.fingerprint(
            props.get(spec.VOC_ROOT_KEY) or None,
            props.get(spec.SBD_ROOT_KEY) or None,
            dataset_of(props),
            props.get(spec.DATA_ROOT_KEY) or None,
        )
        data_types_utils.set_metadata_value(result.exec_properties[spec.INPUT_FINGERPRINT_KEY], fingerprint)
        return result


def dataset_of(exec_properties: dict) -> DatasetSpec:
    """The component's dataset spec; VOC's for pipelines compiled before the property existed."""
    text = exec_properties.get(spec.DATASET_SPEC_KEY)
    return DatasetSpec.from_json(text, where=spec.DATASET_SPEC_KEY) if text else VOC_SPEC
