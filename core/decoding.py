"""Reading a data file, and what a damaged one makes the decoders raise: the data's problems, which
ingestion and batch inference dead-letter, told apart from everything else, which fails the run.

Only data problems become rejections. Any other exception (TypeError, AttributeError, a
MemoryError of a worker out of memory, a storage outage) is a bug or the worker's trouble, not the
data's: a dead-lettered record would hide it below the rejection threshold, while a failed bundle
is retried by distributed runners and then fails the run.
"""

import struct

import tensorflow as tf
from PIL import Image

# The dead letter's kinds that reading and decoding an image give (ingestion has more: the masks').
MISSING_FILE = "missing_file"
CORRUPT_IMAGE = "corrupt_image"

# What a damaged image makes Pillow raise. Measured: per format, 3,000 to 4,000 byte-level
# damages (bytes flipped, cut, zeroed, inserted, duplicated, deleted) of a VOC-style file, and
# for JPEG and PNG 4,000 structure-aware ones (segments and chunks rewritten with valid lengths
# and CRCs). Pillow 12.3 on JPEG and PNG (palette, RGB, grey): OSError (UnidentifiedImageError
# among them), ValueError, SyntaxError, struct.error, IndexError, DecompressionBombError.
IMAGE_DATA_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    struct.error,
    IndexError,
    Image.DecompressionBombError,
)


class Rejected(Exception):  # noqa: N818 - a verdict, not a crash: not an "Error".
    """A record that cannot be used: ``kind`` for counting, ``reason`` for people."""

    def __init__(self, kind: str, reason: str):
        super().__init__(f"{kind}: {reason}")
        self.kind = kind
        self.reason = reason


def read_file(path: str) -> bytes:
    """Reads a whole file through tf.io.gfile, so gs:// and local paths both work.

    A file that is not there (or is a directory) is the data's problem. Any other storage
    error (permission, timeout, unavailable) is not, and propagates.
    """
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            return f.read()
    except tf.errors.NotFoundError:
        raise Rejected(MISSING_FILE, f"{path}: file does not exist") from None
    except tf.errors.FailedPreconditionError as e:  # e.g. "Is a directory"
        raise Rejected(MISSING_FILE, f"{path}: not a readable file: {e.message}") from None
