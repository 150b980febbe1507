"""One DAG, every orchestrator: Kubeflow (compiled, parsed as kfp-pipeline-spec protos), Airflow
(a real DagBag and ``dag.test()``), and the scale-out settings, built and checked, not run."""

import glob
import json
import os
import re
import subprocess
import sys

import pytest
import setuptools
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2
from tfx.orchestration.kubeflow.v2.container import kubeflow_v2_entrypoint_utils as entrypoint_utils
from tfx.utils import import_utils

from components.segmentation_example_gen import vertex_driver
from core import artifacts, features, paths
from core import config as config_lib
from core.checks import ConfigError
from pipeline import cli, kubeflow_runner, local_runner, resolvers
from pipeline.pipeline import create_pipeline
from serving import layout
from tests.helpers import mlmd
from trainer import warm_start

ROOT = paths.PROJECT_ROOT


def tfx_upstream(cfg, kfp_resolvers=False) -> dict:
    """{node id: sorted upstream node ids} of the TFX pipeline itself."""
    pipeline = create_pipeline(cfg, kfp_resolvers=kfp_resolvers)
    return {c.id: sorted(u.id for u in c.upstream_nodes) for c in pipeline.components}


def test_kubeflow_pipeline_job(tmp_path, caplog):
    # With batch inference: the unlabelled images of each span, segmented after the push.
    unlabelled = "gs://my-bucket/unlabelled/span-{SPAN}"
    cfg = config_lib.load_config("vertex", [f"inference.images={unlabelled}", "inference.overlay=true"])
    output = str(tmp_path / "pipeline.json")
    kubeflow_runner.compile_pipeline(cfg, output)
    # vertex.yaml warm-starts: the compile says what that costs a run on unchanged data there.
    assert "trainer.warm_start on Vertex: a scheduled run on unchanged data" in caplog.text
    job = json_format.Parse(open(output).read(), pipeline_spec_pb2.PipelineJob())
    spec = json_format.ParseDict(
        json_format.MessageToDict(job.pipeline_spec), pipeline_spec_pb2.PipelineSpec()
    )
    assert job.runtime_config.gcs_output_directory == "gs://my-bucket/deeplab-tfx"
    tasks = spec.root.dag.tasks
    expected = tfx_upstream(cfg, kfp_resolvers=True)
    # Each Resolver (TFX's LatestBlessedModelStrategy, the one Vertex compiles) becomes one KFP
    # task per resolved channel.
    ids = resolver_ids()
    resolver_tasks = sorted(t for t in tasks if t.startswith(ids))
    # Models and blessings, for the baseline and the warm start; no previous-span statistics,
    # which TFX's built-in strategies cannot resolve (resolvers.previous_span_statistics).
    assert len(resolver_tasks) == 2 + 2 and resolvers.PREVIOUS_SPAN_RESOLVER_ID not in expected
    assert set(tasks) - set(resolver_tasks) == set(expected) - set(ids)
    for name, upstream in expected.items():
        if name in ids:
            continue
        depends = sorted(tasks[name].dependent_tasks)
        assert [d for d in depends if d not in resolver_tasks] == [u for u in upstream if u not in ids], name
        assert sorted(d.split("-")[0] for d in depends if d in resolver_tasks) == [
            u for u in upstream if u in ids
        ]
    # Scheduled (trainer.warm_start): the Trainer starts from the latest blessed model.
    assert cfg.trainer.warm_start
    base_model = tasks["Trainer"].inputs.artifacts["base_model"].task_output_artifact
    assert base_model.producer_task == f"{resolvers.WARM_START_RESOLVER_ID}-model-resolver"
    executors = spec.deployment_spec.fields["executors"].struct_value.fields
    executor_dicts = {name: json_format.MessageToDict(e.struct_value) for name, e in executors.items()}
    containers = {name: e["container"] for name, e in executor_dicts.items() if "container" in e}
    # Every component runs in a container; the resolvers' tasks are importer-like, not containers.
    assert len(containers) == len([n for n in expected if n not in ids]), sorted(containers)
    for name, container in containers.items():
        assert container["image"] == cfg.kubeflow.image, name
    # Beam components run on Dataflow, whose workers start in the pipeline's image (our packages
    # and their requirements installed), not installing them with --setup_file at start-up.
    example_gen = containers["SegmentationExampleGen_executor"]["args"]
    assert "--runner=DataflowRunner" in example_gen and "--temp_location=gs://my-bucket/tmp" in example_gen
    for name, container in containers.items():
        beam_args = [
            a for a in container["args"] if a.startswith("--sdk_container_image") or "setup_file" in a
        ]
        assert beam_args == [f"--sdk_container_image={cfg.kubeflow.image}"], name
        # The image's entrypoint is Beam's worker boot: each component gives its own command.
        assert container["command"][:2] == ["python", "-m"], name
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

    # Serving validation between the Evaluator and the pusher, which pushes only what it blessed.
    def producers_of(task: str) -> dict:
        return {
            key: value.task_output_artifact.producer_task
            for key, value in tasks[task].inputs.artifacts.items()
        }

    assert producers_of("ServingValidator") == {
        "model": "Trainer", "model_blessing": "Evaluator", "examples": "SegmentationExampleGen"
    }  # fmt: skip
    assert producers_of("ServingPusher")["infra_blessing"] == "ServingValidator"
    # Batch inference: the pushed model, its push and this run's Examples in; a Beam job on Dataflow.
    inferrer = tasks["SegmentationInferrer"].inputs
    producers = {key: value.task_output_artifact.producer_task for key, value in inferrer.artifacts.items()}
    assert producers == {
        "model": "Trainer",
        "pushed_model": "ServingPusher",
        "examples": "SegmentationExampleGen",
    }
    assert inferrer.parameters["images"].runtime_value.constant_value.string_value == unlabelled
    assert "--runner=DataflowRunner" in containers["SegmentationInferrer_executor"]["args"]
    parameters = {key: value.runtime_value.constant_value for key, value in inferrer.parameters.items()}
    assert (parameters["overlay"].int_value, parameters["batch_pixels"].int_value) == (1, 4_000_000)
    # Without inference.images, no such node.
    assert "SegmentationInferrer" not in tfx_upstream(config_lib.load_config("vertex"), kfp_resolvers=True)
    # Each container reads its artifacts back by their type's title, imported as a Python path
    # (TFX's Kubeflow V2 entrypoint): our custom types must be importable under their names.
    titles = set()
    for component in spec.components.values():
        for definitions in (component.input_definitions, component.output_definitions):
            for artifact in definitions.artifacts.values():
                titles.add(yaml.safe_load(artifact.artifact_type.instance_schema)["title"])
    custom = sorted(title for title in titles if title.startswith("deeplab_tfx."))
    assert custom == [
        "deeplab_tfx.DataGateDecision", "deeplab_tfx.RejectedRecords", "deeplab_tfx.RunReport",
        "deeplab_tfx.SegmentationMasks",
    ]  # fmt: skip
    for title in titles:
        schema = pipeline_spec_pb2.ArtifactTypeSchema(instance_schema=f"title: {title}\ntype: object\n")
        artifact_class = import_utils.import_class_by_path(entrypoint_utils._retrieve_class_path(schema))
        # TFX's own types are titled "tfx.<TYPE_NAME>"; ours are titled by their TYPE_NAME.
        assert title in (artifact_class.TYPE_NAME, f"tfx.{artifact_class.TYPE_NAME}")


