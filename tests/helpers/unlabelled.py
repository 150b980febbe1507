"""A folder of unlabelled images as users bring them, and the check of what batch inference made
of it against the model's own ``serving_default``, image by image."""

import functools
import json
import os
import shutil

import numpy as np
import tensorflow as tf
from PIL import Image

from core import dataset_spec
from core.signatures import SERVING_DEFAULT, crop_masks
from inference import job
from tests.helpers import images

DAMAGED = "damaged.jpg"  # a JPEG cut in half: its header is whole, decoding fails
NOT_IMAGE = "notes.txt"


def make_folder(out: str, jpegs: list) -> dict:
    """JPEGs (the first in a subfolder), a PNG of another size, a BMP, a truncated JPEG and a
    text file, under ``out``. ``{"good": [images with masks], "damaged": path, "not_image": path}``."""
    os.makedirs(os.path.join(out, "sub"), exist_ok=True)
    good = []
    for i, path in enumerate(jpegs):
        target = os.path.join(out, "sub" if i == 0 else "", f"photo_{i}.jpg")
        shutil.copy(path, target)
        good.append(target)
    with Image.open(jpegs[0]) as image:
        pixels = np.asarray(image.convert("RGB").resize((image.width + 37, image.height // 2 + 5)))
    for name, fmt in (("resized.png", "PNG"), ("scan.bmp", "BMP")):
        target = os.path.join(out, name)
        with open(target, "wb") as f:
            f.write(images.encode(pixels if fmt == "PNG" else pixels[::2, ::3], fmt))
        good.append(target)
    damaged = os.path.join(out, DAMAGED)
    with open(jpegs[-1], "rb") as f:
        data = f.read()
    with open(damaged, "wb") as f:
        f.write(data[: len(data) // 2])  # the header is whole: only decoding finds the fault
    not_image = os.path.join(out, NOT_IMAGE)
    with open(not_image, "w") as f:
        f.write("taken on the 3rd\n")
    return {"good": sorted(good), "damaged": damaged, "not_image": not_image}


def expected_mask(signature, path: str) -> np.ndarray:
    """The image's mask from ``serving_default``, called with that image alone."""
    with open(path, "rb") as f:
        [mask] = crop_masks(signature(images=tf.constant([f.read()])))
    return mask


@functools.lru_cache(maxsize=2)
def _signature(model_dir: str):
    """``serving_default`` of the model, loaded once per test process (the models are read-only)."""
    return tf.saved_model.load(model_dir).signatures[SERVING_DEFAULT]


def check_outputs(output: str, model_dir: str, good: list, overlay: bool) -> list:
    """Asserts every good image's mask is pixel-identical to ``serving_default``'s, in the model's
    palette, named in the manifest with its size and classes; returns the manifest rows."""
    spec = dataset_spec.of_model(model_dir)
    signature = _signature(model_dir)
    rows = {row["input"]: row for row in job.read_jsonl(os.path.join(output, job.MANIFEST_FILE))}
    assert sorted(rows) == sorted(good)
    for path in good:
        row = rows[path]
        expected = expected_mask(signature, path)
        with Image.open(os.path.join(output, row["mask"])) as png:
            assert png.mode == "P"
            np.testing.assert_array_equal(np.asarray(png), expected, err_msg=path)
            colours = np.reshape(png.getpalette()[: 3 * spec.num_classes], (-1, 3))
            np.testing.assert_array_equal(colours, spec.class_colours())
        assert (row["height"], row["width"]) == expected.shape
        assert row["classes"] == [spec.class_names[c] for c in np.unique(expected)]
        if overlay:
            with Image.open(os.path.join(output, row["overlay"])) as jpeg:
                assert jpeg.format == "JPEG" and jpeg.size == (row["width"], row["height"])
        else:
            assert row["overlay"] is None
    return [rows[path] for path in good]


def rejected(output: str) -> dict:
    """``{input: kind}`` of the dead letter."""
    return {row["input"]: row["kind"] for row in job.read_jsonl(os.path.join(output, job.REJECTED_FILE))}


def summary(output: str) -> dict:
    with open(os.path.join(output, job.SUMMARY_FILE)) as f:
        return json.load(f)


def snapshot(output: str) -> dict:
    """``{file: (bytes, mtime_ns)}`` of the masks and overlays: what a re-run must leave alone."""
    found = {}
    for folder in (job.MASKS_DIR, job.OVERLAYS_DIR):
        for root, _, names in os.walk(os.path.join(output, folder)):
            for name in names:
                path = os.path.join(root, name)
                with open(path, "rb") as f:
                    found[path] = (f.read(), os.stat(path).st_mtime_ns)
    return found
