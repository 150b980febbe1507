"""Driver of SegmentationExampleGen: resolves the span and fingerprints its files before the
orchestrator checks its cache.

SegmentationExampleGen has no input artifacts, so its cache key is its parameters alone. Each
orchestrator lets a driver add parameters before the cache check, each through its own door:

- LocalDagRunner (the portable launcher) calls ``run`` and adds the exec properties it returns.
- Airflow (TFX's legacy launcher, ``BaseDriver.pre_execution``) calls ``resolve_exec_properties``
  before it registers the execution and looks for a cached one.
- Vertex AI / Kubeflow V2 runs ``vertex_driver`` as the task's pre-cache-check hook
  (``pipeline/kubeflow_runner.py`` adds it), whose output parameters join the cache key.

All three add the same three values (``resolve_inputs``): the span and version the data roots'
patterns resolve to (``spans``), and the digest of the files of that span. A new span, or a changed
file, changes the key and ingests; unchanged data is a cache hit, and so is everything after it.
"""

from typing import Any, Dict

from tfx.dsl.components.base import base_driver
from tfx.orchestration import data_types_utils
from tfx.orchestration.portable import base_driver as ir_base_driver
from tfx.proto.orchestration import driver_output_pb2

from components.segmentation_example_gen import sources, spans, spec
from core.dataset_spec import VOC_SPEC, DatasetSpec

ROOT_KEYS = (spec.VOC_ROOT_KEY, spec.SBD_ROOT_KEY, spec.DATA_ROOT_KEY)


class Driver(base_driver.BaseDriver, ir_base_driver.BaseDriver):
    """Adds ``span``, ``version`` and ``input_fingerprint``, for either layout, on either launcher."""

    def __init__(self, metadata_handle):
        base_driver.BaseDriver.__init__(self, metadata_handle)
        ir_base_driver.BaseDriver.__init__(self, metadata_handle)

    def run(self, execution_info) -> driver_output_pb2.DriverOutput:
        """The portable launcher's door (LocalDagRunner)."""
        result = driver_output_pb2.DriverOutput()
        for key, value in resolve_inputs(execution_info.exec_properties).items():
            if value is not None:
                data_types_utils.set_metadata_value(result.exec_properties[key], value)
        return result

    def resolve_exec_properties(self, exec_properties, pipeline_info, component_info):
        """The legacy launcher's door (Airflow): called before the cache lookup."""
        exec_properties = dict(exec_properties)
        exec_properties.update({k: v for k, v in resolve_inputs(exec_properties).items() if v is not None})
        return exec_properties


def resolve_inputs(exec_properties: Dict[str, Any]) -> Dict[str, Any]:
    """``{span, version, input_fingerprint}`` of the data this run reads."""
    requested = exec_properties.get(spec.REQUESTED_SPAN_KEY)
    resolved = spans.resolve(
        {key: exec_properties.get(key) or None for key in ROOT_KEYS},
        spans.NEWEST if requested is None else int(requested),
    )
    roots = resolved.roots
    fingerprint = sources.fingerprint(
        roots[spec.VOC_ROOT_KEY],
        roots[spec.SBD_ROOT_KEY],
        dataset_of(exec_properties),
        roots[spec.DATA_ROOT_KEY],
    )
    if any(spans.has_specs(exec_properties.get(key)) for key in ROOT_KEYS):
        fingerprint = f"span:{resolved.span},version:{resolved.version},{fingerprint}"
    return {
        spec.SPAN_KEY: resolved.span,
        spec.VERSION_KEY: resolved.version,
        spec.INPUT_FINGERPRINT_KEY: fingerprint,
    }


def roots_of(exec_properties: Dict[str, Any]) -> Dict[str, Any]:
    """The concrete roots of the span the driver resolved (the roots as given without specs).

    Raises ``spans.SpanError`` when a root has span specs but no span reached the executor: the
    driver did not run (a runner that skips drivers), and guessing span 0 would read the wrong
    folder."""
    roots = {key: exec_properties.get(key) or None for key in ROOT_KEYS}
    if spec.SPAN_KEY not in exec_properties or exec_properties[spec.SPAN_KEY] is None:
        patterned = sorted(root for root in roots.values() if spans.has_specs(root))
        if patterned:
            raise spans.SpanError(
                f"SegmentationExampleGen: {patterned} hold span specs, but no span was resolved before "
                "the executor ran (the component's driver did not run on this orchestrator)"
            )
        return roots
    span = int(exec_properties[spec.SPAN_KEY])
    version = exec_properties.get(spec.VERSION_KEY)
    version = None if version is None else int(version)
    return {key: spans.locate(root, span, version) for key, root in roots.items()}


def dataset_of(exec_properties: dict) -> DatasetSpec:
    """The component's dataset spec; VOC's for pipelines compiled before the property existed."""
    text = exec_properties.get(spec.DATASET_SPEC_KEY)
    return DatasetSpec.from_json(text, where=spec.DATASET_SPEC_KEY) if text else VOC_SPEC
