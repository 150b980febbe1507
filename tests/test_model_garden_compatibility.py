"""What TF Model Garden's segmentation loader reads of our records, and what it does not.

Model Garden (official/vision/dataloaders/segmentation_input.py) parses four keys with
``tf.io.parse_single_example`` and decodes the mask with ``tf.io.decode_image(..., channels=1)``.
Its spec and its decode call are written out below as the external reference: the keys and
types match ours, the mask encoding does not (a palette PNG decodes to luminance, not ids).
"""

import numpy as np
import tensorflow as tf

from components.segmentation_example_gen import records, sources
from core import features
from core.dataset_spec import VOC_SPEC
from tests.conftest import png_indices
from transform import palette, preprocessing

# Model Garden's Decoder._keys_to_features (image_feature defaults to image/encoded).
MODEL_GARDEN_KEYS = {
    "image/encoded": tf.io.FixedLenFeature((), tf.string, default_value=""),
    "image/height": tf.io.FixedLenFeature((), tf.int64, default_value=0),
    "image/width": tf.io.FixedLenFeature((), tf.int64, default_value=0),
    "image/segmentation/class/encoded": tf.io.FixedLenFeature((), tf.string, default_value=""),
}


def _model_garden_label(png: tf.Tensor) -> np.ndarray:
    """Parser._prepare_image_and_label's mask decode."""
    return tf.io.decode_image(png, channels=1)[..., 0].numpy()


def test_model_garden_parses_our_keys_and_image(dataset_dir):
    item = sources.plan_items(dataset_dir, dataset_dir)[0]
    example = records.build_example(item, VOC_SPEC)
    parsed = tf.io.parse_single_example(example.SerializeToString(), MODEL_GARDEN_KEYS)
    # No default was used: every key is ours, with Model Garden's type.
    image = tf.io.decode_image(parsed["image/encoded"], channels=3).numpy()
    assert (int(parsed["image/height"]), int(parsed["image/width"])) == image.shape[:2]
    assert image.shape[:2] == png_indices(parsed["image/segmentation/class/encoded"].numpy()).shape
    assert set(MODEL_GARDEN_KEYS) <= set(example.features.feature)
    assert {features.IMAGE_KEY, features.HEIGHT_KEY, features.WIDTH_KEY, features.MASK_KEY} == set(
        MODEL_GARDEN_KEYS
    )


def test_model_garden_reads_our_masks_as_luminance_not_class_ids():
    ids = np.array([list(range(VOC_SPEC.num_classes)) + [features.IGNORE_LABEL]], np.uint8)
    png = tf.constant(palette.encode_palette_png(ids))
    theirs = _model_garden_label(png)[0]
    # Only black (background) survives; every class becomes the grey of its VOC colour.
    assert theirs[0] == 0 and (theirs[1:] != ids[0, 1:]).all()
    assert (theirs[6], theirs[18]) == (89, 112)
    # Ours decodes the same bytes to the ids.
    ours, off_palette = preprocessing.decode_mask(png, VOC_SPEC.num_classes)
    np.testing.assert_array_equal(ours.numpy()[0], ids[0])
    assert int(off_palette) == 0
