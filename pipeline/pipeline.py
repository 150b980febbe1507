"""``create_pipeline``: the one place the DAG is written.

Pure: it reads no files, resolves no path and starts nothing, so every runner (local, Kubeflow,
Airflow) and every test builds exactly the same graph from a ``PipelineConfig``. Runners resolve
paths (``PipelineConfig.resolved``, with their own bases) and pick the metadata store; nothing here
depends on where the pipeline runs.

The dataset spec is read once, when the config loads (``config.dataset``), and handed to the
components that need it in the form each takes: SegmentationExampleGen and DatasetSchemaGen a
JSON parameter, Transform the number of classes in its ``custom_config``, the Evaluator the class
names in its metrics' config. Ingestion writes it into the Examples artifact, where the Trainer
and the report read it back, and the Trainer into the model, where serving reads it: the data
carries what it is.

    SegmentationExampleGen ─► StatisticsGen ─► DatasetSchemaGen|SchemaGen ─► ExampleValidator ─► DataGate
                                   └─► Resolver (the last passed span's statistics) ─────────────────┘
    SegmentationExampleGen ─► Resolver (the newest data.num_spans spans) ─► Transform ◄── DataGate
                                               └──► Trainer ─► Evaluator ─► ServingValidator ──┐
                          RunReport ◄── ServingPusher ◄────────────────────────────────────────┘
                                             └─► SegmentationInferrer (with inference.images)
    Trainer ─► Resolver (newest blessed model older than the candidate) ─► Evaluator (its baseline)
    SegmentationExampleGen ─► Resolver (newest blessed model of other data) ─► Trainer (base_model,
                                                                     with trainer.warm_start)

With ``infra_validator.runtime=tf_serving`` TFX's InfraValidator (inputs: the Trainer's model and
the Examples; it cannot see the blessing) takes ServingValidator's place.
The Resolvers answer relative to this run's artifacts, so that a run on unchanged data is a cache
hit end to end (``pipeline/resolvers.py``, which also says what Vertex compiles instead: there
the window is this run's span alone and drift is not checked).
"""

import dataclasses
from typing import Optional

from ml_metadata.proto import metadata_store_pb2
from tfx.components import (
    Evaluator,
    ExampleValidator,
    InfraValidator,
    SchemaGen,
    StatisticsGen,
    Trainer,
    Transform,
)
from tfx.dsl.components.common.resolver import Resolver
from tfx.orchestration.data_types import RuntimeParameter
from tfx.orchestration.pipeline import Pipeline
from tfx.proto import infra_validator_pb2, trainer_pb2, transform_pb2

from components.data_gate.component import DataGate
from components.dataset_schema.component import DatasetSchemaGen
from components.run_report.component import RunReportGen
from components.segmentation_example_gen.component import SegmentationExampleGen
from components.segmentation_inferrer.component import SegmentationInferrer
from components.serving_pusher.component import ServingPusher
from components.serving_validator.component import ServingValidator
from core import features, signatures
from core.choices import BUNDLE_RUNTIME, NO_RUNTIME
from core.config import PipelineConfig
from evaluation import eval_config
from pipeline import resolvers
from trainer import run_fn
from transform import preprocessing

# The compiled job's runtime parameter of the span to ingest (``span_request``).
SPAN_PARAMETER = "span"


def dotted(fn) -> str:
    """``module.function``: how TFX names a module function it imports on the worker. Taken from
    the imported function, so a moved or renamed one cannot leave a stale string here."""
    return f"{fn.__module__}.{fn.__qualname__}"


