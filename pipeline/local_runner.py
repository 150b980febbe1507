"""Runs the pipeline on this machine: LocalDagRunner, SQLite ML Metadata, Beam DirectRunner.

Thin by design: it resolves the config's paths (``PipelineConfig.resolved``: run paths against the
working directory), picks the metadata store and reports the outcome; the DAG itself comes from
``create_pipeline``. For a shared metadata store set the config's ``mysql`` section
(``metadata_connection``). The pipeline root may be a bucket (``gs://``): what this reads and
writes there goes through ``tf.io.gfile``.
"""

import json
import logging
import os
import time
from typing import Sequence

import tensorflow as tf
from ml_metadata import metadata_store as mlmd
from tfx.orchestration import metadata as tfx_metadata
from tfx.orchestration.local.local_dag_runner import LocalDagRunner
from tfx.orchestration.pipeline import RunOptions

from components.run_report.component import INDEX, REPORT_JSON, RunReport
from core import artifacts, metrics, paths
from core import config as config_lib
from pipeline import logs, progress
from pipeline.pipeline import create_pipeline


def metadata_connection(config: config_lib.PipelineConfig):
    """ML Metadata's connection: MySQL when ``mysql.host`` is set (shared, production), else SQLite."""
    if config.mysql.host:
        return tfx_metadata.mysql_metadata_connection_config(
            host=config.mysql.host,
            port=config.mysql.port,
            database=config.mysql.database,
            username=config.mysql.username,
            password=os.environ.get("DEEPLAB_TFX_MYSQL_PASSWORD", ""),
        )
    return tfx_metadata.sqlite_metadata_connection_config(config.metadata_path)


def run(config: config_lib.PipelineConfig, to_nodes: Sequence[str] = ()) -> int:
    """Runs the pipeline once; returns a process exit code.

    ``to_nodes``: run only these components and what they need (a TFX partial run), e.g.
    ``("DataGate",)`` to ingest and validate new data without training.
    """
    config = config.resolved(paths.PROJECT_ROOT, os.getcwd())
    key, root = config.required_data_root()
    if not root:
        print(f"deeplab-tfx run: {key} is not set (--set {key}=DIR)", file=logs.errors())
        return 2
    tf.io.gfile.makedirs(config.pipeline_root)
    metadata = metadata_connection(config)
    pipeline = create_pipeline(config, metadata_connection_config=metadata)
    known = [c.id for c in pipeline.components]
    unknown = sorted(set(to_nodes) - set(known))
    if unknown:
        print(f"deeplab-tfx run: no component {unknown} (the pipeline has {known})", file=logs.errors())
        return 2
    run_options = RunOptions(to_nodes=list(to_nodes)) if to_nodes else None
    logging.info("running %s under %s", config.pipeline_name, config.pipeline_root)
    start = time.time()
    with progress.following(metadata, config.pipeline_name) as follower:
        try:
            LocalDagRunner().run(pipeline, run_options=run_options)
        except Exception as e:  # noqa: BLE001 - the trace for debugging, then one plain line.
            logging.exception("pipeline run failed")
            where = f" in component {follower.running}" if follower.running else ""
            print(
                f"deeplab-tfx run: FAILED{where} after {time.time() - start:.0f} s: {type(e).__name__}: {e}",
                file=logs.errors(),
            )
            return 1
    print(
        f"deeplab-tfx run: {config.pipeline_name} finished in {time.time() - start:.0f} s"
        + (f" (up to {', '.join(to_nodes)})" if to_nodes else "")
        + f"; outputs under {config.pipeline_root}, metadata in {config.metadata_path}"
    )
    if to_nodes:  # the summary below is of a whole run: training, evaluation, the report
        return 0
    if follower.nothing_new():
        spans = ", ".join(str(span) for span in sorted(set(follower.spans))) or "0"
        print(
            f"deeplab-tfx run: no new data since the last run (span {spans}, same files, same config): "
            "every component was a cache hit; nothing retrained, nothing pushed"
        )
        return 0
    for line in run_summary(metadata, config.report_dir()):
        print(f"deeplab-tfx run: {line}")
    return 0


def run_summary(connection_config, report_dir: str) -> list:
    """Lines on the latest run's outcome: training, evaluation, blessing, push, report."""
    store = mlmd.MetadataStore(connection_config)
    lines = [training_summary(store)]
    reports = store.get_artifacts_by_type(RunReport.TYPE_NAME)
    if reports:
        with tf.io.gfile.GFile(os.path.join(max(reports, key=lambda a: a.id).uri, REPORT_JSON)) as f:
            report = json.load(f)
        overall, decision = report["evaluation"]["overall"], report["decision"]
        lines.append(
            f"Evaluator: mean IoU {overall[metrics.MEAN_IOU]:.4f}, pixel accuracy "
            f"{overall[metrics.PIXEL_ACCURACY]:.4f} "
            f"on {overall['examples']} eval images at original resolution"
        )
        if artifacts.PUSHED_VERSION in decision:
            lines.append(
                f"blessed; pushed as version {decision[artifacts.PUSHED_VERSION]} to "
                f"{decision[artifacts.PUSHED_DESTINATION]}"
            )
        elif decision[artifacts.BLESSED]:
            # Blessed, not pushed: the serving validation refused it (or the push was a re-run's).
            reason = decision.get(artifacts.NOT_PUSHED_REASON)
            lines.append(f"blessed, NOT pushed: {reason}" if reason else "blessed")
        else:
            lines.append("NOT blessed, NOT pushed: " + "; ".join(decision["reasons"]))
        lines.append(f"report: {os.path.join(report_dir, INDEX)}")
    return [line for line in lines if line]


def training_summary(store: mlmd.MetadataStore) -> str:
    """One line on the latest trained model: best eval mIoU, its epoch, where the model is."""
    runs = store.get_artifacts_by_type("ModelRun")
    models = store.get_artifacts_by_type("Model")
    if not runs or not models:
        return ""
    history_path = os.path.join(max(runs, key=lambda a: a.id).uri, artifacts.HISTORY_FILE)
    if not tf.io.gfile.exists(history_path):
        return ""
    with tf.io.gfile.GFile(history_path) as f:
        epochs = json.load(f)[artifacts.HISTORY_EPOCHS]
    best = max(epochs, key=lambda row: row.get(metrics.VAL_MEAN_IOU, -1.0))
    return (
        f"Trainer: best eval mean IoU {best.get(metrics.VAL_MEAN_IOU, float('nan')):.4f} at epoch "
        f"{best['epoch']} of {len(epochs)} (step {best['step']}); model in "
        f"{max(models, key=lambda a: a.id).uri}"
    )
