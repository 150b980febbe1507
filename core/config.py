"""One config object for the whole pipeline: its schema, and the functions that load it.

``PipelineConfig`` is a frozen tree of dataclasses, so a config can be hashed, compared and
passed to the pure ``create_pipeline`` without anyone mutating it on the way. It loads from
YAML (named configs live in ``pipeline/configs/``) and takes ``section.key=value`` overrides
from the command line; every key is checked, so a typo fails loudly instead of being ignored.
How a mapping becomes a checked config is ``core/config_engine.py``; the values some keys choose
from are ``core/choices.py``'s; paths are resolved by the runners (``core/paths.py``).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterable, Mapping, Optional

import yaml

from core import config_engine, dataset_spec, paths
from core.checks import (  # noqa: F401 - ConfigError is raised to this module's callers
    ISO_DATE,
    NAME,
    NOT_EMPTY,
    Checked,
    ConfigError,
    above,
    at_least,
    between,
    each,
    one_of,
)
from core.choices import (
    BACKBONES,
    BUNDLE_RUNTIME,
    DIRECT_RUNNING_MODES,
    IMAGENET_WEIGHTS,
    INFRA_RUNTIMES,
    KERAS_BN_MOMENTUM,
    MOBILENETV2,
    MOBILENETV2_IMAGENET_WIDTHS,
    OPTIMIZERS,
    OUTPUT_STRIDES,
    PRECISIONS,
    RESNET50,
    SGD,
    STRATEGIES,
    TF_SERVING_RUNTIME,
    TTA_SIZE_MULTIPLE,
    tta_size,
)
from core.dataset_spec import DatasetSpec


@dataclasses.dataclass(frozen=True)
class DataConfig(Checked):
    """Where the raw datasets are. Either VOC root may be the archive's top directory.

    A root may name a span per folder with TFX's specs, ``{SPAN}`` or ``{YYYY}{MM}{DD}``, and
    ``{VERSION}`` (``gs://bucket/voc/span-{SPAN}``): each run reads the newest span, or ``span``
    (components/segmentation_example_gen/spans.py; README "Scheduled runs").
    """

    voc_root: str = ""  # holds VOCdevkit/VOC2012 (or is VOC2012 itself)
    sbd_root: str = ""  # holds benchmark_RELEASE/dataset; empty: VOC only
    # A ``folders`` dataset (``dataset.layout``): holds its images and masks directories.
    root: str = ""
    # The span to read: -1 the newest there is (scheduled runs); a number re-runs that span (a
    # backfill). A runtime parameter, ``span``, of the compiled Vertex job.
    span: int = -1
    # Transform, the Trainer and the Evaluator read the newest this many spans up to this run's
    # (TFX's RollingRange num_spans), those the data gate passed; 0: all of them.
    num_spans: int = 0

    RULES = {"span": at_least(-1), "num_spans": at_least(0)}


@dataclasses.dataclass(frozen=True)
class IngestConfig(Checked):
    """SegmentationExampleGen settings."""

    # The run fails when more than this fraction of listed ids is rejected (dead-lettered).
    max_rejected_fraction: float = 0.01
    # TFRecord shards per split; 0 lets the runner choose (good for Dataflow autoscaling).
    num_shards: int = 0
    # The run fails when more than this fraction of the train split's mask pixels is ignored:
    # the model would learn from the rest alone. Real ignore labels are thin (VOC's void band
    # around objects, Oxford-IIIT Pet's trimap border); mostly ignored pixels mean a value map
    # is missing (``dataset.values``). It also fails when no train pixel is of a class other
    # than the background (nothing to learn), and warns when more than this of the eval split is
    # ignored. 1 turns the train checks off.
    max_ignored_fraction: float = 0.5

    RULES = {
        "max_rejected_fraction": between(0, 1),
        "num_shards": at_least(0),
        "max_ignored_fraction": between(0, 1),
    }


@dataclasses.dataclass(frozen=True)
class ValidationConfig(Checked):
    """Schema and data-gate settings."""

    # Curated schema, completed from the dataset spec by DatasetSchemaGen; empty: SchemaGen infers one.
    schema_path: str = "pipeline/schema/schema.pbtxt"
    # TFX trains even when ExampleValidator finds anomalies; our gate stops the run unless
    # this is set.
    allow_anomalies: bool = False
    # Drift since the previous span: the gate stops a span whose sources, formats, image sizes
    # or classes present moved by more than this Jensen-Shannon divergence (0: the same
    # distribution, 1: disjoint) from the previous span's (1 turns the check off).
    max_drift: float = 0.3
    # A drifted span the gate lets through once the change is understood: this span number
    # (-1: none). A span, not a switch: left in the config it lets no later span drift, and the
    # scheduled runs after it keep the gate's parameters, so unchanged data stays a cache hit.
    accept_drift_of_span: int = -1

    RULES = {"max_drift": between(0, 1), "accept_drift_of_span": at_least(-1)}


@dataclasses.dataclass(frozen=True)
class TransformConfig(Checked):
    """Transform settings (passed to ``preprocessing_fn`` as ``custom_config``)."""

    # Longer image side after the aspect-preserving resize; images are padded to a square.
    image_size: int = 512
    # Scale images by the train split's per-channel mean/std (Transform analyzers); off, the
    # image stays in 0-255 and the model's own preprocessing scales it.
    normalize_image: bool = False

    # keras.applications' backbones need 32 px at least.
    RULES = {"image_size": between(32, 4096)}


@dataclasses.dataclass(frozen=True)
class TrainerConfig(Checked):
    """Model, optimisation, distribution and fault-tolerance settings of the Trainer.

    Defaults are the DeepLabV3+ VOC recipe (ResNet-50, output stride 16, SGD momentum 0.9,
    poly decay, batch 16 over replicas); ``tiny.yaml`` shrinks it for tests and the demo.
    """

    # Model.
    backbone: str = RESNET50  # resnet50 | mobilenetv2
    width: float = 1.0  # MobileNetV2 width multiplier (alpha)
    output_stride: int = 16  # 16 | 8 | 32 (32: no dilation, as keras_hub's DeepLabV3+)
    # "imagenet" (downloads where a network exists), a local .h5 of the keras.applications
    # model without top, or "" for random init.
    backbone_weights: str = IMAGENET_WEIGHTS
    aspp_filters: int = 256
    decoder_filters: int = 256
    low_level_filters: int = 48
    dropout: float = 0.1
    # Batch-norm moving-average momentum, backbone and heads: the eval-mode statistics average
    # over about 1 / (1 - momentum) steps.
    bn_momentum: float = KERAS_BN_MOMENTUM
    # Optimisation. The global batch is batch_size_per_replica x replicas.
    batch_size_per_replica: int = 8
    train_steps: int = 30000
    # Evaluation, best-mIoU checkpoint and history happen once per epoch of this many steps.
    steps_per_epoch: int = 1000
    eval_steps: int = 0  # 0: the whole eval split every epoch
    # sgd: SGD with momentum (DeepLab's recipe, for fine-tuning pretrained backbones); adamw:
    # Adam with decoupled weight decay (momentum is then Adam's beta_1).
    optimizer: str = SGD
    learning_rate: float = 0.007
    warmup_steps: int = 0
    end_learning_rate: float = 0.0
    poly_power: float = 0.9
    momentum: float = 0.9
    weight_decay: float = 1e-4  # decoupled; batch-norm parameters and biases are excluded
    class_weights: bool = False  # weight the loss by inverse class pixel frequency
    class_weight_power: float = 0.5
    min_scale: float = 0.5  # random scale augmentation range
    max_scale: float = 2.0
    shuffle_buffer: int = 512
    seed: int = 0  # seeds weight init, shuffling and augmentation (Python, numpy and TF)
    # Distribution: one_device | mirrored | multi_worker_mirrored (reads TF_CONFIG) | tpu.
    strategy: str = "one_device"
    tpu: str = ""  # TPUClusterResolver address or name; "" on a TPU VM or from the environment
    sync_batch_norm: bool = True  # only takes effect with more than one replica
    # Backbone batch-norm in inference mode with its pretrained statistics (small batches).
    freeze_backbone_batch_norm: bool = False
    # auto: mixed_float16 on GPU, mixed_bfloat16 on TPU, float32 on CPU.
    mixed_precision: str = "auto"
    # Fault tolerance: BackupAndRestore every this many steps (0: every epoch), so a killed
    # training resumes mid-epoch when restarted on the same model_run_dir (the execution's: a
    # pre-empted replica, a retried task). Backups go to <model_run_dir>/backup, or with
    # backup_dir set to <backup_dir>/<hash of model_run_dir>: keyed by the execution either
    # way, so a new pipeline run never resumes another's. Deleted once the export is complete.
    backup_every_steps: int = 100
    backup_dir: str = ""
    # Export the weights of the best eval mIoU (else the last ones).
    export_best: bool = True
    # serving_default also returns [B, H, W, N] probabilities of the N classes (for VOC's 21,
    # too big for gRPC's 4 MiB default at 500x375 beyond a batch of two: off by default).
    with_probabilities: bool = False
    # The exported signatures refuse (INVALID_ARGUMENT, before decoding) an image whose header
    # declares more pixels than this: a few KB can declare 30000x30000, and the masks at original
    # resolution cost N float32 logits per pixel (VOC's 21: 12 GB at 12000x12000). 25 MP covers
    # photos of today's phones; serving works at 512 px anyway.
    max_image_pixels: int = 25_000_000
    # ... and a request whose images together declare more than this: the limit above bounds one
    # image, not a request, and 16 JPEGs of 10 KB declaring 2500x2500 each (100 MP) cost 1.15 GB
    # and 12 s. 4 images at the limit; at least max_image_pixels, so one such image is served.
    max_batch_pixels: int = 100_000_000
    # Warm start (scheduled runs): the pipeline gives the Trainer the newest model an earlier run
    # blessed (base_model), and training starts from its weights when their shapes match this
    # model's, else from scratch, saying why (trainer/warm_start.py).
    warm_start: bool = False
    # ... and then trains at this fraction of learning_rate (warm-up and poly decay as set): at
    # the full rate, 50 steps took the tiny model from 0.939 to 0.602 eval mean IoU; at 0.1x to
    # 0.957 (README, Trainer).
    warm_start_learning_rate_factor: float = 0.1
    # ... for this many steps (0: train_steps); a run that starts from scratch takes train_steps.
    warm_start_train_steps: int = 0
    # Test-time augmentation in every predicting signature (trainer/tta.py): the logits of the
    # input resized by each scale and, with tta_flip, mirrored, averaged. () and false: off.
    tta_scales: tuple = ()
    tta_flip: bool = False
    # Eval images shown per evaluation in TensorBoard (image | true mask | predicted mask,
    # trainer/summaries.py), 0: none. 3 at 128 px cost 0.07-0.12 s per evaluation on 2 CPU cores.
    summary_images: int = 3

    RULES = {
        "backbone": one_of(*BACKBONES),
        "width": above(0),
        "output_stride": one_of(*OUTPUT_STRIDES),
        "aspp_filters": at_least(1),
        "decoder_filters": at_least(1),
        "low_level_filters": at_least(1),
        "dropout": between(0, 1, high_open=True),
        "bn_momentum": between(0, 1, high_open=True),
        "batch_size_per_replica": at_least(1),
        "train_steps": at_least(1),
        "steps_per_epoch": at_least(1),
        "eval_steps": at_least(0),
        "optimizer": one_of(*OPTIMIZERS),
        "learning_rate": above(0),
        "warmup_steps": at_least(0),
        "end_learning_rate": at_least(0),
        "poly_power": above(0),
        "momentum": between(0, 1, high_open=True),
        "weight_decay": at_least(0),
        "class_weight_power": at_least(0),
        "min_scale": above(0),
        "max_scale": above(0),
        "shuffle_buffer": at_least(1),
        "seed": at_least(0),
        "strategy": one_of(*STRATEGIES),
        "mixed_precision": one_of(*PRECISIONS),
        "backup_every_steps": at_least(0),
        "max_image_pixels": at_least(1),
        "max_batch_pixels": at_least(1),
        "warm_start_learning_rate_factor": above(0),
        "warm_start_train_steps": at_least(0),
        # Beyond 2x a 512 px model serves 1024 px views: 4x the compute of each for little gain.
        "tta_scales": each(between(0.25, 2.0)),
        "summary_images": at_least(0),
    }

    def check_together(self) -> None:
        if self.min_scale > self.max_scale:
            raise ConfigError(f"min_scale={self.min_scale} is above max_scale={self.max_scale}")
        if self.max_batch_pixels < self.max_image_pixels:
            raise ConfigError(
                f"max_batch_pixels={self.max_batch_pixels} is below max_image_pixels="
                f"{self.max_image_pixels}: a request of one image at the limit would be refused"
            )
        if (
            self.backbone == MOBILENETV2
            and self.backbone_weights == IMAGENET_WEIGHTS
            and self.width not in MOBILENETV2_IMAGENET_WIDTHS
        ):
            raise ConfigError(
                f"width={self.width} with backbone_weights='imagenet': ImageNet weights exist for "
                f"MobileNetV2 widths {MOBILENETV2_IMAGENET_WIDTHS} only (or set backbone_weights='')"
            )


@dataclasses.dataclass(frozen=True)
class EvaluatorConfig(Checked):
    """Evaluator settings: what a model must score to be blessed (and so pushed)."""

    # Value threshold: overall eval mean IoU (original resolution, void ignored) at least this.
    min_mean_iou: float = 0.5
    # Change threshold against the latest blessed model: mean IoU may drop by at most this
    # (absolute). The first run has no blessed model and is judged by min_mean_iou alone.
    max_mean_iou_drop: float = 0.01
    # Change threshold per class: no class's IoU may drop by more than this (absolute) against
    # the latest blessed model, so that a retrain that loses a class is not blessed on its mean.
    max_class_iou_drop: float = 0.1
    # ... except classes with fewer labelled pixels than this in the eval split (at original
    # resolution): exempt, and listed as such in the report; their IoU is noise.
    min_class_pixels: int = 1000
    # Images per model call in TFMA (its default adapts up to 1000: too many 512 px images).
    batch_size: int = 8

    RULES = {
        "min_mean_iou": between(0, 1),
        "max_mean_iou_drop": between(0, 1),
        "max_class_iou_drop": between(0, 1),
        "min_class_pixels": at_least(1),
        "batch_size": at_least(1),
    }


@dataclasses.dataclass(frozen=True)
class PusherConfig(Checked):
    """Where blessed models go: ``<serving_dir>/<model_name>/<version>/``, TF Serving's layout."""

    serving_dir: str = ""  # "": <pipeline_root>/serving
    model_name: str = "deeplab"
    # PredictionLog records built from eval images, replayed by TF Serving when it loads a
    # version so that the first real request does not pay for graph warm-up; 0: none.
    warmup_requests: int = 4

    # The model name is a directory and TF Serving's model_spec.name.
    RULES = {"model_name": NAME, "warmup_requests": at_least(0)}


@dataclasses.dataclass(frozen=True)
class InfraValidatorConfig(Checked):
    """Serving validation between the Evaluator and the pusher: a blessed candidate is loaded and
    run as TF Serving would before it is pushed (``serving/validation.py``); refused, not pushed."""

    # "bundle": TF's SavedModel loader in a child process (every orchestrator, Vertex AI
    # included); "tf_serving": TFX's InfraValidator starting the tensorflow/serving image with
    # Docker (LocalDagRunner or Airflow on a machine with Docker; TFX's KubernetesRunner runs
    # only inside Kubeflow Pipelines v1, and Kubeflow V2 does not compile the component); "none":
    # no serving validation, the pusher pushes what the Evaluator blessed (a model too large to
    # load twice on the pipeline's machines; tests of other things).
    runtime: str = BUNDLE_RUNTIME
    # The serving process's limits, as a serving pod's: past either it is refused. "bundle": its
    # memory while it loads and serves (Python and TensorFlow included, ~0.6 GB before a model)
    # and its whole run's time; "tf_serving": TF Serving's time to load (max_loading_time_seconds).
    max_memory_mb: int = 4096
    timeout_seconds: int = 600
    # Eval examples sent one per request after the warm-up records, timed (p50, p99) and, with
    # "bundle", compared with the masks the Evaluator scored.
    num_examples: int = 8
    # "bundle": the share of those pixels whose class may differ from the Evaluator's (two loaders
    # of one graph may break an exact tie of two logits differently): above it, refused.
    max_mask_disagreement: float = 0.001
    # "tf_serving": the tensorflow/serving image's tag (the TF release the model was exported with).
    tf_serving_tag: str = "2.16.1"

    RULES = {
        "runtime": one_of(*INFRA_RUNTIMES),
        "max_memory_mb": at_least(1),
        "timeout_seconds": at_least(1),
        "num_examples": at_least(1),
        "max_mask_disagreement": between(0, 1),
        "tf_serving_tag": NOT_EMPTY,
    }


@dataclasses.dataclass(frozen=True)
class InferenceConfig(Checked):
    """Batch inference (``deeplab-tfx infer``, and the pipeline's SegmentationInferrer after the
    pusher): masks for every image of a folder, written as palette PNGs at the images' sizes."""

    # The pipeline's node: a folder of unlabelled images to segment with each newly pushed model,
    # or "" for no such node. May name spans like ``data``'s roots (``/data/unlabelled/span-{SPAN}``):
    # the node reads the span this run ingested.
    images: str = ""
    # Also write each image with its mask painted over it (``overlays/<name>.jpg``).
    overlay: bool = False
    # Images go to the model in batches of at most this many declared pixels in all (one image
    # larger than this goes alone). Inside the exported model's own per-request budget
    # (``trainer.max_batch_pixels``), which refuses a larger batch.
    batch_pixels: int = 4_000_000
    # ... and of at most this many images: the model resizes every image to transform.image_size,
    # so a batch of thumbnails costs it as much as one of photos.
    max_batch_images: int = 16
    # The job fails (after writing everything) when more than this fraction of its inputs is
    # rejected: a folder that is mostly not images, or a model that refuses them, is no data problem.
    max_rejected_fraction: float = 0.1

    RULES = {
        "batch_pixels": at_least(1),
        "max_batch_images": at_least(1),
        "max_rejected_fraction": between(0, 1),
    }


@dataclasses.dataclass(frozen=True)
class ReportConfig(Checked):
    """The run report (``<pipeline_root>/report/index.html``)."""

    # Eval images shown as image | ground truth | prediction | overlay.
    samples: int = 6

    RULES = {"samples": at_least(0)}


@dataclasses.dataclass(frozen=True)
class VertexConfig(Checked):
    """Train on Vertex AI custom training instead of in the Trainer's own container."""

    enabled: bool = False
    project: str = ""
    region: str = "us-central1"
    machine_type: str = "n1-standard-16"
    accelerator_type: str = "NVIDIA_TESLA_V100"  # "" for CPU only
    accelerator_count: int = 4  # one replica, MirroredStrategy over these
    # More than one: a chief and replica_count - 1 workers (multi_worker_mirrored).
    replica_count: int = 1

    RULES = {"accelerator_count": at_least(0), "replica_count": at_least(1)}


@dataclasses.dataclass(frozen=True)
class KubeflowConfig(Checked):
    """``deeplab-tfx compile kubeflow``: the container every component runs in."""

    # Built from this repository's Dockerfile (setup.py installs pipeline/, components/, ...).
    image: str = "gcr.io/my-project/deeplab-tfx:0.1.0"
    # Where the Dockerfile puts the repository: relative config paths (the schema, Beam's
    # setup.py) are resolved against it, not against the compiling machine's checkout.
    project_root: str = "/deeplab-tfx"

    RULES = {"image": NOT_EMPTY}


@dataclasses.dataclass(frozen=True)
class AirflowConfig(Checked):
    """``pipeline/airflow_dag.py``: the DAG's schedule."""

    schedule: str = "@weekly"  # cron expression or preset; "" for manual runs only
    start_date: str = "2026-01-01"

    RULES = {"start_date": ISO_DATE}


@dataclasses.dataclass(frozen=True)
class MySqlConfig(Checked):
    """A shared ML Metadata store (production); empty ``host``: SQLite at ``metadata_path``.

    The password comes from the environment (``DEEPLAB_TFX_MYSQL_PASSWORD``), never a config.
    """

    host: str = ""
    port: int = 3306
    database: str = "mlmd"
    username: str = "mlmd"

    RULES = {"port": between(1, 65535)}


@dataclasses.dataclass(frozen=True)
class BeamConfig(Checked):
    """Beam settings shared by every Beam-powered component."""

    runner: str = "DirectRunner"
    # in_memory | multi_threading | multi_processing (DirectRunner only).
    direct_running_mode: str = "multi_processing"
    # 0: one worker per core.
    direct_num_workers: int = 0
    # Ships this project's packages to remote workers (Dataflow, Flink, Spark). Also keeps TFX
    # from building and attaching a TFX sdist to every Beam job, which it does when no
    # dependency flag is given.
    setup_file: str = "setup.py"
    # Remote workers start in the pipeline's image (``kubeflow.image``, as
    # ``--sdk_container_image``), which holds this project and its requirements, instead of
    # installing them with ``setup_file`` at every worker's start-up (TensorFlow, TFX, TFT and
    # TFMA from PyPI: minutes per worker, and a job that fails when an index is slow or a wheel
    # is gone). Dataflow's answer for heavy dependencies; the Dockerfile builds the image so that
    # Beam's worker harness starts in it. ``setup_file`` is then not passed.
    use_pipeline_image: bool = False
    # Passed through as they are, e.g. ("--project=p", "--region=r", "--temp_location=gs://...").
    extra_args: tuple = ()

    RULES = {
        "runner": NOT_EMPTY,
        "direct_running_mode": one_of(*DIRECT_RUNNING_MODES),
        "direct_num_workers": at_least(0),
    }


@dataclasses.dataclass(frozen=True)
class PipelineConfig(Checked):
    """Everything ``create_pipeline`` and the runners need."""

    pipeline_name: str = "deeplab-tfx"
    pipeline_root: str = "runs/deeplab-tfx"
    # SQLite ML Metadata file; empty: <pipeline_root>/metadata.sqlite.
    metadata_path: str = ""
    enable_cache: bool = True
    data: DataConfig = DataConfig()
    # The dataset's classes and mask format: a mapping, or a spec file's path or name
    # (``datasets/specs/<name>.yaml``). VOC by default.
    dataset: DatasetSpec = DatasetSpec()
    ingest: IngestConfig = IngestConfig()
    validation: ValidationConfig = ValidationConfig()
    transform: TransformConfig = TransformConfig()
    trainer: TrainerConfig = TrainerConfig()
    evaluator: EvaluatorConfig = EvaluatorConfig()
    infra_validator: InfraValidatorConfig = InfraValidatorConfig()
    pusher: PusherConfig = PusherConfig()
    report: ReportConfig = ReportConfig()
    inference: InferenceConfig = InferenceConfig()
    beam: BeamConfig = BeamConfig()
    vertex: VertexConfig = VertexConfig()
    kubeflow: KubeflowConfig = KubeflowConfig()
    airflow: AirflowConfig = AirflowConfig()
    mysql: MySqlConfig = MySqlConfig()

    RULES = {"pipeline_name": NAME, "pipeline_root": NOT_EMPTY}

    def check_together(self) -> None:
        if self.vertex.enabled and self.infra_validator.runtime == TF_SERVING_RUNTIME:
            raise ConfigError(
                "infra_validator.runtime='tf_serving' with vertex.enabled: Vertex AI Pipelines has no "
                "Docker daemon for TFX's InfraValidator to start TF Serving in; "
                f"use runtime '{BUNDLE_RUNTIME}'"
            )
        if self.inference.images and self.inference.batch_pixels > self.trainer.max_batch_pixels:
            # The exported model refuses such a batch: every batch would be redone image by image.
            raise ConfigError(
                f"inference.batch_pixels={self.inference.batch_pixels} is above trainer.max_batch_pixels="
                f"{self.trainer.max_batch_pixels}, the most the model takes in one call"
            )
        # Test-time augmentation builds a model per scale at the export, after the training:
        # what cannot work must fail here, not there.
        scales, size = self.trainer.tta_scales, self.transform.image_size
        if not scales and not self.trainer.tta_flip:
            return
        if size % TTA_SIZE_MULTIPLE:
            raise ConfigError(
                f"trainer.tta_scales/tta_flip need transform.image_size to be a multiple of "
                f"{TTA_SIZE_MULTIPLE}, got {size}"
            )
        sizes = [tta_size(scale, size) for scale in scales]
        for k, later in enumerate(sizes):
            if later in sizes[:k]:
                raise ConfigError(
                    f"trainer.tta_scales {scales[sizes.index(later)]} and {scales[k]} both give {later} px "
                    f"views at transform.image_size={size}: one of them would be a repeated view"
                )

    def required_data_root(self) -> tuple:
        """``(config key, value)`` of the root the dataset's layout cannot do without."""
        if self.dataset.layout == dataset_spec.FOLDERS:
            return "data.root", self.data.root
        return "data.voc_root", self.data.voc_root

    def resolved(self, project_root: str, working_dir: Optional[str]) -> PipelineConfig:
        """This config with its project files (the curated schema, Beam's ``setup.py``) resolved
        against ``project_root`` and, unless ``working_dir`` is None (a remote runner, whose run
        paths are URIs), its run paths against ``working_dir``, the SQLite metadata file
        defaulting to ``<pipeline_root>/metadata.sqlite``. The one path resolver: each runner calls
        it once, with its own bases (``core/paths.py``)."""
        resolve = paths.resolve
        config = dataclasses.replace(
            self,
            validation=dataclasses.replace(
                self.validation, schema_path=resolve(self.validation.schema_path, project_root)
            ),
            beam=dataclasses.replace(self.beam, setup_file=resolve(self.beam.setup_file, project_root)),
        )
        if working_dir is None:
            return config
        root = resolve(self.pipeline_root, working_dir)
        weights = self.trainer.backbone_weights
        return dataclasses.replace(
            config,
            pipeline_root=root,
            metadata_path=resolve(self.metadata_path, working_dir) or os.path.join(root, paths.METADATA_FILE),
            data=dataclasses.replace(
                self.data,
                voc_root=resolve(self.data.voc_root, working_dir),
                sbd_root=resolve(self.data.sbd_root, working_dir),
                root=resolve(self.data.root, working_dir),
            ),
            pusher=dataclasses.replace(
                self.pusher, serving_dir=resolve(self.pusher.serving_dir, working_dir)
            ),
            inference=dataclasses.replace(self.inference, images=resolve(self.inference.images, working_dir)),
            trainer=dataclasses.replace(
                self.trainer,
                backup_dir=resolve(self.trainer.backup_dir, working_dir),
                backbone_weights=weights if weights == IMAGENET_WEIGHTS else resolve(weights, working_dir),
            ),
        )

    def serving_model_dir(self) -> str:
        """``<serving_dir>/<model_name>``: TF Serving's ``--model_base_path``."""
        return os.path.join(
            self.pusher.serving_dir or os.path.join(self.pipeline_root, "serving"), self.pusher.model_name
        )

    def report_dir(self) -> str:
        """Where the latest run report is published."""
        return os.path.join(self.pipeline_root, "report")

    def beam_pipeline_args(self, tfx: bool = True) -> list:
        """The ``beam_pipeline_args`` every Beam component of the pipeline gets; ``tfx=False``: a
        Beam job a command runs itself (``ingest``, ``infer``), which on DirectRunner drops
        ``--setup_file``: its workers are this machine's processes, in this environment, and the
        sdist build costs a job about 10 s (TFX's components need the flag there: without one they
        build and attach an sdist of TFX)."""
        args = [f"--runner={self.beam.runner}"]
        local = self.beam.runner == "DirectRunner" and not tfx
        if self.beam.use_pipeline_image:
            args.append(f"--sdk_container_image={self.kubeflow.image}")
        elif self.beam.setup_file and not local:
            args.append(f"--setup_file={self.beam.setup_file}")
        if self.beam.runner == "DirectRunner":
            # Beam itself reads 0 as "one worker per core", so the args stay machine-independent.
            args += [
                f"--direct_running_mode={self.beam.direct_running_mode}",
                f"--direct_num_workers={self.beam.direct_num_workers}",
            ]
        return args + list(self.beam.extra_args)


def named_configs() -> list:
    """Names of the configs shipped in ``pipeline/configs`` (``voc``, ``tiny``, ...)."""
    return sorted(f[:-5] for f in os.listdir(paths.CONFIG_DIR) if f.endswith(".yaml"))


def load_config(path_or_name: Optional[str] = None, overrides: Iterable[str] = ()) -> PipelineConfig:
    """Loads a YAML file (or a named config) and applies ``section.key=value`` overrides.

    The overrides are merged into the file's values before anything is checked, so a check that
    relates two keys sees both final values, whatever the order of the ``--set`` flags.
    """
    raw, where = {}, ""
    if path_or_name:
        path = path_or_name
        if not os.path.exists(path) and path_or_name in named_configs():
            path = os.path.join(paths.CONFIG_DIR, f"{path_or_name}.yaml")
        try:
            with open(path) as f:
                raw = yaml.safe_load(f) or {}
        except OSError as e:
            raise ConfigError(f"cannot read config {path!r}: {e.strerror}") from e
        if not isinstance(raw, Mapping):
            raise ConfigError(f"config {path!r} must be a mapping at the top level")
        where = path
    return config_engine.build(PipelineConfig, config_engine.merged(PipelineConfig, raw, overrides), where)


def from_dict(cls: type, raw: Mapping, where: str = "config") -> Any:
    """Builds config dataclass ``cls`` from a mapping (e.g. a component's ``custom_config``)."""
    return config_engine.build(cls, raw, where)


def apply_overrides(config: PipelineConfig, overrides: Iterable[str]) -> PipelineConfig:
    """``config`` with ``a.b=value`` overrides (YAML scalars, type-checked), checked once at the end."""
    overrides = list(overrides)
    if not overrides:
        return config
    return config_engine.build(
        PipelineConfig, config_engine.merged(PipelineConfig, dataclasses.asdict(config), overrides), ""
    )


def load_dataset_spec(path_or_name: str, where: str = "dataset") -> DatasetSpec:
    """A dataset spec from a YAML file, or by name from ``datasets/specs/`` (``cihp``, ``oxford_pet``)."""
    return config_engine.build(
        DatasetSpec, config_engine.dataset_spec_mapping(path_or_name, where), path_or_name
    )
