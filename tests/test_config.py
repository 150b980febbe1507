"""The one config object: YAML, overrides, named configs, and the pipeline each one builds."""

import dataclasses
import json
import os

import pytest

from core import config as config_lib
from core import paths
from core.dataset_spec import DatasetSpec
from pipeline import resolvers
from pipeline.pipeline import create_pipeline

COMPONENTS = [
    "SegmentationExampleGen",
    "StatisticsGen",
    "DatasetSchemaGen",
    "ExampleValidator",
    "previous_span_statistics_resolver",
    "DataGate",
    resolvers.SPAN_WINDOW_RESOLVER_ID,
    "Transform",
    "Trainer",
    resolvers.BASELINE_RESOLVER_ID,
    "Evaluator",
    "ServingValidator",
    "ServingPusher",
    "RunReportGen",
]


def test_defaults():
    cfg = config_lib.PipelineConfig()
    assert cfg.ingest.max_rejected_fraction == 0.01
    assert cfg.validation.allow_anomalies is False
    assert cfg.beam_pipeline_args() == [
        "--runner=DirectRunner",
        "--setup_file=setup.py",  # as given: the runner resolves it (test_paths_are_resolved_by_the_runner)
        "--direct_running_mode=multi_processing",
        "--direct_num_workers=0",
    ]
    # A command's own Beam job (ingest, infer) on this machine needs no sdist; on a remote runner
    # it does, as TFX's components do.
    assert "--setup_file=setup.py" not in cfg.beam_pipeline_args(tfx=False)
    dataflow = config_lib.apply_overrides(cfg, ["beam.runner=DataflowRunner"])
    assert dataflow.beam_pipeline_args(tfx=False) == ["--runner=DataflowRunner", "--setup_file=setup.py"]
    # Workers that start in the pipeline's image have everything installed: no setup.py to run.
    image = config_lib.apply_overrides(
        dataflow, ["beam.use_pipeline_image=true", "kubeflow.image=example.com/d:1"]
    )
    for tfx in (True, False):
        assert image.beam_pipeline_args(tfx) == [
            "--runner=DataflowRunner",
            "--sdk_container_image=example.com/d:1",
        ]


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("pipeline_name: p\ningest:\n  max_rejected_fraction: 0.2\nbeam:\n  extra_args: [--a=1]\n")
    cfg = config_lib.load_config(
        str(path),
        [
            "ingest.max_rejected_fraction=1",
            "validation.allow_anomalies=true",
            "data.voc_root=/d",
            "ingest.num_shards=4",
            "airflow.schedule=@daily",  # not YAML (@ is reserved there): read as a string
        ],
    )
    assert cfg.pipeline_name == "p" and cfg.airflow.schedule == "@daily"
    assert cfg.ingest == config_lib.IngestConfig(max_rejected_fraction=1.0, num_shards=4)
    assert cfg.validation.allow_anomalies is True and cfg.data.voc_root == "/d"
    assert cfg.beam_pipeline_args()[-1] == "--a=1"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.pipeline_name = "q"


@pytest.mark.parametrize(
    "override, message",
    [
        ("ingest.max_rejected_fraktion=0.1", "unknown config key 'ingest.max_rejected_fraktion'"),
        ("ingest.num_shards=many", "expected int"),
        ("validation.allow_anomalies=1", "expected true/false"),
        ("ingest=3", "is a section"),
        ("pipeline_name", "not of the form"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(config_lib.ConfigError, match=message):
        config_lib.load_config(None, [override])


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "trainer.backbone=resnet18",
            "trainer.backbone='resnet18' cannot work: it must be one of 'resnet50'",
        ),
        (
            "transform.image_size=-1",
            r"transform.image_size=-1 cannot work: it must be a number in \[32, 4096\]",
        ),
        (
            "ingest.max_rejected_fraction=.nan",
            r"ingest.max_rejected_fraction=nan cannot work: .* in \[0, 1\]",
        ),
        ("ingest.max_rejected_fraction=1.5", r"ingest.max_rejected_fraction=1.5 cannot work"),
        ("ingest.max_ignored_fraction=-0.1", r"ingest.max_ignored_fraction=-0.1 cannot work: .* in \[0, 1\]"),
        ("trainer.output_stride=4", "trainer.output_stride=4 cannot work: it must be one of 8, 16, 32"),
        ("trainer.steps_per_epoch=0", r"trainer.steps_per_epoch=0 cannot work: it must be a number >= 1"),
        ("trainer.learning_rate=.inf", "trainer.learning_rate=inf cannot work"),
        ("trainer.strategy=horovod", "trainer.strategy='horovod' cannot work"),
        ("trainer.mixed_precision=half", "trainer.mixed_precision='half' cannot work"),
        ("trainer.min_scale=3", "trainer.min_scale=3.0 is above trainer.max_scale=1.5"),
        ("trainer.max_batch_pixels=0", r"trainer.max_batch_pixels=0 cannot work: it must be a number >= 1"),
        (
            "trainer.max_batch_pixels=24999999",
            "trainer.max_batch_pixels=24999999 is below trainer.max_image_pixels=25000000: a request "
            "of one image at the limit would be refused",
        ),
        (
            "trainer.backbone_weights=imagenet;trainer.width=0.3",
            "trainer.width=0.3 with trainer.backbone_weights='imagenet': ImageNet weights exist for",
        ),
        ("evaluator.min_mean_iou=-0.1", "evaluator.min_mean_iou=-0.1 cannot work"),
        ("pusher.model_name=a/b", "pusher.model_name='a/b' cannot work"),
        ("beam.direct_running_mode=fast", "beam.direct_running_mode='fast' cannot work"),
        ("airflow.start_date=tomorrow", "airflow.start_date='tomorrow' cannot work"),
        ("mysql.port=0", "mysql.port=0 cannot work"),
        ("pipeline_name=", "pipeline_name='' cannot work"),
    ],
)
def test_values_that_cannot_work_fail_at_load_naming_the_key(override, message):
    with pytest.raises(config_lib.ConfigError, match=message):
        config_lib.load_config("tiny", override.split(";"))


