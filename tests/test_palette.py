"""The VOC colour map and its arithmetic inverse."""

import io

import numpy as np
from PIL import Image

from pipeline import features
from transform import palette

# Colours published with the VOC devkit (VOCcode/VOClabelcolormap.m) for a few classes.
KNOWN = {
    0: (0, 0, 0),
    1: (128, 0, 0),
    2: (0, 128, 0),
    3: (128, 128, 0),
    7: (128, 128, 128),
    15: (192, 128, 128),
    20: (0, 64, 128),
    255: (224, 224, 192),
}


def test_colormap_matches_the_devkit_colours():
    for index, rgb in KNOWN.items():
        assert tuple(palette.VOC_COLORMAP[index]) == rgb, index


def test_colormap_is_a_bijection_on_256_indices():
    assert len({tuple(c) for c in palette.VOC_COLORMAP}) == 256


def test_inverse_recovers_every_index():
    np.testing.assert_array_equal(palette.colors_to_indices(palette.VOC_COLORMAP), np.arange(256))
    assert palette.is_palette_color(palette.VOC_COLORMAP, np.arange(256)).all()


def test_colours_off_the_map_are_detected():
    off = np.array([[1, 0, 0], [128, 0, 1], [127, 0, 0], [255, 255, 255]], np.uint8)
    indices = palette.colors_to_indices(off)
    assert not palette.is_palette_color(off, indices).any()


def test_palette_png_round_trip():
    ids = np.array([[0, 1, 20], [255, 15, 0]], np.uint8)
    img = Image.open(io.BytesIO(palette.encode_palette_png(ids)))
    assert img.mode == "P"
    np.testing.assert_array_equal(np.asarray(img), ids)
    rgb = np.asarray(img.convert("RGB"))
    np.testing.assert_array_equal(rgb, palette.VOC_COLORMAP[ids])


def test_valid_indices_are_the_classes_and_void():
    assert palette.VALID_INDICES == tuple(range(21)) + (255,)
    assert features.NUM_CLASSES == 21 and features.IGNORE_LABEL == 255
