"""``deeplab-tfx compile kubeflow``: the pipeline as a Kubeflow Pipelines v2 / Vertex AI job.

Thin: the DAG is ``create_pipeline``'s; this only compiles it with ``KubeflowV2DagRunner``
into a PipelineJob JSON that Vertex AI Pipelines or KFP 2 runs (``gcloud ai ...`` or
``kfp.Client().create_run_from_pipeline_package``). Every component runs in
``kubeflow.image``, built from this repository; Beam components take the config's beam
arguments (DataflowRunner in ``vertex.yaml``); the pipeline root should be on GCS. ML
Metadata is the platform's, so no connection config is set here.
"""

import json
import logging
import os

from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner

from components.segmentation_example_gen import spans, vertex_driver
from components.segmentation_example_gen.component import SegmentationExampleGen
from core import config as config_lib
from core.checks import ConfigError
from core.choices import BUNDLE_RUNTIME, TF_SERVING_RUNTIME
from pipeline.pipeline import SPAN_PARAMETER, create_pipeline

# The ingestion task's name in the job: the component's id, its class name.
INGESTION_TASK = SegmentationExampleGen.__name__


def compile_pipeline(config: config_lib.PipelineConfig, output: str) -> dict:
    """Writes the PipelineJob JSON to ``output``; returns it as a dict."""
    # Project files inside the image; run paths are URIs there, and stay as they are.
    config = config.resolved(config.kubeflow.project_root, None)
    check_schedule(config)
    check_infra_validator(config)
    runner = kubeflow_v2_dag_runner.KubeflowV2DagRunner(
        config=kubeflow_v2_dag_runner.KubeflowV2DagRunnerConfig(default_image=config.kubeflow.image),
        output_dir=os.path.dirname(os.path.abspath(output)),
        output_filename=os.path.basename(output),
    )
    # ``span`` is a runtime parameter: -1 (the newest span) unless a run sets it, a backfill.
    job = runner.run(
        create_pipeline(config, kfp_resolvers=True),
        parameter_values={SPAN_PARAMETER: config.data.span},
        write_out=False,
    )
    add_ingestion_driver(job)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as f:
        json.dump(job, f, indent=2, sort_keys=True)
    return job


def check_infra_validator(config: config_lib.PipelineConfig) -> None:
    """Refuses TFX's InfraValidator, which TFX 1.16's Kubeflow V2 compiler does not compile (its
    step builder raises NotImplementedError for the component): the bundle runtime validates there."""
    if config.infra_validator.runtime == TF_SERVING_RUNTIME:
        raise ConfigError(
            f"infra_validator.runtime='{TF_SERVING_RUNTIME}': TFX 1.16's Kubeflow V2 compiler (KFP 2, "
            f"Vertex AI) cannot compile TFX's InfraValidator; use runtime '{BUNDLE_RUNTIME}', or run "
            "it on Airflow or LocalDagRunner on a machine with Docker"
        )


def check_schedule(config: config_lib.PipelineConfig) -> None:
    """Refuses a window of spans, which the compiled job cannot read, and says what warm start
    does there: the job has TFX's built-in Resolvers only (``pipeline/resolvers.py``)."""
    data = config.data
    spanned = any(spans.has_specs(root) for root in (data.voc_root, data.sbd_root, data.root))
    if spanned and data.num_spans != 1:
        raise ConfigError(
            f"data.num_spans={data.num_spans}: the compiled Vertex job reads this run's span alone "
            "(Kubeflow V2 compiles only TFX's built-in Resolver strategies); set data.num_spans=1, "
            "or run the window on LocalDagRunner or Airflow"
        )
    if config.trainer.warm_start:
        logging.warning(
            "trainer.warm_start on Vertex: a scheduled run on unchanged data is cached up to the "
            "Trainer, which retrains from the newest blessed model (README, Scheduled runs)"
        )


def add_ingestion_driver(job: dict) -> None:
    """Runs SegmentationExampleGen's driver before Vertex checks the ingestion task's cache.

    TFX 1.16's compiler gives this pre-cache-check hook to its own FileBasedExampleGen only; without
    it the ingestion task has fixed parameters and no inputs, so every scheduled run is a cache
    hit and never sees new data. The hook (``vertex_driver``) resolves the span and fingerprints
    its files; Vertex adds the parameters it writes to the task's, and so to its cache key.
    """
    executors = job["pipelineSpec"]["deploymentSpec"]["executors"]
    [name] = [n for n in executors if n.startswith(INGESTION_TASK)]
    container = executors[name]["container"]
    container["lifecycle"] = {
        "preCacheCheck": {
            "command": ["python", "-m", vertex_driver.__name__],
            "args": ["--json_serialized_invocation_args", "{{$}}"],
        }
    }
