"""File names and layouts inside TFX artifacts, and the ML Metadata properties we set on them.

Whoever writes an artifact and whoever reads it (another component, the runner's summary, the
report, a test) takes the name from here, so the two cannot drift apart.
"""

import os

# Examples: TFX's convention, <uri>/Split-<name>/data_tfrecord-SSSSS-of-NNNNN.gz, plus the dataset
# spec the records were ingested with (core/dataset_spec.py) beside the splits.
SPLIT_PREFIX = "Split-"
EXAMPLE_FILE_PREFIX = "data_tfrecord"
SPEC_FILE = "dataset_spec.json"

# Model: the Trainer writes the SavedModel under <uri>/Format-Serving (TFX's serving_model_dir).
SERVING_MODEL_DIR = "Format-Serving"
# TF Serving takes a version as complete once this file is there: it is written last.
SAVED_MODEL_FILE = "saved_model.pb"
# Files beside a SavedModel that TF Serving keeps but does not load (warm-up requests, ours).
ASSETS_EXTRA = "assets.extra"
# The classes a model predicts (names, colours), read by serving and the predict command.
MODEL_SPEC_FILE = os.path.join(ASSETS_EXTRA, SPEC_FILE)

# ModelRun: the training history, {"epochs": [one row per epoch, metrics named as in core/metrics.py]}.
HISTORY_FILE = "history.json"
HISTORY_EPOCHS = "epochs"

# Examples: TFX's own properties, the span and version of the data (ExampleGen's exec properties
# of the same names set them).
SPAN = "span"
VERSION = "version"
# Custom properties (ML Metadata). Examples: the dataset's name, a digest of its spec (a spec
# changed under the same name encodes masks differently) and each split's count.
DATASET_PROPERTY = "dataset"
DATASET_DIGEST_PROPERTY = "dataset_digest"
NUM_EXAMPLES_PREFIX = "num_examples_"
# ... and what ingestion learned of the data, as JSON: each split's pixels per class and ignored
# pixels ({split: {"classes": {name: n}, "ignored": n}}), the files of the dataset's folders that
# it does not read ({folder: {"count": n, "names": [the first few]}}), and the warnings a person
# should read before training on it ([sentence, ...]).
PIXELS_PROPERTY = "pixels_per_class"
UNREAD_FILES_PROPERTY = "unread_files"
DATA_WARNINGS_PROPERTY = "data_warnings"
# The dead letter of a Beam job of ours (ingestion's RejectedRecords, batch inference's
# SegmentationMasks): one JSON row per rejected input with its kind and reason; and the job's
# summary beside it.
REJECTED_FILE = "rejected.jsonl"
SUMMARY_FILE = "summary.json"
# RejectedRecords (the dead letter).
NUM_REJECTED = "num_rejected"
REJECTED_FRACTION = "rejected_fraction"
# DataGate's decision.
PASSED = "passed"
NUM_ANOMALIES = "num_anomalies"
NUM_DRIFTED = "num_drifted"
# ModelBlessing: TFX's Evaluator sets it.
BLESSED = "blessed"
# InfraBlessing: ``blessed`` (above) as TFX's InfraValidator sets it, with its marker file; the
# serving validator's figures (serving/validation.py, also in VALIDATION_FILE) and why it refused.
INFRA_BLESSED_FILE = "INFRA_BLESSED"
INFRA_NOT_BLESSED_FILE = "INFRA_NOT_BLESSED"
VALIDATION_FILE = "validation.json"
NOT_VALIDATED_REASON = "not_validated_reason"
LOAD_SECONDS = "load_seconds"
LATENCY_P50_MS = "latency_p50_ms"
LATENCY_P99_MS = "latency_p99_ms"
PEAK_MEMORY_MB = "peak_memory_mb"
# PushedModel: TFX's Pusher's three, and why a model was not pushed.
PUSHED = "pushed"
PUSHED_DESTINATION = "pushed_destination"
PUSHED_VERSION = "pushed_version"
NOT_PUSHED_REASON = "not_pushed_reason"
# SegmentationMasks (batch inference): masks written, the pushed version that drew them, the
# folder of images it read, and why nothing was inferred (the model was not pushed, no images).
NUM_MASKS = "num_masks"
MODEL_VERSION = "model_version"
IMAGES = "images"
NOT_INFERRED_REASON = "not_inferred_reason"


def split_dir(examples_uri: str, split: str) -> str:
    """Where TFX components look for one split of an Examples artifact."""
    return os.path.join(examples_uri, f"{SPLIT_PREFIX}{split}")


def split_files(examples_uri: str, split: str) -> str:
    """The file pattern of one split: the form TFX's Trainer gets its examples in."""
    return os.path.join(split_dir(examples_uri, split), "*")


def examples_dir(split_pattern: str) -> str:
    """The Examples artifact's directory from a split's file pattern (``split_files``)."""
    return os.path.dirname(os.path.dirname(split_pattern))


def num_examples(split: str) -> str:
    """The Examples artifact's property counting ``split``'s records."""
    return f"{NUM_EXAMPLES_PREFIX}{split}"


def serving_model_dir(model_uri: str) -> str:
    """The SavedModel inside a Trainer's Model artifact."""
    return os.path.join(model_uri, SERVING_MODEL_DIR)