def create_components(config: PipelineConfig, kfp_resolvers: bool = False) -> list:
    """The pipeline's components, wired, in topological order. ``kfp_resolvers``: TFX's built-in
    Resolver strategy, the only kind Kubeflow V2 / Vertex AI compiles (``pipeline/resolvers.py``)."""
    dataset = config.dataset.to_json()
    example_gen = SegmentationExampleGen(
        voc_root=config.data.voc_root,
        sbd_root=config.data.sbd_root or None,
        data_root=config.data.root or None,
        dataset_spec=config.dataset,
        max_rejected_fraction=config.ingest.max_rejected_fraction,
        num_shards=config.ingest.num_shards,
        requested_span=span_request(config, kfp_resolvers),
        max_ignored_fraction=config.ingest.max_ignored_fraction,
    )
    statistics_gen = StatisticsGen(examples=example_gen.outputs["examples"])
    if config.validation.schema_path:
        # A curated schema is the contract; inferring one would accept whatever arrived.
        schema_gen = DatasetSchemaGen(schema_file=config.validation.schema_path, dataset_spec=dataset)
    else:
        schema_gen = SchemaGen(statistics=statistics_gen.outputs["statistics"], infer_feature_shape=True)
    example_validator = ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"]
    )
    # Drift: this span's statistics against the previous span's (none on a first span; not on
    # Vertex, which cannot compile that Resolver: resolvers.previous_span_statistics).
    previous_span = (
        None if kfp_resolvers else resolvers.previous_span_statistics(statistics_gen.outputs["statistics"])
    )
    drift_inputs = (
        {}
        if previous_span is None
        else {
            "statistics": statistics_gen.outputs["statistics"],
            "previous_statistics": previous_span.outputs["statistics"],
        }
    )
    data_gate = DataGate(
        anomalies=example_validator.outputs["anomalies"],
        max_drift=config.validation.max_drift,
        allow_anomalies=config.validation.allow_anomalies,
        accept_drift_of_span=config.validation.accept_drift_of_span,
        **drift_inputs,
    )
    # What Transform, the Trainer and the Evaluator read: the newest data.num_spans spans the gate
    # let in (this run's alone in the compiled Vertex job: resolvers.span_window).
    window = (
        None
        if kfp_resolvers
        else resolvers.span_window(example_gen.outputs["examples"], config.data.num_spans)
    )
    training_examples = window.outputs[resolvers.EXAMPLES_KEY] if window else example_gen.outputs["examples"]
    transform = Transform(
        examples=training_examples,
        schema=schema_gen.outputs["schema"],
        preprocessing_fn=dotted(preprocessing.preprocessing_fn),
        custom_config={
            **dataclasses.asdict(config.transform),
            preprocessing.NUM_CLASSES_KEY: config.dataset.num_classes,
        },
        # Analyzers (class pixel counts) see the train split only. Not materialized: a
        # transformed 512 px example is ~5 MB against ~0.1 MB raw, so the trainer applies the
        # transform graph in its tf.data pipeline instead (figures in the README).
        splits_config=transform_pb2.SplitsConfig(analyze=[features.TRAIN_SPLIT]),
        materialize=False,
        disable_statistics=True,
    )
    # Nothing downstream of the gate may start before it has passed.
    transform.add_upstream_node(data_gate)
    trainer_class, custom_config = Trainer, run_fn.custom_config(config)
    if config.vertex.enabled:
        # Same run_fn, run as a Vertex AI custom job on the configured machines. Imported here:
        # the Vertex SDK takes seconds to import, and Airflow times DAG file imports.
        from tfx.v1.extensions import google_cloud_ai_platform

        trainer_class = google_cloud_ai_platform.Trainer
        custom_config = {**custom_config, **vertex_training_args(config)}
    # With trainer.warm_start, the Trainer starts from the newest model an earlier run blessed on
    # other data (none on the first run).
    warm_start = (
        resolvers.warm_start_model(example_gen.outputs["examples"], kfp_resolvers)
        if config.trainer.warm_start
        else None
    )
    trainer = trainer_class(
        run_fn=dotted(run_fn.run_fn),
        examples=training_examples,
        transform_graph=transform.outputs["transform_graph"],
        schema=schema_gen.outputs["schema"],
        train_args=trainer_pb2.TrainArgs(num_steps=config.trainer.train_steps),
        # No num_steps: evaluate on the whole eval split unless the config caps it.
        eval_args=trainer_pb2.EvalArgs(num_steps=config.trainer.eval_steps or None),
        custom_config=custom_config,
        base_model=warm_start.outputs["model"] if warm_start else None,
    )
    baseline = resolvers.baseline_model(trainer.outputs["model"], kfp_resolvers)
    evaluator, *validator, pusher = validation_and_push(
        config,
        example_gen.outputs["examples"],
        schema_gen.outputs["schema"],
        trainer.outputs["model"],
        baseline,
        eval_examples=training_examples,
    )
    report = RunReportGen(
        examples=example_gen.outputs["examples"],
        transform_graph=transform.outputs["transform_graph"],
        model=trainer.outputs["model"],
        model_run=trainer.outputs["model_run"],
        evaluation=evaluator.outputs["evaluation"],
        blessing=evaluator.outputs["blessing"],
        pushed_model=pusher.outputs["pushed_model"],
        publish_dir=config.report_dir(),
        title=config.pipeline_name,
        samples=config.report.samples,
        gate_decision=data_gate.outputs["decision"],
        infra_blessing=validator[0].outputs["blessing"] if validator else None,
    )
    # Batch inference (TFX's BulkInferrer place): the pushed model's masks for this run's span of
    # the unlabelled images, with lineage to the model and its push.
    inferrer = (
        SegmentationInferrer(
            model=trainer.outputs["model"],
            pushed_model=pusher.outputs["pushed_model"],
            examples=example_gen.outputs["examples"],
            images=config.inference.images,
            overlay=config.inference.overlay,
            batch_pixels=config.inference.batch_pixels,
            max_rejected_fraction=config.inference.max_rejected_fraction,
            max_batch_images=config.inference.max_batch_images,
        )
        if config.inference.images
        else None
    )
    return [
        example_gen, statistics_gen, schema_gen, example_validator,
        *([previous_span] if previous_span else []), data_gate, *([window] if window else []), transform,
        *([warm_start] if warm_start else []), trainer, baseline, evaluator, *validator, pusher, report,
        *([inferrer] if inferrer else []),
    ]  # fmt: skip


