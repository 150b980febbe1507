"""Rewrites a split of an Examples artifact for tests: more shards, or other masks.

The ingestion job decides how many files a split gets (one for the tests' small datasets);
the multi-worker tests need more files than workers, and the restart test needs a training
split that teaches the model something clearly wrong. Records stay gzipped tf.Examples in the
data contract's keys, so the trainer reads them as it reads the ExampleGen's.
"""

import glob
import hashlib
import os

import numpy as np
import tensorflow as tf

from core import features
from transform import palette


def _records(pattern: str) -> list:
    files = sorted(glob.glob(pattern))
    assert files, f"no files match {pattern}"
    return [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]


def _write(records: list, out_dir: str, num_files: int) -> list:
    """Writes ``records`` round-robin into ``num_files`` gzipped TFRecord files."""
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, f"data-{i:05d}-of-{num_files:05d}.gz") for i in range(num_files)]
    options = tf.io.TFRecordOptions(compression_type="GZIP")
    writers = [tf.io.TFRecordWriter(p, options) for p in paths]
    for i, record in enumerate(records):
        writers[i % num_files].write(record)
    for writer in writers:
        writer.close()
    return paths


def reshard(pattern: str, out_dir: str, num_files: int) -> list:
    """The records of ``pattern`` in ``num_files`` files under ``out_dir``; returns their paths."""
    return _write(_records(pattern), out_dir, num_files)


def relabel(pattern: str, out_dir: str, class_id: int) -> list:
    """The examples of ``pattern`` with every mask pixel set to ``class_id`` (same sizes, same
    images), as palette PNGs in VOC colours like the ExampleGen writes them."""
    relabelled = []
    for record in _records(pattern):
        example = tf.train.Example.FromString(record)
        height = example.features.feature[features.HEIGHT_KEY].int64_list.value[0]
        width = example.features.feature[features.WIDTH_KEY].int64_list.value[0]
        mask = np.full((height, width), class_id, np.uint8)
        example.features.feature[features.MASK_KEY].bytes_list.value[:] = [palette.encode_palette_png(mask)]
        present = example.features.feature[features.CLASSES_PRESENT_KEY].int64_list.value
        present[:] = [class_id] if class_id else []
        relabelled.append(example.SerializeToString())
    return _write(relabelled, out_dir, 1)


def label_digest(label) -> str:
    """A label map's identity for comparing sets of them: SHA-256 of its int64 bytes."""
    return hashlib.sha256(np.asarray(label, np.int64).tobytes()).hexdigest()
