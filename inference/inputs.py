"""What a batch-inference job reads: image files matched by globs, or the records of TFRecord files
of the data contract (an Examples artifact's ``Split-*/*.gz``), each with the name its outputs get.

An input's name (``Input.name``) is where its outputs go under the output directory: for an image
file, its path relative to the folder its glob starts in, without the extension
(``/data/new/a/b.jpg`` from ``/data/new`` or ``/data/new/*/*.jpg`` -> ``a/b``:
``masks/a/b.png``), so that masks sit beside their images the way VOC's ``SegmentationClass``
sits beside ``JPEGImages`` and can go back into a dataset; for a record, its ``image/filename``.
Two inputs of one name (``a.jpg`` and ``a.png``) would overwrite each other's masks: the job
rejects both (``DUPLICATE_NAME``). A file two patterns match is read once, named by the first.

A file whose name ends in ``.tfrecord``, ``.tfrecords`` or ``.gz`` (GZIP, as TFX writes them) is
read as TFRecords; any other file as one image. A pattern that is a directory reads it whole,
recursively. Files are listed by Beam's filesystems (one listing per pattern: a paginated list
on Cloud Storage, not a request per file) and read through ``tf.io.gfile``; both know ``gs://``
and local paths.
"""

import dataclasses
import os
import re
import zlib
from typing import Iterator, Optional

import tensorflow as tf
from apache_beam.io.filesystems import FileSystems

from core import decoding, features
from core.signatures import ENCODING_NAMES, IMAGE_ENCODINGS
from serving.models import error_reason

TFRECORD_SUFFIXES = (".tfrecord", ".tfrecords", ".gz")
GZIP_SUFFIX = ".gz"
# The dead letter's kinds: why an input has no mask. Those shared with ingestion are spelled there.
MISSING_FILE = decoding.MISSING_FILE  # gone between listing and reading, or not a file
CORRUPT_IMAGE = decoding.CORRUPT_IMAGE  # a header PIL cannot read, or bytes the model cannot decode
UNREADABLE_RECORDS = "unreadable_records"  # a TFRecord file that cannot be read on (from some record)
BAD_RECORD = "bad_record"  # a record that is not a tf.Example with image/encoded and a usable image/filename
NOT_AN_IMAGE = "not_an_image"  # bytes that are none of the encodings the model decodes
TOO_LARGE = "too_large"  # more pixels than the model takes (trainer.max_image_pixels when it was exported)
DUPLICATE_NAME = "duplicate_name"  # another input has the same name (its outputs would collide)
KINDS = (MISSING_FILE, CORRUPT_IMAGE, UNREADABLE_RECORDS, BAD_RECORD, NOT_AN_IMAGE, TOO_LARGE, DUPLICATE_NAME)
_GLOB_CHARS = re.compile(r"[*?\[]")


class NoInputError(ValueError):
    """A pattern that matches no file (a typo, or data that has not arrived), or an output folder
    that holds an input folder (its outputs would be read as inputs, or every input left out)."""


@dataclasses.dataclass(frozen=True)
class Input:
    name: str  # where its outputs go: masks/<name>.png
    source: str  # what the manifest and the dead letter call it: the file, or file#image id
    path: str  # the file it is (or whose record it is)
    data: Optional[bytes] = None  # a record's image bytes; None: the file's, read when needed


def rejection(source: str, kind: str, reason: str) -> dict:
    """A row of the dead letter."""
    return {"input": source, "kind": kind, "reason": reason}


def _base_dir(pattern: str) -> str:
    """The folder a glob starts in: its path up to the first component with a wildcard."""
    parts = pattern.split("/")
    for i, part in enumerate(parts):
        if _GLOB_CHARS.search(part):
            return "/".join(parts[:i]) or "/"
    return os.path.dirname(pattern) or "/"


def absolute(path: str) -> str:
    """A local path made absolute (as Beam then lists it); a URI as it is."""
    return path if "://" in path else os.path.abspath(path)


def listing(pattern: str) -> tuple:
    """``(Beam glob, base folder)`` of an ``--input``, local paths made absolute: a directory
    becomes ``<dir>/**``, read whole. Raises ``NoInputError`` naming the pattern when it matches
    nothing (one page is listed)."""
    pattern = absolute(pattern.rstrip("/") or "/")
    if not _GLOB_CHARS.search(pattern) and tf.io.gfile.isdir(pattern):
        glob, base = os.path.join(pattern, "**"), pattern
    else:
        glob, base = pattern, _base_dir(pattern)
    if not FileSystems.match([glob], limits=[1])[0].metadata_list:
        raise NoInputError(f"--input {pattern}: matches no file")
    return glob, base


