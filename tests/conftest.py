"""Shared fixtures: datasets in the real VOC/SBD formats, made on the fly, and readers."""

import glob
import io
import os
import shutil

import numpy as np
import pytest
import scipy.io
import tensorflow as tf
from PIL import Image

from datasets import synthetic_voc

# Small images keep the suite inside the CI budget; the formats are the real ones.
MAX_SIDE = 96


@pytest.fixture(scope="session")
def dataset_dir(tmp_path_factory):
    """A 40-image VOC+SBD dataset (read-only: tests that corrupt files copy it first)."""
    out = str(tmp_path_factory.mktemp("voc_sbd"))
    synthetic_voc.make_dataset(out, num_images=40, seed=7, max_side=MAX_SIDE, workers=1)
    return out


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


def feature(example, key):
    value = example.features.feature[key]
    kind = value.WhichOneof("kind")
    return list(getattr(value, kind).value) if kind else []
