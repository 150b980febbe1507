"""The TFX Trainer module: ``Trainer(run_fn="trainer.run_fn.run_fn", ...)``.

Thin on purpose: it maps TFX's ``FnArgs`` onto a ``TrainingJob`` and hands over to
``trainer.training.train``. The Trainer's ``custom_config`` carries ``{"trainer": <TrainerConfig
as a dict>, "images_normalized": bool}``, written by ``pipeline.pipeline``. The classes come
from the data, not from ``custom_config``: the dataset spec that ingestion wrote into the
Examples artifact (VOC's for artifacts made before specs travelled), so they cannot disagree.
"""

import dataclasses

from tfx.components.trainer.fn_args_utils import FnArgs

from core import config as config_lib
from trainer import training

TRAINER_KEY = "trainer"
IMAGES_NORMALIZED_KEY = "images_normalized"


def custom_config(config: config_lib.PipelineConfig) -> dict:
    """The Trainer's ``custom_config`` for a pipeline config (JSON-serialisable)."""
    return {
        TRAINER_KEY: dataclasses.asdict(config.trainer),
        IMAGES_NORMALIZED_KEY: config.transform.normalize_image,
    }


# TFX Trainer calls this.
def run_fn(fn_args: FnArgs) -> None:
    custom = fn_args.custom_config or {}
    trainer_config = config_lib.from_dict(
        config_lib.TrainerConfig, custom.get(TRAINER_KEY, {}), where="Trainer custom_config"
    )
    job = training.TrainingJob.of_files(
        train_files=fn_args.train_files,
        eval_files=fn_args.eval_files,
        transform_output=fn_args.transform_output,
        serving_model_dir=fn_args.serving_model_dir,
        model_run_dir=fn_args.model_run_dir,
        train_steps=fn_args.train_steps or trainer_config.train_steps,
        eval_steps=fn_args.eval_steps or None,
        images_normalized=bool(custom.get(IMAGES_NORMALIZED_KEY, False)),
        base_model=fn_args.base_model,
    )
    training.train(trainer_config, job)