def common_base(listings: list) -> list:
    """``listings`` with one base folder, the deepest all share, when they are of one filesystem:
    ``cam1/*.jpg`` and ``cam2/*.jpg`` name their masks ``cam1/0001`` and ``cam2/0001``, not both
    ``0001``. Of different filesystems (``gs://`` and a local folder) each keeps its own."""
    bases = [base for _, base in listings]
    schemes = {base.split("://")[0] if "://" in base else "" for base in bases}
    if len(schemes) != 1:
        return listings
    split = [base.rstrip("/").split("/") for base in bases]
    shared = []
    for parts in zip(*split, strict=False):  # up to the shortest
        if len(set(parts)) > 1:
            break
        shared.append(parts[0])
    base = "/".join(shared) or "/"
    return [(glob, base) for glob, _ in listings]


def matched_files(glob: str) -> list:
    """Every file ``glob`` matches (Beam's filesystems: directories are not listed, and Cloud
    Storage's folder placeholders, objects named ``.../``, are left out)."""
    paths = (metadata.path for metadata in FileSystems.match([glob])[0].metadata_list)
    return sorted(path for path in paths if not path.endswith("/"))


def is_tfrecord(path: str) -> bool:
    return path.endswith(TFRECORD_SUFFIXES)


def image_input(path: str, base: str) -> Input:
    relative = path[len(base) :].lstrip("/") if path.startswith(base) else os.path.basename(path)
    return Input(os.path.splitext(relative)[0], path, path)


def records(path: str) -> Iterator[object]:
    """The ``Input`` of each record of a TFRecord file, or a rejection (``rejection``) for a record
    that is not of the data contract, and for the rest of a file that cannot be read on. Storage
    errors other than damaged data propagate."""
    compression = "GZIP" if path.endswith(GZIP_SUFFIX) else ""
    count = 0
    try:
        for record in tf.data.TFRecordDataset(path, compression_type=compression).as_numpy_iterator():
            count += 1
            yield _record_input(path, count, record)
    except tf.errors.DataLossError as e:  # a cut or damaged file (a bad CRC, a truncated record)
        yield rejection(path, UNREADABLE_RECORDS, f"{error_reason(e.message)} (after {count} records)")


def _usable_name(name: str) -> bool:
    """A record's name becomes a path under the output: relative, normalised, no ``..``."""
    return (
        bool(name)
        and not name.startswith("/")
        and os.path.normpath(name) == name
        and ".." not in name.split("/")
    )


def _record_input(path: str, number: int, record: bytes) -> object:
    where = f"{path}#{number}"
    try:
        example = tf.train.Example.FromString(record)
    except Exception as e:  # noqa: BLE001 - protobuf's DecodeError and kin: a damaged record
        return rejection(where, BAD_RECORD, f"not a tf.Example: {e}")
    feature = example.features.feature
    image = feature[features.IMAGE_KEY].bytes_list.value
    names = feature[features.FILENAME_KEY].bytes_list.value
    if len(image) != 1 or len(names) != 1:
        return rejection(
            where, BAD_RECORD, f"a record needs one {features.IMAGE_KEY} and one {features.FILENAME_KEY}"
        )
    name = names[0].decode("utf-8", "replace")
    if not _usable_name(name):
        return rejection(
            where, BAD_RECORD, f"{features.FILENAME_KEY} {name!r} cannot name a file under the output"
        )
    return Input(name, f"{path}#{name}", path, image[0])


def read(item: Input) -> bytes:
    """The input's bytes (``decoding.Rejected`` for a file that is gone or not a file)."""
    return item.data if item.data is not None else decoding.read_file(item.path)


def checksum(data: bytes) -> str:
    """What tells an input's bytes from another's: a mask kept from an earlier run must be of
    these very bytes, not of an older file of the same name."""
    return f"crc32:{zlib.crc32(data):08x}"


def encoding(data: bytes) -> Optional[str]:
    """The name of ``data``'s encoding by its first bytes, None if the model cannot decode it."""
    return next((name for name, magic in IMAGE_ENCODINGS if data.startswith(magic)), None)


def not_an_image(data: bytes) -> str:
    start = data[:8]
    return f"starts with {start!r}: not {ENCODING_NAMES}" if data else "empty file"