def test_checks_see_every_override_whatever_their_order():
    # Checks that relate two keys run once, on the final values: neither order is refused.
    for overrides in (
        ["trainer.min_scale=2.5", "trainer.max_scale=4"],
        ["trainer.max_scale=4", "trainer.min_scale=2.5"],
    ):
        trainer = config_lib.load_config("tiny", overrides).trainer
        assert (trainer.min_scale, trainer.max_scale) == (2.5, 4.0)
    pixels = ["trainer.max_image_pixels=200000000", "trainer.max_batch_pixels=200000000"]
    for overrides in (pixels, pixels[::-1]):
        trainer = config_lib.load_config("tiny", overrides).trainer
        assert (trainer.max_image_pixels, trainer.max_batch_pixels) == (200_000_000, 200_000_000)
    widths = ["trainer.backbone=mobilenetv2", "trainer.width=0.6", "trainer.backbone_weights="]
    for overrides in (widths, widths[::-1]):
        assert config_lib.load_config("voc", overrides).trainer.width == 0.6
        cfg = config_lib.apply_overrides(config_lib.load_config("voc"), overrides)
        assert (cfg.trainer.backbone, cfg.trainer.width) == ("mobilenetv2", 0.6)


def test_yaml_values_are_checked_and_the_file_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("trainer:\n  backbone: resnet18\n")
    with pytest.raises(config_lib.ConfigError, match=f"{path}: trainer.backbone='resnet18' cannot work"):
        config_lib.load_config(str(path))
    # The Trainer's custom_config goes through the same checks.
    with pytest.raises(config_lib.ConfigError, match="Trainer custom_config: train_steps=0 cannot work"):
        config_lib.from_dict(config_lib.TrainerConfig, {"train_steps": 0}, where="Trainer custom_config")


def test_unknown_yaml_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("ingest:\n  shards: 3\n")
    with pytest.raises(config_lib.ConfigError, match=r"unknown config key\(s\) \['shards'\] in IngestConfig"):
        config_lib.load_config(str(path))


