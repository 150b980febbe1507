"""Shared fixtures: datasets in the real VOC/SBD formats, made on the fly, and readers."""

import dataclasses
import fcntl
import glob
import io
import logging
import os
import pickle
import shutil
import traceback
from typing import Optional

import numpy as np
import pytest
import scipy.io
import tensorflow as tf
import tensorflow_transform as tft
from PIL import Image

from benchmarks import transform_analysis as analysis
from core import config as config_lib
from core import dataset_spec, features
from core.signatures import SERVING_EXAMPLES
from datasets import synthetic_voc
from pipeline import cli
from tests.helpers import examples as examples_lib
from trainer import autograph

# Small images keep the suite inside the CI budget; the formats are the real ones.
MAX_SIDE = 96
# Tests fit small Keras models of their own too: they get what the Trainer does for its own.
autograph.skip_keras_conversion()


def pytest_addoption(parser):
    parser.addoption(
        "--reverse", action="store_true", help="run the tests in reverse order, to show none needs another"
    )


def pytest_collection_modifyitems(config, items):
    if config.getoption("--reverse"):
        items.reverse()


# `make test` runs the suite on 2 pytest-xdist workers with --dist loadscope: a module goes to one
# worker, so its module-scoped pipeline runs and servers are built once. xdist hands modules out
# by their number of tests, which would start these (minutes each, few tests) last and leave one
# worker finishing them alone. They go first, slowest first (pytest --durations, issue 27).
SLOWEST_MODULES = (
    "tests/test_pipeline_local.py",
    "tests/test_training.py",
    "tests/test_orchestration.py",
    "tests/test_evaluation.py",
    "tests/test_datasets.py",
    "tests/test_warm_start.py",
    "tests/test_tta.py",
    "tests/test_serving.py",
)
# Modules whose only parametrization is that of a module-scoped fixture (a pipeline run per
# dataset): each parameter is a unit of its own, since pytest builds only the instances a
# worker's tests use. A test-level parametrize there would split a dataset's tests over the
# workers and run its pipeline on each: keep such tests in another module.
SPLIT_BY_PARAMETER = ("tests/test_datasets.py",)
# The xdist whose LoadScopeScheduling internals SlowestFirst overrides; any other runs plain
# loadscope (correct, only slower).
XDIST_SCHEDULER_VERSION = "3.6."


def work_unit(module_scope: str, nodeid: str) -> str:
    """The unit of work of a test: its module (loadscope's), or module and parameter."""
    if module_scope in SPLIT_BY_PARAMETER and nodeid.endswith("]"):
        return f"{module_scope}[{nodeid.rsplit('[', 1)[1]}"
    return module_scope


def slowest_unit(units) -> Optional[str]:
    """The unit of ``SLOWEST_MODULES`` to hand out next, or None for xdist's own order."""
    slow = [unit for unit in units if unit.split("[", 1)[0] in SLOWEST_MODULES]
    return min(slow, key=lambda unit: SLOWEST_MODULES.index(unit.split("[", 1)[0])) if slow else None


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """loadscope, handing out ``SLOWEST_MODULES`` first (longest processing time first)."""
    import xdist
    from xdist.scheduler import LoadScopeScheduling

    if config.getoption("dist") != "loadscope" or not xdist.__version__.startswith(XDIST_SCHEDULER_VERSION):
        return None

    class SlowestFirst(LoadScopeScheduling):
        # xdist 3.6's LoadScopeScheduling names each test's unit of work in _split_scope and
        # pops the next unit from the front of its ``workqueue`` in _assign_work_unit.
        def _split_scope(self, nodeid):
            return work_unit(super()._split_scope(nodeid), nodeid)

        def _assign_work_unit(self, node):
            slowest = slowest_unit(self.workqueue)
            if slowest:
                self.workqueue.move_to_end(slowest, last=False)
            super()._assign_work_unit(node)

    return SlowestFirst(config, log)