def test_tfx_infra_validator_with_tf_serving_where_docker_or_a_cluster_runs_it(tmp_path):
    """``infra_validator.runtime=tf_serving``: TFX's InfraValidator starts the tensorflow/serving
    image with Docker. It cannot run here (no Docker): the node is checked as LocalDagRunner and
    Airflow get it. TFX 1.16's Kubeflow V2 compiler cannot compile it, and Vertex AI has no
    Docker daemon for it: both refuse, saying so."""
    overrides = ["infra_validator.runtime=tf_serving", "infra_validator.timeout_seconds=120"]
    with pytest.raises(ConfigError, match="Vertex AI Pipelines has no Docker daemon for TFX's"):
        config_lib.load_config("vertex", overrides)
    kfp = config_lib.load_config("vertex", [*overrides, "vertex.enabled=false"])
    with pytest.raises(ConfigError, match="Kubeflow V2 compiler .* cannot compile TFX's InfraValidator"):
        kubeflow_runner.compile_pipeline(kfp, str(tmp_path / "pipeline.json"))
    cfg = config_lib.load_config("voc", overrides)
    nodes = {c.id: c for c in create_pipeline(cfg).components}
    assert "ServingValidator" not in nodes
    validator = nodes["InfraValidator"]
    assert validator.upstream_nodes == {nodes["Trainer"], nodes["SegmentationExampleGen"]}
    assert nodes["ServingPusher"].inputs["infra_blessing"].producer_component_id == "InfraValidator"
    spec = {
        key: json.loads(validator.exec_properties[key])
        for key in ("serving_spec", "validation_spec", "request_spec")
    }
    serving = {"tensorflow_serving": {"tags": ["2.16.1"]}, "local_docker": {}, "model_name": "deeplab"}
    requests = {"tensorflow_serving": {"signature_names": ["serving_examples"]}, "split_name": "eval"}
    assert spec == {
        "serving_spec": serving,
        "validation_spec": {"max_loading_time_seconds": 120, "num_tries": 1},
        "request_spec": {**requests, "num_examples": 8},
    }


