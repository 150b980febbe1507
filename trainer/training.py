"""The training recipe: data, model, optimiser, callbacks and export, for any strategy.

``train`` does not know about TFX: ``run_fn`` (the Trainer module) maps ``FnArgs`` onto a
``TrainingJob`` and calls it, and tests and benchmarks call it directly.
"""

import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from typing import Optional, Sequence

import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras

from core import artifacts, dataset_spec, features, storage
from core.config import TrainerConfig
from core.metrics import MEAN_IOU, VAL_MEAN_IOU
from trainer import autograph, callbacks, distribute, export, losses, model, optimization, tta, warm_start
from trainer import data as data_lib
from trainer.summaries import EvaluationSummaries
from transform import preprocessing

_log = logging.getLogger(__name__)

BEST_CHECKPOINT_DIR = "best_checkpoint"


@dataclasses.dataclass(frozen=True)
class TrainingJob:
    """Where one training reads and writes (what TFX's ``FnArgs`` carries)."""

    train_files: Sequence[str]
    eval_files: Sequence[str]
    transform_output: str  # the Transform component's transform_graph directory
    serving_model_dir: str  # SavedModel for serving (TFX: the Model artifact)
    model_run_dir: str  # TensorBoard logs, backups, checkpoints, history (TFX: ModelRun)
    train_steps: int
    # The classes of the Examples (``dataset_spec.of_examples``): the head's channels, the loss's
    # class weights and the mean IoU follow it, and the export carries it.
    dataset: dataset_spec.DatasetSpec
    eval_steps: Optional[int] = None  # None or 0: the whole eval split
    images_normalized: bool = False  # Transform scaled images by mean/std (transform.normalize_image)
    # A SavedModel to start from (TFX: the Trainer's base_model, the latest blessed model when
    # trainer.warm_start is on): its weights are taken when their shapes match (warm_start.py).
    base_model: Optional[str] = None

    @classmethod
    def of_files(cls, **fields) -> "TrainingJob":
        """A job whose classes, unless ``fields`` give ``dataset``, are the spec of the Examples
        artifacts its train files are in (``dataset_spec.of_examples``): the Trainer's way, where
        the data says what it is. Several artifacts (a window of spans) must agree."""
        if "dataset" not in fields:
            uris = sorted({artifacts.examples_dir(f) for f in fields["train_files"]})
            specs = {uri: dataset_spec.of_examples(uri) for uri in uris}
            first = specs[uris[0]]
            for uri, spec in specs.items():
                if spec != first:
                    raise ValueError(
                        f"the Examples {uris[0]} ({first.name}: {len(first.class_names)} classes) and {uri} "
                        f"({spec.name}: {len(spec.class_names)} classes) describe different datasets; one "
                        "model cannot train on both"
                    )
            fields["dataset"] = first
        return cls(**fields)

    @classmethod
    def of_examples(
        cls, examples_uri: str, transform_output: str, out: str, train_steps: int, **fields
    ) -> "TrainingJob":
        """The job of an Examples artifact's two splits, writing to ``out``/serving and
        ``out``/run: what tests and benchmarks train outside TFX."""
        return cls.of_files(
            train_files=[artifacts.split_files(examples_uri, features.TRAIN_SPLIT)],
            eval_files=[artifacts.split_files(examples_uri, features.EVAL_SPLIT)],
            transform_output=transform_output,
            serving_model_dir=os.path.join(out, "serving"),
            model_run_dir=os.path.join(out, "run"),
            train_steps=train_steps,
            **fields,
        )


@dataclasses.dataclass(frozen=True)
class TrainingResult:
    steps: int
    resumed_from_step: int  # 0 unless a backup of a killed run was restored
    best_mean_iou: float
    best_epoch: Optional[int]
    seconds: float
    global_batch_size: int
    precision: str
    replicas: int
    warm: Optional[warm_start.WarmStart] = None  # how it warm-started; None: no base model given