def span_request(config: PipelineConfig, runtime_parameter: bool):
    """The span ingestion reads (``data.span``); in a compiled job a runtime parameter ``span``
    with that default, so that a backfill is a run with ``span`` set, not a recompile."""
    if not runtime_parameter:
        return config.data.span
    return RuntimeParameter(name=SPAN_PARAMETER, ptype=int, default=config.data.span)


def vertex_training_args(config: PipelineConfig) -> dict:
    """The Vertex AI Trainer's settings: region and worker pools running the Kubeflow image.

    One replica trains under ``mirrored`` over its accelerators; more replicas add a worker
    pool, and TFX sets TF_CONFIG for ``multi_worker_mirrored``.
    """
    from tfx.v1.extensions import google_cloud_ai_platform

    vertex = config.vertex
    machine = {"machine_type": vertex.machine_type}
    if vertex.accelerator_type:
        machine.update(accelerator_type=vertex.accelerator_type, accelerator_count=vertex.accelerator_count)
    pool = {
        "machine_spec": machine,
        "replica_count": 1,
        "container_spec": {"image_uri": config.kubeflow.image},
    }
    pools = [pool] + (
        [{**pool, "replica_count": vertex.replica_count - 1}] if vertex.replica_count > 1 else []
    )
    return {
        google_cloud_ai_platform.ENABLE_VERTEX_KEY: True,
        google_cloud_ai_platform.VERTEX_REGION_KEY: vertex.region,
        google_cloud_ai_platform.TRAINING_ARGS_KEY: {"project": vertex.project, "worker_pool_specs": pools},
    }