def test_compile_command(tmp_path, capsys):
    # The command's own code, in this process: a subprocess would add only its imports' start-up.
    status = cli.main(
        ["compile", "kubeflow", "--config", "vertex", "--set", "kubeflow.image=example.com/deeplab:1",
         "--output", str(tmp_path / "job.json")]
    )  # fmt: skip
    assert status == 0
    assert "15 tasks, image example.com/deeplab:1" in capsys.readouterr().out
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
    # ... and the image copies each of them (and the module of our artifact types) before installing.
    dockerfile = open(os.path.join(ROOT, "Dockerfile")).read()
    copied = set(re.findall(r"^COPY (\w+) \1$", dockerfile, re.M))
    assert {name.split(".")[0] for name in shipped} == copied
    assert re.search(r"^COPY .*\bdeeplab_tfx\.py\b", dockerfile, re.M)
    # Dataflow starts its workers in the image (beam.use_pipeline_image): its entrypoint is Beam's
    # boot, of the release of the Beam SDK the image installs.
    constraints = open(os.path.join(ROOT, "constraints.txt")).read()
    beam = re.search(r"^apache-beam==(\S+)$", constraints, re.M).group(1)
    assert re.search(rf"^ARG BEAM_VERSION={re.escape(beam)}$", dockerfile, re.M)
    assert "FROM apache/beam_python3.10_sdk:${BEAM_VERSION} AS beam" in dockerfile
    assert "COPY --from=beam /opt/apache/beam /opt/apache/beam" in dockerfile
    assert re.search(r"^ENV RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT=1$", dockerfile, re.M)
    assert dockerfile.rstrip().endswith('ENTRYPOINT ["/opt/apache/beam/boot"]')
    assert {
        "components.segmentation_example_gen",
        "components.serving_pusher",
        "components.serving_validator",
        "components.segmentation_inferrer",
        "components.run_report",
        "inference",
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
def test_airflow_runs_on_a_schedule_ingesting_each_new_span(dataset_dir, tmp_path):
    """A real Airflow 2.10 with a SQLite metadata DB: the DagBag loads the DAG file, its task graph
    is the TFX DAG, and ``dag.test()`` runs it three times as the scheduler would: a first span;
    the next day no new data (every component a cache hit, nothing pushed; this second run used
    to fail in the Evaluator); then a second span arrives (ingested, warm-started from the first
    model, judged against it, pushed as version 2)."""
    spans_dir = tmp_path / "voc"
    spans_dir.mkdir()
    os.symlink(dataset_dir, spans_dir / "span-1")
    pattern = f"{spans_dir}/span-{{SPAN}}"
    overrides = [
        f"data.voc_root={pattern}", f"data.sbd_root={pattern}", f"pipeline_root={tmp_path / 'run'}",
        "trainer.train_steps=4", "trainer.steps_per_epoch=2", "evaluator.min_mean_iou=0.0",
        # Orchestration is under test, not the model: small images, one warm-up request, two samples.
        "transform.image_size=64", "pusher.warmup_requests=1", "report.samples=2",
        "infra_validator.num_examples=1",
        # Blessing is tested in test_evaluation.py; here the third run's model must be pushed.
        "evaluator.max_mean_iou_drop=1.0", "evaluator.max_class_iou_drop=1.0",
        "airflow.schedule=@daily",
        # Scheduled, so warm-started; on the first run the Resolver finds no blessed model.
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
    steps = ["run", "run", f"link:{dataset_dir}={spans_dir / 'span-2'}", "run"]
    log = tmp_path / "airflow.log"
    with open(log, "w") as out:
        proc = subprocess.run(
            [sys.executable, "-m", "tests.helpers.airflow_run", *steps],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=1200, check=False,
        )  # fmt: skip
    text = log.read_text()
    assert proc.returncode == 0, text[-4000:]
    result = json.loads(text.strip().splitlines()[-1])
    assert result["import_errors"] == {} and result["dags"] == ["deeplab-tiny"]
    assert result["schedule"] == "@daily" and result["max_active_runs"] == 1
    cfg = config_lib.load_config("tiny", overrides)
    assert result["upstream"] == tfx_upstream(cfg)
    assert [run["run_state"] for run in result["runs"]] == ["success"] * 3, text[-4000:]
    for run in result["runs"]:
        assert run["states"] == dict.fromkeys(tfx_upstream(cfg), "success"), run["states"]

    db = mlmd.store(os.path.join(tmp_path, "run", "metadata.sqlite"))
    by_component = mlmd.executions(db)
    components = [c for c in tfx_upstream(cfg) if c not in resolver_ids()]
    states = {c: [mlmd.state(e) for e in by_component[c]] for c in components}
    # The second run: no new data, so every component's execution is a cache hit.
    assert {c: s[1] for c, s in states.items()} == dict.fromkeys(components, "CACHED"), states
    # The third: a new span, so everything the data feeds runs again; the curated schema, made
    # from the schema file and the dataset spec alone, is the same as before.
    third = {c: "CACHED" if c == "DatasetSchemaGen" else "COMPLETE" for c in components}
    assert {c: s[2] for c, s in states.items()} == third, states
    first, _, third = by_component["SegmentationExampleGen"]
    [examples_1] = mlmd.outputs(db, first, "examples")
    [examples_2] = mlmd.outputs(db, third, "examples")
    assert (mlmd.int_property(examples_1, "span"), mlmd.int_property(examples_2, "span")) == (1, 2)
    # The same images in both spans (a link): the same record counts.
    counts = [
        {split: mlmd.int_property(e, artifacts.num_examples(split)) for split in features.SPLITS}
        for e in (examples_1, examples_2)
    ]  # fmt: skip
    assert counts[0] == counts[1] and sum(counts[0].values()) > 0
    # The third run's Trainer started from the first run's model, and its Evaluator judged
    # against it.
    [model_1] = mlmd.outputs(db, by_component["Trainer"][0], "model")
    trainer_3, evaluator_3 = by_component["Trainer"][2], by_component["Evaluator"][2]
    assert [a.id for a in mlmd.inputs(db, trainer_3, "base_model")] == [model_1.id]
    # ... on the window of spans (all: data.num_spans 0): spans 1 and 2.
    assert sorted(mlmd.int_property(a, "span") for a in mlmd.inputs(db, trainer_3, "examples")) == [1, 2]
    assert [a.id for a in mlmd.inputs(db, evaluator_3, "baseline_model")] == [model_1.id]
    assert [a.id for a in mlmd.inputs(db, by_component["Evaluator"][0], "baseline_model")] == []  # fmt: skip
    # The third run's gate compared span 2 with span 1 (the same images): nothing moved.
    [decision] = mlmd.outputs(db, by_component["DataGate"][2], "decision")
    assert json.load(open(os.path.join(decision.uri, "decision.json")))["drift"] == {}
    assert layout.versions(os.path.join(tmp_path, "run", "serving", "deeplab")) == [1, 2]
    # Each pushed after TF's bundle loader loaded it and answered as the Evaluator scored.
    for run in (0, 2):
        [infra] = mlmd.outputs(db, by_component["ServingValidator"][run], "blessing")
        assert mlmd.int_property(infra, artifacts.BLESSED) == 1
    assert os.path.exists(os.path.join(tmp_path, "run", "report", "index.html"))
    # The first run's Trainer waited on the Resolver, which gave it nothing: trained from scratch.
    assert resolvers.WARM_START_RESOLVER_ID in result["upstream"]["Trainer"]
    records = glob.glob(os.path.join(tmp_path, "run", "**", warm_start.WARM_START_FILE), recursive=True)
    assert len(records) == 1 and warm_start.read(os.path.dirname(records[0])).warm_started


def resolver_ids() -> tuple:
    return (
        resolvers.BASELINE_RESOLVER_ID,
        resolvers.WARM_START_RESOLVER_ID,
        resolvers.PREVIOUS_SPAN_RESOLVER_ID,
        resolvers.SPAN_WINDOW_RESOLVER_ID,
    )


def _vertex_executor_input(job: dict, tmp_path, span) -> dict:
    """The ExecutorInput Vertex gives the ingestion task's pre-cache check: the task's parameters
    as compiled (``span`` from the run's runtime parameters), its output artifacts and file."""
    task = job["pipelineSpec"]["root"]["dag"]["tasks"][kubeflow_runner.INGESTION_TASK]
    values = {}  # pipeline spec 2.0's typed Values, as TFX 1.16 compiles the job
    for name, parameter in task["inputs"]["parameters"].items():
        if "componentInputParameter" in parameter:
            values[name] = {"intValue": str(span)}
        else:
            values[name] = parameter["runtimeValue"]["constantValue"]
    component = job["pipelineSpec"]["components"][kubeflow_runner.INGESTION_TASK]
    artifacts = {
        key: {
            "artifacts": [{"name": f"artifacts/{key}", "type": d["artifactType"], "uri": str(tmp_path / key)}]
        }
        for key, d in component["outputDefinitions"]["artifacts"].items()
    }
    output_file = str(tmp_path / f"executor_output_{span}.json")
    return {"inputs": {"parameters": values}, "outputs": {"artifacts": artifacts, "outputFile": output_file}}


def test_vertex_ingestion_is_never_served_a_stale_cache(dataset_dir, tmp_path):
    """Vertex caches a task on its parameters; the compiled ingestion task's pre-cache-check hook
    adds the span and the digest of its files. Run here as Vertex runs it, on the compiled job:
    the command of the hook, in a fresh process, with the ExecutorInput of that task."""
    spans_dir = tmp_path / "voc"
    spans_dir.mkdir()
    os.symlink(dataset_dir, spans_dir / "span-1")
    overrides = [f"data.voc_root={spans_dir}/span-{{SPAN}}", f"data.sbd_root={spans_dir}/span-{{SPAN}}"]
    output = str(tmp_path / "job.json")
    # The job reads this run's span alone: a window (data.num_spans, default all) is refused.
    with pytest.raises(
        ConfigError, match="data.num_spans=0: the compiled Vertex job reads this run's span alone"
    ):
        kubeflow_runner.compile_pipeline(config_lib.load_config("vertex", overrides), output)
    overrides.append("data.num_spans=1")
    job = kubeflow_runner.compile_pipeline(config_lib.load_config("vertex", overrides), output)
    assert json.load(open(output)) == job
    # The span a run reads is a runtime parameter, the newest (-1) unless a run sets one (backfill).
    assert job["runtimeConfig"]["parameters"] == {"span": {"intValue": "-1"}}
    executor = job["pipelineSpec"]["deploymentSpec"]["executors"]["SegmentationExampleGen_executor"]
    hook = executor["container"]["lifecycle"]["preCacheCheck"]
    assert hook["args"] == ["--json_serialized_invocation_args", "{{$}}"]

    def pre_cache_check(span, fresh_process=False) -> dict:
        invocation = json.dumps(_vertex_executor_input(job, tmp_path, span))
        if fresh_process:  # the hook's command as compiled, as the container runs it
            command = [sys.executable if c == "python" else c for c in hook["command"]]
            subprocess.run([*command, "--json_serialized_invocation_args", invocation], cwd=ROOT, check=True)
        else:
            vertex_driver.main(["--json_serialized_invocation_args", invocation])
        written = json.load(open(tmp_path / f"executor_output_{span}.json"))
        [examples] = written["artifacts"]["examples"]["artifacts"]
        return {**written["parameterValues"], "examples_span": examples["metadata"]["span"]}

    first = pre_cache_check(-1, fresh_process=True)
    assert first["span"] == 1 and first["examples_span"] == 1
    assert first["input_fingerprint"].startswith("span:1,version:None,ids:")
    assert pre_cache_check(-1) == first, "unchanged data: the same cache key"
    os.symlink(dataset_dir, spans_dir / "span-2")
    second = pre_cache_check(-1)
    assert second["span"] == 2 and second["input_fingerprint"] != first["input_fingerprint"]
    # A backfill of span 1 resolves span 1 and its fingerprint again (the task's parameters also
    # hold the requested span: a backfill is a cache entry of its own).
    assert pre_cache_check(1) == first