def build_model(
    config: TrainerConfig,
    image_size: int,
    replicas: int,
    images_normalized: bool,
    *,
    num_classes: int,
) -> keras.Model:
    """DeepLabV3+ as configured, with ``num_classes`` logit channels (the dataset spec's); sync
    batch-norm only when there is more than one replica."""
    return model.build_deeplabv3plus(
        image_size,
        num_classes,
        backbone=config.backbone,
        output_stride=config.output_stride,
        width=config.width,
        backbone_weights=config.backbone_weights or None,
        aspp_filters=config.aspp_filters,
        decoder_filters=config.decoder_filters,
        low_level_filters=config.low_level_filters,
        dropout=config.dropout,
        sync_batch_norm=config.sync_batch_norm and replicas > 1,
        freeze_backbone_batch_norm=config.freeze_backbone_batch_norm,
        bn_momentum=config.bn_momentum,
        scale_inputs=not images_normalized,
    )


def compile_model(net: keras.Model, config: TrainerConfig, total_steps: int, class_weights=None) -> None:
    """Optimiser, loss and mean IoU; the IoU is over the model's own classes (its logit channels),
    so it cannot disagree with the head."""
    num_classes = net.output_shape[-1]
    if class_weights is not None and len(class_weights) != num_classes:
        raise ValueError(f"{len(class_weights)} class weights for a model of {num_classes} classes")
    net.compile(
        optimizer=optimization.make_optimizer(config, total_steps),
        loss=losses.IgnoreLabelCrossEntropy(class_weights=class_weights),
        metrics=[
            keras.metrics.MeanIoU(
                num_classes, name=MEAN_IOU, ignore_class=features.IGNORE_LABEL, sparse_y_pred=False
            )
        ],
    )


def _datasets(config, job, tft_output, strategy, global_batch, start_step: int) -> tuple:
    """``(train, eval, eval steps)``: one input pipeline per worker (or TPU host), each reading
    its own shard of the raw records (``data.make_dataset``). Training's draws are those of
    ``start_step``, the step a restart resumes from (0: a fresh run).

    Evaluation is exact under any number of workers: every eval image is counted once, and every
    pipeline pads its shard to the same ``ceil(records / global batch)`` steps (shards differ
    by one record at most, so that many steps hold each of them), as the collective all-reduce
    of every step needs.
    """
    pad_value = 0.0 if job.images_normalized else preprocessing.IMAGE_PAD_VALUE
    eval_records = data_lib.count_records(list(job.eval_files))
    if not eval_records:
        raise ValueError(f"no eval examples in {list(job.eval_files)}")
    eval_steps = math.ceil(eval_records / global_batch)
    held_out = eval_ids_of_other_spans(job)

    def make(files, training, context: tf.distribute.InputContext):
        local_replicas = context.num_replicas_in_sync // context.num_input_pipelines
        return data_lib.make_dataset(
            list(files),
            tft_output,
            context.get_per_replica_batch_size(global_batch),
            training=training,
            shuffle_buffer=config.shuffle_buffer,
            seed=config.seed,
            image_pad_value=pad_value,
            min_scale=config.min_scale,
            max_scale=config.max_scale,
            num_shards=context.num_input_pipelines,
            shard_index=context.input_pipeline_id,
            # A step takes one batch per local replica from this pipeline.
            num_batches=None if training else eval_steps * local_replicas,
            exclude_ids=held_out if training else (),
            start_step=start_step,
        )

    train_ds = strategy.distribute_datasets_from_function(lambda c: make(job.train_files, True, c))
    eval_ds = strategy.distribute_datasets_from_function(lambda c: make(job.eval_files, False, c))
    return train_ds, eval_ds, min(job.eval_steps or eval_steps, eval_steps)


def eval_ids_of_other_spans(job: TrainingJob) -> list:
    """The eval ids to keep out of training when the job reads several Examples artifacts (a
    window of spans): an id that is eval in any span never trains, though another span's lists
    put it in train. Within one artifact ingestion already keeps the splits apart: none."""
    if len({artifacts.examples_dir(f) for f in job.train_files}) < 2:
        return []
    ids = data_lib.record_ids(list(job.eval_files))
    _log.info(
        "training on %d Examples artifacts: %d eval ids kept out of training", len(job.train_files), len(ids)
    )
    return ids