def built_once(tmp_path_factory, name: str, build):
    """``build(out_dir)`` once per test session, whichever pytest-xdist worker asks first.

    Each xdist worker is a process with its own session fixtures: left alone, every worker
    that runs a test of the trained model would train it again. The first one to ask builds it
    in a directory that all workers of the session share, under a lock; the others wait for it
    and read what it returned (pickled: keep the value plain, paths and small records). A build
    that failed fails the others at once, naming the worker's error, rather than being paid
    again. Without xdist (or with workers that do not share this machine's session directory),
    the build runs in this session's own temporary directory, as any fixture would.
    """
    own = tmp_path_factory.getbasetemp()
    # xdist's local workers get <session dir>/popen-gw<N>: the session dir is theirs alone.
    if not os.environ.get("PYTEST_XDIST_WORKER") or not own.name.startswith("popen-gw"):
        return build(tmp_path_factory.mktemp(name))
    shared = own.parent
    done, failed = shared / f"{name}.pickle", shared / f"{name}.failed"
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if failed.exists():
                pytest.fail(f"building {name} failed on another worker:\n{failed.read_text()}")
            if done.exists():
                return pickle.loads(done.read_bytes())
            out = shared / name
            if out.exists():  # a worker killed mid-build
                shutil.rmtree(out)
            out.mkdir()
            try:
                value = build(out)
            except Exception:
                failed.write_text(traceback.format_exc())
                raise
            partial = shared / f"{name}.pickle.partial"
            partial.write_bytes(pickle.dumps(value))
            os.replace(partial, done)
            return value
        finally:
            # Explicitly: processes the build forked share the lock's file description and
            # would otherwise hold it for as long as they live.
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture
def cli_main():
    """``deeplab-tfx`` in this process, where its start-up is not what is tested; restores the log
    level it sets."""
    beam_logger = logging.getLogger("apache_beam")
    level = beam_logger.level
    yield cli.main
    beam_logger.setLevel(level)


@pytest.fixture(scope="session")
def dataset_dir(tmp_path_factory):
    """A 40-image VOC+SBD dataset (read-only: tests that corrupt files copy it first)."""

    def build(out):
        synthetic_voc.make_dataset(str(out), num_images=40, seed=7, max_side=MAX_SIDE, workers=1)
        return str(out)

    return built_once(tmp_path_factory, "voc_sbd", build)


@pytest.fixture
def dataset_copy(dataset_dir, tmp_path):
    """A private copy of the dataset that a test may damage."""
    out = str(tmp_path / "data")
    shutil.copytree(dataset_dir, out)
    return out


def read_list(path):
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def voc_path(root, *parts):
    return os.path.join(synthetic_voc.voc_dir(root), *parts)


def sbd_path(root, *parts):
    return os.path.join(synthetic_voc.sbd_dir(root), *parts)


def png_indices(data: bytes) -> np.ndarray:
    """Palette indices of a PNG as PIL reads them: the independent decoder of the tests."""
    img = Image.open(io.BytesIO(data))
    assert img.mode == "P", img.mode
    return np.asarray(img)


def sbd_segmentation(path) -> np.ndarray:
    """GTcls.Segmentation read with scipy's default struct layout (not the loader's options)."""
    return np.asarray(scipy.io.loadmat(path)["GTcls"]["Segmentation"][0, 0])


def read_examples(examples_uri: str, split: str) -> list:
    """All tf.Examples of one split of an Examples artifact."""
    files = sorted(glob.glob(os.path.join(examples_uri, f"Split-{split}", "*.gz")))
    assert files, f"no TFRecord files for split {split} under {examples_uri}"
    examples = []
    for record in tf.data.TFRecordDataset(files, compression_type="GZIP"):
        examples.append(tf.train.Example.FromString(record.numpy()))
    return examples


def predicted_pairs(model_dir: str, examples: list) -> list:
    """``(truth, prediction)`` at original resolution per example, from the model's
    ``serving_examples`` signature, as the Evaluator calls it."""
    serve = tf.saved_model.load(model_dir).signatures[SERVING_EXAMPLES]
    pairs = []
    for example in examples:
        out = serve(examples=tf.constant([example.SerializeToString()]))
        truth = png_indices(feature(example, features.MASK_KEY)[0])
        h, w = truth.shape
        pairs.append((truth, out["class_ids"].numpy()[0, :h, :w]))
    return pairs


