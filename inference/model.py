"""Which SavedModel a batch-inference job runs, and what tells its masks apart from another's.

``--model`` takes what a user has at hand: a pushed model's base path
(``<serving_dir>/<model_name>``: its newest complete version, as TF Serving's ``latest`` policy
picks it), one version's directory, a Trainer's Model artifact (its ``Format-Serving``), or any
SavedModel directory. The masks a model drew are tagged with its TensorFlow fingerprint
(``fingerprint.pb``, written by every export since TF 2.12 and copied with each push): the same
model pushed twice, or under another name, is recognised; a retrained one is not, whatever
version number it got.
"""

import dataclasses
import hashlib
import os
from typing import Optional

import tensorflow as tf

from core import artifacts, dataset_spec, storage
from serving import layout


@dataclasses.dataclass(frozen=True)
class ModelRef:
    path: str  # the SavedModel directory
    version: Optional[int]  # the pushed version (TF Serving's number); None outside a base path
    fingerprint: str  # what the masks are tagged with
    dataset: dataset_spec.DatasetSpec  # the classes it predicts, their names and colours

    def describe(self) -> dict:
        """What the manifest and the summary say of the model."""
        return {"path": self.path, "version": self.version, "fingerprint": self.fingerprint}


def _has_saved_model(path: str) -> bool:
    return tf.io.gfile.exists(os.path.join(path, artifacts.SAVED_MODEL_FILE))


def saved_model_dir(model: str) -> tuple:
    """``(SavedModel directory, pushed version or None)`` of what ``--model`` names."""
    model = model.rstrip("/")
    if _has_saved_model(model):
        name = os.path.basename(model)
        return model, int(name) if name.isdigit() else None
    if _has_saved_model(artifacts.serving_model_dir(model)):
        return artifacts.serving_model_dir(model), None
    versions = layout.versions(model)
    if versions:
        return os.path.join(model, str(versions[-1])), versions[-1]
    raise FileNotFoundError(
        f"--model {model}: not a SavedModel (no {artifacts.SAVED_MODEL_FILE}), not a Trainer's Model "
        f"artifact (no {artifacts.SERVING_MODEL_DIR}/{artifacts.SAVED_MODEL_FILE}) and no complete "
        "version under it (an integer directory with saved_model.pb)"
    )


def fingerprint(path: str) -> str:
    """TensorFlow's fingerprint of the SavedModel at ``path``; for one exported before TF 2.12
    (no ``fingerprint.pb``), a SHA-256 of its graph and its variables' index (which holds each
    variable's checksum)."""
    try:
        return tf.saved_model.experimental.read_fingerprint(path).singleprint()
    except (FileNotFoundError, tf.errors.NotFoundError):
        digest = hashlib.sha256(storage.read_file(os.path.join(path, artifacts.SAVED_MODEL_FILE)))
        index = os.path.join(path, "variables", "variables.index")
        if tf.io.gfile.exists(index):
            digest.update(storage.read_file(index))
        return f"sha256:{digest.hexdigest()}"


def resolve(model: str) -> ModelRef:
    """The model ``--model`` names (see the module's docstring); ``FileNotFoundError`` naming
    what was looked for when it names none."""
    path, version = saved_model_dir(model)
    return ModelRef(path, version, fingerprint(path), dataset_spec.of_model(path))