def backup_dir(config: TrainerConfig, model_run_dir: str) -> str:
    """Where ``BackupAndRestore`` keeps this execution's backup: ``<model_run_dir>/backup``, or
    ``<trainer.backup_dir>/<16 hex digits of model_run_dir's SHA-256>`` when that is set.

    Keyed by the execution, because the best checkpoint and ``history.json`` live in its
    ``model_run_dir``: a restart of the same execution (Vertex restarting a pre-empted replica,
    a retried task: same ``model_run_dir``) resumes, and a new pipeline run never takes up
    another run's backup (with a fixed directory it did: the best value restarted from minus
    infinity, the history was lost, and another architecture failed to restore). A hash, not
    the path itself: ``model_run_dir`` is a URI, and its length is not ours to choose.
    """
    if not config.backup_dir:
        return os.path.join(model_run_dir, "backup")
    key = hashlib.sha256(model_run_dir.rstrip("/").encode()).hexdigest()[:16]
    return os.path.join(config.backup_dir, key)


def _warm_start(net, job: TrainingJob, backup: str) -> warm_start.WarmStart:
    """``job.base_model``'s weights into ``net`` when they fit (``warm_start.restore``). A restart
    of a killed execution (its backup is there) takes the record its first attempt wrote
    instead: the backup holds the weights, and the start was measured then.

    The chief's record, in ``job.model_run_dir``, on every worker: only the chief writes one, and
    a worker that found none in its own scratch directory measured the start again, an
    evaluation (collective) that the chief, holding its record, never joined.
    """
    if tf.io.gfile.exists(backup):
        recorded = warm_start.read(job.model_run_dir)
        if recorded is not None:
            return recorded
    return warm_start.restore(net, job.base_model, job.dataset)


