"""One DAG, every orchestrator: Kubeflow (compiled, parsed as kfp-pipeline-spec protos), Airflow
(a real DagBag and ``dag.test()``), and the scale-out settings, built and checked, not run."""

import glob
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import setuptools
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from core import config as config_lib
from core import paths
from pipeline import cli, kubeflow_runner, local_runner
from pipeline.pipeline import create_pipeline
from serving import layout
from trainer import warm_start

ROOT = paths.PROJECT_ROOT


def tfx_upstream(cfg) -> dict:
    """{node id: sorted upstream node ids} of the TFX pipeline itself."""
    return {c.id: sorted(u.id for u in c.upstream_nodes) for c in create_pipeline(cfg).components}


def test_kubeflow_pipeline_job(tmp_path):
    cfg = config_lib.load_config("vertex")
    output = str(tmp_path / "pipeline.json")
    kubeflow_runner.compile_pipeline(cfg, output)
    job = json_format.Parse(open(output).read(), pipeline_spec_pb2.PipelineJob())
    spec = json_format.ParseDict(
        json_format.MessageToDict(job.pipeline_spec), pipeline_spec_pb2.PipelineSpec()
    )
    assert job.runtime_config.gcs_output_directory == "gs://my-bucket/deeplab-tfx"
    tasks = spec.root.dag.tasks
    expected = tfx_upstream(cfg)
    # The Resolver compiles into one KFP task per resolved channel.
    resolver_tasks = sorted(t for t in tasks if t.startswith("latest_blessed_model_resolver"))
    assert len(resolver_tasks) == 2
    assert set(tasks) - set(resolver_tasks) == set(expected) - {"latest_blessed_model_resolver"}
    for name, upstream in expected.items():
        if name == "latest_blessed_model_resolver":
            continue
        depends = sorted(tasks[name].dependent_tasks)
        wanted = sorted(
            "latest_blessed_model_resolver-model-resolver" if u.startswith("latest") else u for u in upstream
        )
        assert depends == wanted, name
    # Scheduled (trainer.warm_start): the Trainer starts from the latest blessed model.
    assert cfg.trainer.warm_start
    base_model = tasks["Trainer"].inputs.artifacts["base_model"].task_output_artifact
    assert base_model.producer_task == "latest_blessed_model_resolver-model-resolver"
    executors = spec.deployment_spec.fields["executors"].struct_value.fields
    executor_dicts = {name: json_format.MessageToDict(e.struct_value) for name, e in executors.items()}
    containers = {name: e["container"] for name, e in executor_dicts.items() if "container" in e}
    # Every component runs in a container; the resolver's tasks are importer-like, not containers.
    assert len(containers) == len(expected) - 1, sorted(containers)
    for name, container in containers.items():
        assert container["image"] == cfg.kubeflow.image, name
    # Beam components run on Dataflow, with setup.py inside the image shipping our packages.
    example_gen = containers["SegmentationExampleGen_executor"]["args"]
    assert "--runner=DataflowRunner" in example_gen and "--setup_file=/deeplab-tfx/setup.py" in example_gen
    assert "--temp_location=gs://my-bucket/tmp" in example_gen
    # The Trainer is Vertex AI's, with the configured worker pool running the same image.
    trainer = containers["Trainer_executor"]["args"]
    assert any("google_cloud_ai_platform.trainer.executor" in a for a in trainer), trainer
    params = tasks["Trainer"].inputs.parameters["custom_config"].runtime_value.constant_value.string_value
    custom = json.loads(params)
    pools = custom["ai_platform_training_args"]["worker_pool_specs"]
    assert pools[0]["machine_spec"] == {
        "machine_type": "n1-standard-16", "accelerator_type": "NVIDIA_TESLA_V100", "accelerator_count": 4
    }  # fmt: skip
    assert pools[0]["container_spec"]["image_uri"] == cfg.kubeflow.image
    assert custom["trainer"]["strategy"] == "mirrored" and custom["ai_platform_enable_vertex"] is True
    schema = tasks["DatasetSchemaGen"].inputs.parameters["schema_file"].runtime_value.constant_value
    assert schema.string_value == "/deeplab-tfx/pipeline/schema/schema.pbtxt"


def test_compile_command(tmp_path, capsys):
    # The command's own code, in this process: a subprocess would add only its imports' start-up.
    status = cli.main(
        ["compile", "kubeflow", "--config", "vertex", "--set", "kubeflow.image=example.com/deeplab:1",
         "--output", str(tmp_path / "job.json")]
    )  # fmt: skip
    assert status == 0
    assert "12 components, image example.com/deeplab:1" in capsys.readouterr().out
    assert json.load(open(tmp_path / "job.json"))["pipelineSpec"]["pipelineInfo"]["name"] == "deeplab-voc"


@pytest.mark.parametrize(
    "runner, extra",
    [
        ("DataflowRunner", ["--project=p", "--region=europe-west4", "--temp_location=gs://b/tmp"]),
        ("FlinkRunner", ["--flink_master=flink-jobmanager:8081", "--environment_type=EXTERNAL"]),
        ("SparkRunner", ["--spark_master_url=spark://spark-master:7077"]),
    ],
)
def test_scale_out_beam_args(runner, extra):
    cfg = config_lib.load_config("voc", [f"beam.runner={runner}", f"beam.extra_args={json.dumps(extra)}"])
    args = create_pipeline(cfg.resolved(ROOT, None)).beam_pipeline_args
    assert args == [f"--runner={runner}", f"--setup_file={ROOT}/setup.py", *extra]
    assert not any(a.startswith("--direct_") for a in args)