@pytest.mark.parametrize("name", config_lib.named_configs())
def test_every_named_config_builds_the_pipeline(name):
    cfg = config_lib.load_config(name, ["data.voc_root=/nonexistent/voc", "data.sbd_root=/nonexistent/sbd"])
    pipeline = create_pipeline(cfg)  # pure: nothing is read, so missing data is fine here
    nodes = {c.id: c for c in pipeline.components}
    # With trainer.warm_start (the scheduled configs), a Resolver of the Trainer's base model.
    warm_start = [resolvers.WARM_START_RESOLVER_ID] if cfg.trainer.warm_start else []
    assert sorted(nodes) == sorted(COMPONENTS + warm_start)
    assert pipeline.beam_pipeline_args == cfg.beam_pipeline_args()
    assert nodes["DataGate"].exec_properties["allow_anomalies"] is False
    # Drift: the gate compares this span's statistics with the previous span's.
    gate_inputs = ("ExampleValidator", "StatisticsGen", resolvers.PREVIOUS_SPAN_RESOLVER_ID)
    assert nodes["DataGate"].upstream_nodes == {nodes[n] for n in gate_inputs}
    assert nodes["DataGate"].exec_properties["max_drift"] == cfg.validation.max_drift
    assert nodes[resolvers.PREVIOUS_SPAN_RESOLVER_ID].upstream_nodes == {nodes["StatisticsGen"]}
    assert nodes["ExampleValidator"].upstream_nodes == {nodes["StatisticsGen"], nodes["DatasetSchemaGen"]}
    assert nodes["StatisticsGen"].upstream_nodes == {nodes["SegmentationExampleGen"]}
    example_gen = nodes["SegmentationExampleGen"].exec_properties
    assert example_gen["voc_root"] == "/nonexistent/voc"
    # The dataset spec reaches ingestion and the schema whole, as JSON.
    assert DatasetSpec.from_json(example_gen["dataset_spec"]) == cfg.dataset
    assert DatasetSpec.from_json(nodes["DatasetSchemaGen"].exec_properties["dataset_spec"]) == cfg.dataset
    transform = nodes["Transform"]
    # Transform, the Trainer and the Evaluator read the window of spans (data.num_spans).
    window = nodes[resolvers.SPAN_WINDOW_RESOLVER_ID]
    assert window.upstream_nodes == {nodes["SegmentationExampleGen"]}
    assert window.exec_properties["source_uri"] == {
        "num_spans": cfg.data.num_spans
    }  # TFX keeps the config there
    assert transform.upstream_nodes == {window, nodes["DatasetSchemaGen"], nodes["DataGate"]}
    assert transform.exec_properties["preprocessing_fn"] == "transform.preprocessing.preprocessing_fn"
    assert json.loads(transform.exec_properties["custom_config"]) == {
        "image_size": cfg.transform.image_size,
        "normalize_image": False,
        "num_classes": cfg.dataset.num_classes,
    }
    trainer = nodes["Trainer"]
    warm = {nodes[n] for n in warm_start}
    assert trainer.upstream_nodes == {window, nodes["Transform"], nodes["DatasetSchemaGen"], *warm}
    assert cfg.trainer.warm_start == (name in ("voc", "vertex"))
    assert trainer.exec_properties["run_fn"] == "trainer.run_fn.run_fn"
    trainer_config = json.loads(trainer.exec_properties["custom_config"])
    # The Trainer gets the whole trainer section, and it round-trips into the same dataclass.
    assert config_lib.from_dict(config_lib.TrainerConfig, trainer_config["trainer"]) == cfg.trainer
    assert json.loads(trainer.exec_properties["train_args"])["num_steps"] == cfg.trainer.train_steps
    evaluator = nodes["Evaluator"]
    upstream = (
        resolvers.SPAN_WINDOW_RESOLVER_ID,
        "DatasetSchemaGen",
        "Trainer",
        resolvers.BASELINE_RESOLVER_ID,
    )
    assert evaluator.upstream_nodes == {nodes[n] for n in upstream}
    # The baseline is chosen relative to this run's candidate; the base model to its Examples.
    assert nodes[resolvers.BASELINE_RESOLVER_ID].upstream_nodes == {nodes["Trainer"]}
    if warm_start:
        assert nodes[resolvers.WARM_START_RESOLVER_ID].upstream_nodes == {nodes["SegmentationExampleGen"]}
    # Ingestion reads the newest span unless the config names one (a backfill).
    assert example_gen["requested_span"] == cfg.data.span == -1
    # ... and fails when the train split's masks are mostly ignored.
    assert example_gen["max_ignored_fraction"] == cfg.ingest.max_ignored_fraction == 0.5
    eval_config = json.loads(evaluator.exec_properties["eval_config"])
    [spec] = eval_config["metrics_specs"]
    [mean_iou] = [m for m in spec["metrics"] if m["class_name"] == "SegmentationMeanIoU"]
    [threshold] = mean_iou["per_slice_thresholds"]
    assert threshold["slicing_specs"] == [{}], "the blessing judges the overall slice only"
    assert threshold["threshold"]["value_threshold"]["lower_bound"] == cfg.evaluator.min_mean_iou
    assert threshold["threshold"]["change_threshold"]["absolute"] == -cfg.evaluator.max_mean_iou_drop
    assert eval_config["model_specs"] == [
        {
            "signature_name": "serving_examples",
            "inference_batch_size": cfg.evaluator.batch_size,
            "model_type": "tf_generic",
        }
    ]
    assert json.loads(evaluator.exec_properties["example_splits"]) == ["eval"]
    pusher = nodes["ServingPusher"]
    validator = nodes["ServingValidator"]
    assert validator.upstream_nodes == {nodes["Trainer"], nodes["Evaluator"], nodes["SegmentationExampleGen"]}
    settings = {
        k: v for k, v in dataclasses.asdict(cfg.infra_validator).items() if k in validator.exec_properties
    }
    assert settings == {
        k: validator.exec_properties[k]
        for k in ("num_examples", "max_memory_mb", "timeout_seconds", "max_mask_disagreement")
    }
    assert validator.exec_properties["evaluator_batch_size"] == cfg.evaluator.batch_size
    assert pusher.upstream_nodes == {
        nodes["Trainer"], nodes["Evaluator"], validator, nodes["SegmentationExampleGen"]
    }  # fmt: skip
    assert pusher.exec_properties["model_base_path"] == cfg.serving_model_dir()
    assert nodes["RunReportGen"].exec_properties["publish_dir"] == f"{cfg.pipeline_root}/report"