def feature(example, key):
    value = example.features.feature[key]
    kind = value.WhichOneof("kind")
    return list(getattr(value, kind).value) if kind else []


# Shared with the benchmarks: the Transform component's analysis, outside TFX.
analyze = analysis.analyze
ingest_and_analyze = analysis.ingest_and_analyze
transform_dir = analysis.transform_dir


def _ingested_and_analyzed(tmp_path_factory, name: str, build) -> tuple:
    """(raw Examples uri, TFTransformOutput) of ``build(out) -> examples uri``, built once."""
    examples_uri = built_once(tmp_path_factory, name, build)
    return examples_uri, tft.TFTransformOutput(transform_dir(examples_uri))


@pytest.fixture(scope="session")
def analyzed(dataset_dir, tmp_path_factory):
    """(raw Examples uri, TFTransformOutput) of the 40-image dataset at MAX_SIDE."""

    def build(out):
        return ingest_and_analyze(dataset_dir, str(out), MAX_SIDE)[0]

    return _ingested_and_analyzed(tmp_path_factory, "transform", build)


@pytest.fixture(scope="session")
def eval_in_four_files(analyzed, tmp_path_factory):
    """The eval split of ``analyzed`` rewritten as 4 files: more files than the tests' 2 workers."""
    examples_uri, _ = analyzed

    def build(out):
        return examples_lib.reshard(os.path.join(examples_uri, "Split-eval", "*"), str(out), 4)

    return built_once(tmp_path_factory, "eval_in_four_files", build)


@pytest.fixture(scope="session")
def learning_data(tmp_path_factory):
    """(raw Examples uri, TFTransformOutput) of 200 generated images at 128 px, for learning tests."""

    def build(out):
        raw = os.path.join(out, "raw")
        synthetic_voc.make_dataset(raw, num_images=200, seed=3, max_side=128, workers=2)
        return ingest_and_analyze(raw, str(out), 128)[0]

    return _ingested_and_analyzed(tmp_path_factory, "learning", build)


def train_tiny(examples_uri: str, out, base_model=None, **overrides):
    """(SavedModel dir, TrainingResult): the tiny config (``overrides`` on its trainer section)
    trained on ``examples_uri``'s records, written under ``out``."""
    from trainer import training  # imported here: collecting other tests must not build Keras

    config = dataclasses.replace(config_lib.load_config("tiny").trainer, **overrides)
    job = training.TrainingJob.of_examples(
        examples_uri, transform_dir(examples_uri), str(out), config.train_steps, base_model=base_model
    )
    result = training.train(config, job)
    print(f"trained: {result}")
    return str(out / "serving"), result


# ``trained_model`` evaluates every this many steps: its training draws the same batches whatever
# the epochs' length (one repeated stream), and half the tiny config's 10 evaluations is 5 to
# pick the best weights from, at a few seconds each fewer on the suite's longest fixture.
TRAINED_EVALUATION_EVERY = 100


@pytest.fixture(scope="session")
def trained_model(learning_data, tmp_path_factory):
    """(SavedModel dir, TrainingResult): the tiny config trained on ``learning_data`` (about 3 min).

    Shared by the learning test, which checks what it reached, the Evaluator/Pusher tests,
    which need a model that is good as well as one that is not, and the warm-start and
    test-time augmentation tests, which start from a model that learned.
    """
    return built_once(
        tmp_path_factory,
        "trained",
        lambda out: train_tiny(learning_data[0], out, steps_per_epoch=TRAINED_EVALUATION_EVERY),
    )


@pytest.fixture(scope="session")
def untrained_model(learning_data, tmp_path_factory):
    """A freshly initialised model of the tiny config, exported like a trained one."""
    from trainer import export, training

    examples_uri, tft_output = learning_data

    def build(out):
        spec = dataset_spec.of_examples(examples_uri)
        net = training.build_model(
            config_lib.load_config("tiny").trainer,
            128,
            1,
            images_normalized=False,
            num_classes=spec.num_classes,
        )
        export.export(net, tft_output, str(out / "serving"), spec)
        return str(out / "serving")

    return built_once(tmp_path_factory, "untrained", build)