def test_setup_py_ships_every_package_workers_import():
    include = re.search(r"include=\[([^\]]*)\]", open(os.path.join(ROOT, "setup.py")).read()).group(1)
    patterns = re.findall(r'"([^"]+)"', include)
    shipped = set(setuptools.find_packages(where=ROOT, include=patterns))
    top_level = {d for d in os.listdir(ROOT) if os.path.exists(os.path.join(ROOT, d, "__init__.py"))}
    assert top_level - shipped == {"tests", "benchmarks"}
    assert {
        "components.segmentation_example_gen",
        "components.serving_pusher",
        "components.run_report",
        "core",
    } <= shipped


def test_distributed_training_and_mysql_settings():
    cfg = config_lib.load_config(
        "vertex",
        ["vertex.replica_count=3", "trainer.strategy=multi_worker_mirrored", "mysql.host=mlmd.internal"],
    )
    trainer = {c.id: c for c in create_pipeline(cfg).components}["Trainer"]
    custom = json.loads(trainer.exec_properties["custom_config"])
    pools = custom["ai_platform_training_args"]["worker_pool_specs"]
    assert [p["replica_count"] for p in pools] == [1, 2], "a chief and two workers"
    assert custom["trainer"]["strategy"] == "multi_worker_mirrored"
    tpu = config_lib.load_config(
        "voc", ["trainer.strategy=tpu", "trainer.tpu=my-tpu", "trainer.mixed_precision=auto"]
    )
    assert json.loads(
        {c.id: c for c in create_pipeline(tpu).components}["Trainer"].exec_properties["custom_config"]
    )["trainer"]["tpu"] == "my-tpu"  # fmt: skip
    os.environ["DEEPLAB_TFX_MYSQL_PASSWORD"] = "secret"
    try:
        connection = local_runner.metadata_connection(cfg)
    finally:
        del os.environ["DEEPLAB_TFX_MYSQL_PASSWORD"]
    assert (connection.mysql.host, connection.mysql.port, connection.mysql.database) == (
        "mlmd.internal",
        3306,
        "mlmd",
    )
    assert connection.mysql.password == "secret"
    sqlite = local_runner.metadata_connection(config_lib.load_config("tiny", ["metadata_path=/x/m.sqlite"]))
    assert sqlite.sqlite.filename_uri == "/x/m.sqlite"


@pytest.mark.slow
def test_airflow_dag_runs_end_to_end(dataset_dir, tmp_path):
    """A real Airflow 2.10 with a SQLite metadata DB: the DagBag loads the DAG file, its task
    graph is the TFX DAG, and ``dag.test()`` runs every task to success."""
    data = str(tmp_path / "data")
    shutil.copytree(dataset_dir, data)
    overrides = [
        f"data.voc_root={data}", f"data.sbd_root={data}", f"pipeline_root={tmp_path / 'run'}",
        "trainer.train_steps=4", "trainer.steps_per_epoch=2", "evaluator.min_mean_iou=0.0",
        "airflow.schedule=@daily",
        # Scheduled, so warm-started; on this first run the Resolver finds no blessed model.
        "trainer.warm_start=true",
        # Airflow's orchestration is under test here; Beam's multi-process mode is the local
        # pipeline tests' (its worker start-up cost a minute over the four Beam components).
        "beam.direct_running_mode=in_memory",
    ]  # fmt: skip
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path / 'airflow' / 'airflow.db'}",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        # Importing TF and TFX alone can take Airflow's default 30 s on a busy 2-core machine.
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "600",
        "DEEPLAB_TFX_CONFIG": "tiny",
        "DEEPLAB_TFX_SET": ";".join(overrides),
    }
    log = tmp_path / "airflow.log"
    with open(log, "w") as out:
        proc = subprocess.run(
            [sys.executable, "-m", "tests.helpers.airflow_run", "--run"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=1200, check=False,
        )  # fmt: skip
    text = log.read_text()
    assert proc.returncode == 0, text[-4000:]
    result = json.loads(text.strip().splitlines()[-1])
    assert result["import_errors"] == {} and result["dags"] == ["deeplab-tiny"]
    assert result["schedule"] == "@daily"
    cfg = config_lib.load_config("tiny", overrides)
    assert result["upstream"] == tfx_upstream(cfg)
    assert result["states"] == dict.fromkeys(tfx_upstream(cfg), "success"), result["states"]
    assert result["run_state"] == "success"
    assert layout.versions(os.path.join(tmp_path, "run", "serving", "deeplab")) == [1]
    assert os.path.exists(os.path.join(tmp_path, "run", "report", "index.html"))
    # The Trainer waited on the Resolver, which gave it nothing: trained from scratch, no record.
    assert "latest_blessed_model_resolver" in result["upstream"]["Trainer"]
    assert glob.glob(os.path.join(tmp_path, "run", "**", warm_start.WARM_START_FILE), recursive=True) == []