def validation_and_push(
    config: PipelineConfig, examples, schema, model, baseline: Resolver, eval_examples=None
) -> list:
    """Evaluator, serving validation and ServingPusher for the Model channel ``model``, against
    ``baseline`` (``resolvers.baseline_model``): on the first run, when it gives none, TFX's
    Evaluator judges by the value thresholds alone. The Evaluator scores the eval split of
    ``eval_examples`` (the window of spans; default ``examples``); the serving validation sends
    eval examples of ``examples``, the pusher takes warm-up images from it.

    Separate so that tests can judge given models (through an Importer) with the same wiring.
    """
    evaluator = Evaluator(
        examples=examples if eval_examples is None else eval_examples,
        model=model,
        baseline_model=baseline.outputs["model"],
        schema=schema,
        eval_config=eval_config.make_eval_config(config.evaluator, config.dataset),
        example_splits=[features.EVAL_SPLIT],
    )
    validator = infra_validator(config, model, evaluator.outputs["blessing"], examples)
    pusher = ServingPusher(
        model=model,
        model_blessing=evaluator.outputs["blessing"],
        evaluation=evaluator.outputs["evaluation"],
        examples=examples,
        infra_blessing=validator.outputs["blessing"] if validator else None,
        model_base_path=config.serving_model_dir(),
        model_name=config.pusher.model_name,
        warmup_requests=config.pusher.warmup_requests,
    )
    return [evaluator, *([validator] if validator else []), pusher]


def infra_validator(config: PipelineConfig, model, model_blessing, examples):
    """What loads the candidate before the push (``infra_validator.runtime``): our ServingValidator
    (TF's SavedModel loader in a child process, every orchestrator), or TFX's InfraValidator
    starting the ``tensorflow/serving`` image with Docker. Both output an InfraBlessing. None
    with runtime "none"."""
    settings = config.infra_validator
    if settings.runtime == NO_RUNTIME:
        return None
    if settings.runtime == BUNDLE_RUNTIME:
        return ServingValidator(
            model=model,
            model_blessing=model_blessing,
            examples=examples,
            model_name=config.pusher.model_name,
            warmup_requests=config.pusher.warmup_requests,
            num_examples=settings.num_examples,
            max_memory_mb=settings.max_memory_mb,
            timeout_seconds=settings.timeout_seconds,
            max_mask_disagreement=settings.max_mask_disagreement,
            evaluator_batch_size=config.evaluator.batch_size,
        )
    # TFX's InfraValidator cannot see the Evaluator's blessing (it validates every candidate),
    # checks that TF Serving loads the model and answers, not what it answers, and sets no
    # figures: the pusher reads its "blessed" alone. Docker only: TFX's KubernetesRunner runs
    # only inside a Kubeflow Pipelines v1 pod, and the Kubeflow V2 compiler refuses the component.
    return InfraValidator(
        model=model,
        examples=examples,
        serving_spec=infra_validator_pb2.ServingSpec(
            tensorflow_serving=infra_validator_pb2.TensorFlowServing(tags=[settings.tf_serving_tag]),
            model_name=config.pusher.model_name,
            local_docker=infra_validator_pb2.LocalDockerConfig(),
        ),
        validation_spec=infra_validator_pb2.ValidationSpec(
            max_loading_time_seconds=settings.timeout_seconds, num_tries=1
        ),
        request_spec=infra_validator_pb2.RequestSpec(
            tensorflow_serving=infra_validator_pb2.TensorFlowServingRequestSpec(
                signature_names=[signatures.SERVING_EXAMPLES]
            ),
            split_name=features.EVAL_SPLIT,
            num_examples=settings.num_examples,
        ),
    )


def create_pipeline(
    config: PipelineConfig,
    metadata_connection_config: Optional[metadata_store_pb2.ConnectionConfig] = None,
    kfp_resolvers: bool = False,
) -> Pipeline:
    """Builds the TFX pipeline for ``config``; the runner supplies the metadata connection, and the
    Kubeflow compiler asks for what it can compile (``create_components``)."""
    return Pipeline(
        pipeline_name=config.pipeline_name,
        pipeline_root=config.pipeline_root,
        components=create_components(config, kfp_resolvers),
        enable_cache=config.enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=config.beam_pipeline_args(),
    )
