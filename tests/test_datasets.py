"""The whole pipeline on datasets that are not VOC: CIHP-format grey ids, Oxford-IIIT Pet trimaps.

Each dataset is made by ``deeplab-tfx make-dataset --format ...`` in its own on-disk layout and
run by LocalDagRunner from its dataset spec (``datasets/specs/``), end to end: the spec travels
with the Examples, the schema holds the dataset's class ids, TFMA scores exactly the dataset's
classes (checked against a numpy reference on the pushed model's own predictions), the report
names and paints them, and the pushed model carries the spec and answers ids of its classes.
"""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_analysis as tfma
from PIL import Image

from components.dataset_schema.component import SCHEMA_FILE, read_schema
from components.run_report.component import eval_samples
from core import config as config_lib
from core import dataset_spec, features, paths
from pipeline import local_runner
from tests import reference
from tests.conftest import feature, png_indices, predicted_pairs, read_examples
from tests.test_pipeline_local import latest_outputs
from trainer.export import SERVING_DEFAULT

pytestmark = pytest.mark.slow
CLI = os.path.join(os.path.dirname(sys.executable), "deeplab-tfx")
NUM_IMAGES = 16


@pytest.fixture(scope="module", params=["cihp", "oxford_pet"])
def dataset_run(request, tmp_path_factory):
    """``(config, outputs)`` of one pipeline run on a generated dataset of that format."""
    name = request.param
    root = tmp_path_factory.mktemp(name)
    data = str(root / "data")
    made = subprocess.run(
        [
            CLI,
            "make-dataset",
            "--format",
            name,
            "--out",
            data,
            "--num-images",
            str(NUM_IMAGES),
            "--max-side",
            "64",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert made.returncode == 0, made.stderr[-3000:]
    overrides = [
        f"dataset={name}",
        f"data.root={data}",
        f"pipeline_root={root / 'run'}",
        "transform.image_size=64",
        # The dataset's path through every component is under test here, not Beam's workers
        # (test_pipeline_local.py's run is multi-processing): in memory, each Beam component
        # starts no worker processes.
        "beam.direct_running_mode=in_memory",
        # The wiring is under test here, not learning: a few steps, blessed whatever it scores.
        "trainer.train_steps=4",
        "trainer.steps_per_epoch=2",
        "evaluator.min_mean_iou=0.0",
        # Serving validation is test_serving_validation.py's and the local and Airflow runs'.
        "infra_validator.runtime=none",
        "pusher.warmup_requests=1",
        "report.samples=2",
    ]
    cfg = config_lib.load_config("tiny", overrides).resolved(paths.PROJECT_ROOT, os.getcwd())
    assert local_runner.run(cfg) == 0
    return cfg, latest_outputs(cfg)


def _pushed_version(cfg) -> str:
    base = cfg.serving_model_dir()
    versions = sorted(int(v) for v in os.listdir(base) if v.isdigit())
    assert versions == [1]
    return os.path.join(base, "1")


def test_the_spec_travels_with_the_examples_and_sets_the_schema(dataset_run):
    cfg, outputs = dataset_run
    spec = cfg.dataset
    examples = outputs["Examples"]
    assert dataset_spec.read(examples.uri) == spec
    assert examples.custom_properties["dataset"].string_value == spec.name
    counts = {split: len(read_examples(examples.uri, split)) for split in features.SPLITS}
    assert sum(counts.values()) == NUM_IMAGES and min(counts.values()) > 0, counts
    schema = read_schema(os.path.join(outputs["Schema"].uri, SCHEMA_FILE))
    present = next(f for f in schema.feature if f.name == features.CLASSES_PRESENT_KEY)
    assert (present.int_domain.min, present.int_domain.max) == (1, spec.num_classes - 1)
    sources = next(d for d in schema.string_domain if d.name == features.SOURCE_KEY)
    assert list(sources.value) == [spec.name]
    for split in features.SPLITS:
        for example in read_examples(examples.uri, split):
            ids = png_indices(feature(example, features.MASK_KEY)[0])
            assert set(np.unique(ids).tolist()) <= set(range(spec.num_classes)) | {features.IGNORE_LABEL}
            assert feature(example, features.SOURCE_KEY) == [spec.name.encode()]


def test_tfma_scores_exactly_the_datasets_classes(dataset_run):
    cfg, outputs = dataset_run
    n = cfg.dataset.num_classes
    eval_examples = read_examples(outputs["Examples"].uri, features.EVAL_SPLIT)
    pairs = predicted_pairs(_pushed_version(cfg), eval_examples)
    ref = reference.scores(pairs, n)
    result = tfma.load_eval_result(outputs["ModelEvaluation"].uri)
    overall = dict(result.slicing_metrics)[()][""]
    assert overall[""]["example_count"]["doubleValue"] == len(eval_examples)
    assert overall[""]["mean_iou"]["doubleValue"] == pytest.approx(ref["mean_iou"], abs=1e-6)
    scored = {int(k.split(":")[1]) for k in overall if k.startswith("classId:")}
    assert scored == {c for c in range(n) if not np.isnan(ref["class_iou"][c])}
    for c in scored:
        assert overall[f"classId:{c}"]["class_iou"]["doubleValue"] == pytest.approx(
            ref["class_iou"][c], abs=1e-6
        )


def test_the_report_names_and_paints_the_datasets_classes(dataset_run):
    cfg, outputs = dataset_run
    spec = cfg.dataset
    with open(os.path.join(cfg.report_dir(), "report.json")) as f:
        report = json.load(f)
    assert report["class_names"] == list(spec.class_names) and report["dataset"] == spec.name
    assert len(report["evaluation"]["overall"]["class_iou"]) == spec.num_classes
    with open(os.path.join(cfg.report_dir(), "index.html")) as f:
        page = f.read()
    for name in spec.class_names:
        assert name in page, name
    # The samples figure paints each sample's true classes in the spec's colours.
    figure = Image.open(os.path.join(cfg.report_dir(), report["figures"]["samples"])).convert("RGB")
    shown = {tuple(c) for c in np.unique(np.asarray(figure).reshape(-1, 3), axis=0).tolist()}
    samples = eval_samples(outputs["Examples"].uri, _pushed_version(cfg), cfg.report.samples)
    assert len(samples) == cfg.report.samples
    palette = spec.palette()
    for name, _, truth, _ in samples:
        for c in np.unique(truth).tolist():
            assert tuple(palette[c].tolist()) in shown, (name, c)


def test_the_pushed_model_carries_the_spec_and_answers_its_class_ids(dataset_run):
    cfg, outputs = dataset_run
    spec = cfg.dataset
    version = _pushed_version(cfg)
    assert dataset_spec.read(os.path.join(version, "assets.extra")) == spec
    example = read_examples(outputs["Examples"].uri, features.EVAL_SPLIT)[0]
    image = feature(example, features.IMAGE_KEY)[0]
    serve = tf.saved_model.load(version).signatures[SERVING_DEFAULT]
    out = serve(images=tf.constant([image]))
    h, w = np.asarray(Image.open(io.BytesIO(image))).shape[:2]
    ids = out["class_ids"].numpy()[0, :h, :w]
    assert ids.shape == (h, w) and int(ids.max()) < spec.num_classes
