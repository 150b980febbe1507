"""SegmentationExampleGen's driver on Vertex AI / Kubeflow V2: the ingestion task's pre-cache check.

Vertex runs ``python -m components.segmentation_example_gen.vertex_driver
--json_serialized_invocation_args <ExecutorInput JSON>`` in the component's image before it looks
up the task's cache (``pipeline/kubeflow_runner.py`` adds the hook), and reads back the
``ExecutorOutput`` written to ``outputs.output_file``: its parameters (``span``, ``version``,
``input_fingerprint``, as ``driver.resolve_inputs`` gives them on every orchestrator) join the
task's parameters and cache key, and the Examples artifact carries the span and version. The
protocol is the one TFX's own FileBasedExampleGen driver speaks on Vertex.
"""

import argparse
import logging
import os
import sys

import tensorflow as tf
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2
from tfx.orchestration.kubeflow.v2.container import kubeflow_v2_entrypoint_utils as entrypoint
from tfx.types import artifact_utils

from components.segmentation_example_gen import driver, spec


def parameters(inputs: pipeline_spec_pb2.ExecutorInput.Inputs) -> dict:
    """The task's parameters as the component's spec types them, from either of the two forms
    Vertex sends (``parameters``, pipeline spec 2.0 as TFX 1.16 compiles it; ``parameter_values``,
    2.1), so that an integer sent as a JSON number or a string is an int again."""
    raw = {
        k: getattr(v, v.WhichOneof("value")) for k, v in inputs.parameters.items() if v.WhichOneof("value")
    }
    raw.update({k: getattr(v, v.WhichOneof("kind")) for k, v in inputs.parameter_values.items()})
    kinds = spec.SegmentationExampleGenSpec.PARAMETERS
    return {
        k: kinds[k].type(v) if k in kinds and kinds[k].type in (int, float, str) else v
        for k, v in raw.items()
    }


def run(executor_input: pipeline_spec_pb2.ExecutorInput) -> pipeline_spec_pb2.ExecutorOutput:
    """Resolves the span and fingerprint; writes and returns the ExecutorOutput."""
    exec_properties = parameters(executor_input.inputs)
    resolved = driver.resolve_inputs(exec_properties)
    logging.info("SegmentationExampleGen driver: %s", resolved)
    output = pipeline_spec_pb2.ExecutorOutput()
    output.parameter_values[spec.SPAN_KEY].number_value = resolved[spec.SPAN_KEY]
    output.parameter_values[spec.INPUT_FINGERPRINT_KEY].string_value = resolved[spec.INPUT_FINGERPRINT_KEY]
    if resolved[spec.VERSION_KEY] is not None:
        output.parameter_values[spec.VERSION_KEY].number_value = resolved[spec.VERSION_KEY]
    name_from_id = {}
    if spec.EXAMPLES_KEY in executor_input.outputs.artifacts:
        # The Examples alone: TFX would import our dead letter's artifact class by its type name.
        outputs = entrypoint.parse_raw_artifact_dict(
            {spec.EXAMPLES_KEY: executor_input.outputs.artifacts[spec.EXAMPLES_KEY]}, name_from_id
        )
        examples = artifact_utils.get_single_instance(outputs[spec.EXAMPLES_KEY])
        examples.span = resolved[spec.SPAN_KEY]
        if resolved[spec.VERSION_KEY] is not None:
            examples.version = resolved[spec.VERSION_KEY]
        output.artifacts[spec.EXAMPLES_KEY].artifacts.add().CopyFrom(
            entrypoint.to_runtime_artifact(examples, name_from_id)
        )
    path = executor_input.outputs.output_file
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(json_format.MessageToJson(output, sort_keys=True))
    return output


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json_serialized_invocation_args", required=True)
    args, _ = parser.parse_known_args(argv)  # Beam's flags may follow, as for TFX's driver
    executor_input = pipeline_spec_pb2.ExecutorInput()
    json_format.Parse(args.json_serialized_invocation_args, executor_input, ignore_unknown_fields=True)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    run(executor_input)


if __name__ == "__main__":
    main()
