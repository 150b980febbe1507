"""Keys, artifact type and ComponentSpec of SegmentationExampleGen (shared by component, driver, executor)."""

from tfx import types
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter

from core import artifacts

EXAMPLES_KEY = "examples"
REJECTED_KEY = "rejected"
VOC_ROOT_KEY = "voc_root"
SBD_ROOT_KEY = "sbd_root"
# The root of a ``folders`` dataset (its images and masks directories are under it).
DATA_ROOT_KEY = "data_root"
# ``DatasetSpec.to_json()``: classes, mask encoding and layout of the dataset.
DATASET_SPEC_KEY = "dataset_spec"
MAX_REJECTED_FRACTION_KEY = "max_rejected_fraction"
MAX_IGNORED_FRACTION_KEY = "max_ignored_fraction"
NUM_SHARDS_KEY = "num_shards"
# The span a run asks for (``spans.NEWEST``: the newest on storage; a number: a backfill).
REQUESTED_SPAN_KEY = "requested_span"
# Set by the driver at run time, so that caching follows the files on disk: the digest of the
# files read, and the span and version resolved from the roots' span patterns (``spans``). The
# names are TFX's ExampleGen's.
INPUT_FINGERPRINT_KEY = "input_fingerprint"
SPAN_KEY = artifacts.SPAN
VERSION_KEY = artifacts.VERSION


class RejectedRecords(types.Artifact):
    """Dead-letter output: rejected.jsonl (id, source, split, kind, reason), summary.json, report.md."""

    TYPE_NAME = "deeplab_tfx.RejectedRecords"


class SegmentationExampleGenSpec(types.ComponentSpec):
    PARAMETERS = {
        VOC_ROOT_KEY: ExecutionParameter(type=str),
        SBD_ROOT_KEY: ExecutionParameter(type=str, optional=True),
        DATA_ROOT_KEY: ExecutionParameter(type=str, optional=True),
        DATASET_SPEC_KEY: ExecutionParameter(type=str, optional=True),
        MAX_REJECTED_FRACTION_KEY: ExecutionParameter(type=float),
        # Optional: a job compiled before the key existed runs with the config's default.
        MAX_IGNORED_FRACTION_KEY: ExecutionParameter(type=float, optional=True),
        NUM_SHARDS_KEY: ExecutionParameter(type=int),
        REQUESTED_SPAN_KEY: ExecutionParameter(type=int, optional=True),
        INPUT_FINGERPRINT_KEY: ExecutionParameter(type=str, optional=True),
        SPAN_KEY: ExecutionParameter(type=int, optional=True),
        VERSION_KEY: ExecutionParameter(type=int, optional=True),
    }
    INPUTS = {}
    OUTPUTS = {
        EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples),
        REJECTED_KEY: ChannelParameter(type=RejectedRecords),
    }
