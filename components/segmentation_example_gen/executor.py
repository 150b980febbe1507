"""Executor of SegmentationExampleGen: runs the shared Beam job and records it on the artifacts."""

import hashlib
import json
import logging
from typing import Any, Dict, List

from tfx import types
from tfx.components.util import examples_utils
from tfx.dsl.components.base import base_beam_executor
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils

from components.segmentation_example_gen import beam_ingest, driver, spec
from core import artifacts, features
from core.config import IngestConfig


class Executor(base_beam_executor.BaseBeamExecutor):
    """TFX calls ``Do``; the work is in ``beam_ingest.run``, shared with the CLI, which also
    writes the dataset spec into the Examples artifact (``beam_ingest.write_spec``)."""

    def Do(  # noqa: N802 - TFX calls this name.
        self,
        input_dict: Dict[str, List[types.Artifact]],
        output_dict: Dict[str, List[types.Artifact]],
        exec_properties: Dict[str, Any],
    ) -> None:
        self._log_startup(input_dict, output_dict, exec_properties)
        examples = artifact_utils.get_single_instance(output_dict[spec.EXAMPLES_KEY])
        rejected = artifact_utils.get_single_instance(output_dict[spec.REJECTED_KEY])
        examples.split_names = artifact_utils.encode_split_names(list(features.SPLITS))
        dataset = driver.dataset_of(exec_properties)
        # The span's own folders: the driver resolved the span (and its version) before the cache
        # check; a root without span specs is read as it is (span 0).
        roots = driver.roots_of(exec_properties)

        summary = beam_ingest.run(
            self._make_beam_pipeline,
            voc_root=roots[spec.VOC_ROOT_KEY],
            sbd_root=roots[spec.SBD_ROOT_KEY],
            examples_uri=examples.uri,
            rejected_dir=rejected.uri,
            max_rejected_fraction=exec_properties[spec.MAX_REJECTED_FRACTION_KEY],
            num_shards=exec_properties[spec.NUM_SHARDS_KEY],
            dataset=dataset,
            data_root=roots[spec.DATA_ROOT_KEY],
            max_ignored_fraction=_or_default(
                exec_properties.get(spec.MAX_IGNORED_FRACTION_KEY), IngestConfig.max_ignored_fraction
            ),
        )
        # TFX's own Examples properties, which span-aware resolvers and ExampleGens read.
        examples.span = int(exec_properties.get(spec.SPAN_KEY) or 0)  # no specs: span 0
        if exec_properties.get(spec.VERSION_KEY) is not None:
            examples.version = int(exec_properties[spec.VERSION_KEY])

        examples_utils.set_payload_format(examples, example_gen_pb2.FORMAT_TF_EXAMPLE)
        examples_utils.set_file_format(examples, "tfrecords_gzip")
        examples.set_string_custom_property(artifacts.DATASET_PROPERTY, dataset.name)
        digest = hashlib.sha256(dataset.to_json().encode()).hexdigest()[:16]
        examples.set_string_custom_property(artifacts.DATASET_DIGEST_PROPERTY, digest)
        fingerprint = exec_properties.get(spec.INPUT_FINGERPRINT_KEY)
        if fingerprint:
            examples.set_string_custom_property(spec.INPUT_FINGERPRINT_KEY, fingerprint)
        for split, count in summary.splits.items():
            examples.set_int_custom_property(artifacts.num_examples(split), count)
        record_findings(examples, summary)
        rejected.set_int_custom_property(artifacts.NUM_REJECTED, len(summary.rejected))
        rejected.set_string_custom_property(artifacts.REJECTED_FRACTION, f"{summary.rejected_fraction:.6f}")
        logging.info(
            "SegmentationExampleGen summary: %s",
            json.dumps({k: v for k, v in summary.to_json().items() if k != "rejected"}),
        )


def record_findings(examples: types.Artifact, summary: beam_ingest.IngestSummary) -> None:
    """Puts on the Examples what ingestion learned of the data (pixels per class and ignored of
    each split, files not read, warnings), as JSON, for the run report
    (``run_report.component.ingestion_of``) and the terminal (``pipeline/progress.py``)."""
    examples.set_string_custom_property(artifacts.PIXELS_PROPERTY, json.dumps(summary.pixels))
    examples.set_string_custom_property(artifacts.UNREAD_FILES_PROPERTY, json.dumps(summary.unread_files))
    examples.set_string_custom_property(artifacts.DATA_WARNINGS_PROPERTY, json.dumps(summary.warnings))


def _or_default(value, default):
    """An optional parameter's value; ``default`` where the job was compiled without it."""
    return default if value is None else value
