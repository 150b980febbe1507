"""``deeplab-tfx compile kubeflow``: the pipeline as a Kubeflow Pipelines v2 / Vertex AI job.

Thin: the DAG is ``create_pipeline``'s; this only compiles it with ``KubeflowV2DagRunner``
into a PipelineJob JSON that Vertex AI Pipelines or KFP 2 runs (``gcloud ai ...`` or
``kfp.Client().create_run_from_pipeline_package``). Every component runs in
``kubeflow.image``, built from this repository; Beam components take the config's beam
arguments (DataflowRunner in ``vertex.yaml``); the pipeline root should be on GCS. ML
Metadata is the platform's, so no connection config is set here.
"""

import os

from tfx import v1 as tfx

from core import config as config_lib
from pipeline.pipeline import create_pipeline


def compile_pipeline(config: config_lib.PipelineConfig, output: str) -> dict:
    """Writes the PipelineJob JSON to ``output``; returns it as a dict."""
    # Project files inside the image; run paths are URIs there, and stay as they are.
    config = config.resolved(config.kubeflow.project_root, None)
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(default_image=config.kubeflow.image),
        output_dir=os.path.dirname(os.path.abspath(output)),
        output_filename=os.path.basename(output),
    )
    return runner.run(create_pipeline(config), write_out=True)