def train(
    config: TrainerConfig,
    job: TrainingJob,
    strategy: Optional[tf.distribute.Strategy] = None,
    extra_callbacks: Sequence[keras.callbacks.Callback] = (),
) -> TrainingResult:
    """Trains, keeps the best eval mIoU, and exports the SavedModel to ``job.serving_model_dir``.

    ``extra_callbacks`` run after the trainer's own (tests record weights per epoch with them).
    """
    # Where the Trainer starts: autograph leaves Keras' own training code alone from here on.
    autograph.skip_keras_conversion()
    backup = backup_dir(config, job.model_run_dir)
    if distribute.multi_worker(config.strategy, strategy):
        # Before anything is built or waits for the other workers: a path they cannot read fails now.
        shared = {"the model run directory": job.model_run_dir}
        if config.backup_dir:
            shared["trainer.backup_dir"] = config.backup_dir
        distribute.require_shared_storage(shared, json.loads(os.environ.get("TF_CONFIG", "{}")))
    # Python, numpy and TF seeds: the same config starts from the same weights. Without it the
    # tiny config's eval mIoU after 500 steps ranged from 0.59 to 0.76 between runs.
    keras.utils.set_random_seed(config.seed)
    strategy = strategy or distribute.make_strategy(config.strategy, config.tpu)
    replicas = strategy.num_replicas_in_sync
    global_batch = config.batch_size_per_replica * replicas
    policy = distribute.precision_policy(config.mixed_precision, strategy)
    tft_output = tft.TFTransformOutput(job.transform_output)
    image_size = tft_output.transformed_feature_spec()[features.LABEL].shape[0]
    num_classes = job.dataset.num_classes
    class_weights = None
    if config.class_weights:
        counts = preprocessing.read_class_counts(tft_output, num_classes)
        class_weights = losses.class_weights_from_counts(counts, num_classes, config.class_weight_power)

    chief = distribute.is_chief(strategy)
    run_dir = distribute.output_dir(job.model_run_dir, strategy)
    previous_policy = distribute.set_policy(policy)
    try:
        # The step a restart resumes from, before fit restores it: the input's draws depend on it.
        resumes_at = callbacks.steps_backed_up(backup)
        train_ds, eval_ds, eval_steps = _datasets(config, job, tft_output, strategy, global_batch, resumes_at)
        # Built apart from compiled: a warm start sets the weights first, and decides the recipe
        # (learning rate, steps) the optimizer is made with.
        with strategy.scope():
            net = build_model(config, image_size, replicas, job.images_normalized, num_classes=num_classes)
        warm = _warm_start(net, job, backup) if job.base_model else None
        warm_started = warm is not None and warm.warm_started
        recipe = warm_start.fine_tuning(config) if warm_started else config
        # Exactly the steps asked for: the last epoch is cut short (callbacks.StopAtStep) when
        # they are not a multiple of the epoch, and the poly schedule ends there.
        total_steps = (warm_started and config.warm_start_train_steps) or job.train_steps
        steps_per_epoch = min(config.steps_per_epoch, total_steps)
        epochs = math.ceil(total_steps / steps_per_epoch)
        _log.info(
            "training %s/OS%d at %d px on %s (%d classes): %d steps (%d epochs of %d), global batch %d "
            "over %d replica(s), %s, learning rate %g",
            config.backbone, config.output_stride, image_size, job.dataset.name, num_classes, total_steps,
            epochs, steps_per_epoch, global_batch, replicas, policy, recipe.learning_rate,
        )  # fmt: skip
        with strategy.scope():
            compile_model(net, recipe, total_steps, class_weights)
        if warm_started and warm.initial_mean_iou is None:
            initial = net.evaluate(eval_ds, steps=eval_steps, verbose=0, return_dict=True)[MEAN_IOU]
            warm = dataclasses.replace(warm, initial_mean_iou=float(initial))
        if warm and chief:
            warm.write(run_dir)
            warm_start.announce(warm)
        best = callbacks.BestCheckpoint(
            os.path.join(run_dir, BEST_CHECKPOINT_DIR),
            VAL_MEAN_IOU,
            restore=config.export_best,
            chief_directory=os.path.join(job.model_run_dir, BEST_CHECKPOINT_DIR),
            # A warm start's weights are the first best: a run that only scores below them exports them.
            initial=warm.initial_mean_iou if warm_started else None,
        )
        start_step = callbacks.StartStep()
        cbs = [
            # First, so that a resumed run restores before any other callback looks. The backup
            # outlives fit (Keras would delete it in on_train_end) and goes once the export is
            # complete, below: a kill in between resumes, keeping the best checkpoint and the
            # history, instead of training again from step 0 without them.
            callbacks.BackupAndRestore(backup, total_steps, save_freq=config.backup_every_steps or "epoch"),
            start_step,
            callbacks.EpochProgress(total_steps, VAL_MEAN_IOU, enabled=chief),
            callbacks.StopAtStep(total_steps),
            callbacks.RaiseOnNaN(),
            best,
            keras.callbacks.TensorBoard(log_dir=run_dir, update_freq="epoch"),
            EvaluationSummaries.of_eval_files(
                run_dir,
                job.dataset,
                job.eval_files,
                tft_output,
                job.images_normalized,
                count=config.summary_images,
                enabled=chief,
            ),
            callbacks.HistoryWriter(os.path.join(run_dir, artifacts.HISTORY_FILE), enabled=chief),
            *extra_callbacks,
        ]
        start = time.time()
        net.fit(
            train_ds,
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            validation_data=eval_ds,
            validation_steps=eval_steps,
            callbacks=cbs,
            verbose=0,  # progress: callbacks.EpochProgress, one line per epoch
        )
        seconds = time.time() - start
        serving_dir = distribute.output_dir(job.serving_model_dir, strategy)
        export.export(
            net,
            tft_output,
            serving_dir,
            job.dataset,
            with_probabilities=config.with_probabilities,
            max_image_pixels=config.max_image_pixels,
            max_batch_pixels=config.max_batch_pixels,
            tta=tta.TestTimeAugmentation.of(config.tta_scales, config.tta_flip),
        )
        # The backup goes once every worker's export is complete (the barrier), with what the
        # other workers left in it (workertemp_<id>): from here on a restart has nothing to redo.
        distribute.barrier(strategy)
        if chief:
            storage.remove_tree(backup)
        distribute.remove_scratch(job.serving_model_dir, strategy)
        distribute.remove_scratch(job.model_run_dir, strategy)
    finally:
        distribute.set_policy(previous_policy)
    result = TrainingResult(
        steps=int(net.optimizer.iterations.numpy()),
        resumed_from_step=start_step.step,
        best_mean_iou=best.best,
        best_epoch=best.best_epoch,
        seconds=seconds,
        global_batch_size=global_batch,
        precision=policy,
        replicas=replicas,
        warm=warm,
    )
    _log.info("training done: %s", result)
    return result
