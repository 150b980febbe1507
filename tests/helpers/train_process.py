"""Runs ``trainer.training.train`` in its own process, as a TFX Trainer worker would.

Used by the tests that need what one pytest process cannot give: several workers of one
MultiWorkerMirroredStrategy cluster, a training that is killed and started again, a TF
runtime with two logical CPU devices. Arguments come as one JSON file:
``{"config": {TrainerConfig fields}, "job": {TrainingJob fields}, "result": path}``; the
TrainingResult is written to ``result`` as JSON.
"""

import dataclasses
import json
import logging
import sys

from pipeline import config as config_lib
from trainer import training


def main(path: str) -> None:
    logging.basicConfig(level=logging.INFO)
    with open(path) as f:
        spec = json.load(f)
    config = config_lib.from_dict(config_lib.TrainerConfig, spec["config"])
    result = training.train(config, training.TrainingJob(**spec["job"]))
    with open(spec["result"], "w") as f:
        json.dump(dataclasses.asdict(result), f)


if __name__ == "__main__":
    main(sys.argv[1])
