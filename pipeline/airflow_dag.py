"""The pipeline as an Airflow DAG (TFX's AirflowDagRunner): put this file in Airflow's dags folder.

The config comes from the environment of the scheduler and workers, so one file serves every
deployment: ``DEEPLAB_TFX_CONFIG`` (a named config or YAML path, default ``tiny``) and
``DEEPLAB_TFX_SET`` (``;``-separated ``section.key=value`` overrides). The schedule is the
config's ``airflow.schedule``; ML Metadata is SQLite under the pipeline root, or MySQL when the
config's ``mysql`` section names a host (use MySQL when Airflow runs tasks on several machines).
Each TFX component becomes one task; the task graph is the TFX DAG. Each scheduled run ingests
the newest span, or nothing when no data changed (SegmentationExampleGen's driver,
``resolve_exec_properties``, runs before TFX's legacy launcher looks up its cache). Importing TensorFlow and
TFX takes a while: raise ``core.dagbag_import_timeout`` (default 30 s) if the scheduler is busy.
"""

import datetime
import os

from tfx.orchestration.airflow.airflow_dag_runner import AirflowDagRunner, AirflowPipelineConfig

from core import config as config_lib
from core import paths
from pipeline.local_runner import metadata_connection
from pipeline.pipeline import create_pipeline


def config_from_environment() -> config_lib.PipelineConfig:
    overrides = [item for item in os.environ.get("DEEPLAB_TFX_SET", "").split(";") if item.strip()]
    return config_lib.load_config(os.environ.get("DEEPLAB_TFX_CONFIG", "tiny"), overrides)


def build_dag(config: config_lib.PipelineConfig):
    """An ``airflow.models.DAG`` with one task per TFX component."""
    config = config.resolved(paths.PROJECT_ROOT, os.getcwd())
    dag_config = {
        "schedule": config.airflow.schedule or None,
        "start_date": datetime.datetime.fromisoformat(config.airflow.start_date),
        "catchup": False,
        # One run at a time: a run resolves "its" artifacts as the ones output last
        # (pipeline/resolvers.py), and two runs ingesting the same new span would race.
        "max_active_runs": 1,
        "tags": ["tfx", "deeplab-tfx"],
    }
    pipeline = create_pipeline(config, metadata_connection_config=metadata_connection(config))
    return AirflowDagRunner(AirflowPipelineConfig(airflow_dag_config=dag_config)).run(pipeline)


# Airflow's DagBag collects DAG objects from module globals.
DAG = build_dag(config_from_environment())