def test_named_configs_exist():
    assert {"tiny", "voc", "vertex"} <= set(config_lib.named_configs())


def test_serving_dir_defaults_under_the_pipeline_root():
    cfg = config_lib.load_config("tiny", ["pipeline_root=/runs/r"])
    assert cfg.serving_model_dir() == "/runs/r/serving/deeplab" and cfg.report_dir() == "/runs/r/report"
    moved = config_lib.apply_overrides(cfg, ["pusher.serving_dir=gs://b/serving", "pusher.model_name=seg"])
    assert moved.serving_model_dir() == "gs://b/serving/seg"


def test_without_a_schema_file_schema_is_inferred():
    cfg = config_lib.load_config("tiny", ["data.voc_root=/v", "validation.schema_path="])
    ids = {c.id for c in create_pipeline(cfg).components}
    assert "SchemaGen" in ids and "DatasetSchemaGen" not in ids


def test_paths_are_resolved_by_the_runner_against_the_bases_it_gives(tmp_path):
    """One resolver, two bases: project files against the project (the checkout, or the image's
    directory for Kubeflow), run paths against the working directory (none for a remote runner)."""
    cfg = config_lib.load_config(
        "tiny",
        ["pipeline_root=runs/p", "data.voc_root=data/voc", "data.root=gs://b/d", "metadata_path=",
         "pusher.serving_dir=serve", "trainer.backup_dir=/abs/backup", "trainer.backbone_weights=w/b.h5"],
    )  # fmt: skip
    local = cfg.resolved(paths.PROJECT_ROOT, str(tmp_path))
    assert local.validation.schema_path == os.path.join(paths.PROJECT_ROOT, "pipeline/schema/schema.pbtxt")
    assert local.beam.setup_file == os.path.join(paths.PROJECT_ROOT, "setup.py")
    assert local.pipeline_root == str(tmp_path / "runs/p")
    assert local.metadata_path == str(tmp_path / "runs/p/metadata.sqlite")
    assert (local.data.voc_root, local.data.sbd_root, local.data.root) == (
        str(tmp_path / "data/voc"),
        "",
        "gs://b/d",
    )
    assert (local.pusher.serving_dir, local.trainer.backup_dir) == (str(tmp_path / "serve"), "/abs/backup")
    assert local.trainer.backbone_weights == str(tmp_path / "w/b.h5")
    imagenet = dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, backbone_weights="imagenet"))
    assert imagenet.resolved("/p", "/w").trainer.backbone_weights == "imagenet"
    assert local.resolved("/elsewhere", "/other") == local, "resolving twice changes nothing"
    image = cfg.resolved("/deeplab-tfx", None)
    assert image.validation.schema_path == "/deeplab-tfx/pipeline/schema/schema.pbtxt"
    assert image.beam.setup_file == "/deeplab-tfx/setup.py"
    assert (image.pipeline_root, image.data.voc_root, image.metadata_path) == ("runs/p", "data/voc", "")
    nodes = {c.id: c for c in create_pipeline(image).components}
    assert (
        nodes["DatasetSchemaGen"].exec_properties["schema_file"] == image.validation.schema_path
    ), "create_pipeline takes the paths as they come"


def test_without_serving_validation_the_pusher_takes_the_evaluators_blessing_alone():
    cfg = config_lib.load_config("tiny", ["infra_validator.runtime=none"])
    nodes = {c.id: c for c in create_pipeline(cfg).components}
    assert "ServingValidator" not in nodes and "InfraValidator" not in nodes
    assert "infra_blessing" not in nodes["ServingPusher"].inputs
    assert nodes["ServingPusher"].upstream_nodes == {
        nodes["Trainer"], nodes["Evaluator"], nodes["SegmentationExampleGen"]
    }  # fmt: skip
    assert "infra_blessing" not in nodes["RunReportGen"].inputs
