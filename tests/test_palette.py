"""The VOC colour map and its arithmetic inverse."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from core import features
from core.dataset_spec import VOC_SPEC
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


def test_overlays_leave_the_specs_background_and_the_ignored_unpainted():
    image = np.full((1, 4, 3), 100, np.uint8)
    ids = np.array([[0, 1, 2, features.IGNORE_LABEL]], np.uint8)
    colours = VOC_SPEC.palette()  # 0 black, 1 (128, 0, 0), 2 (0, 128, 0)
    # VOC's background (class 0) and void stay the image; the objects are half their colour.
    over = palette.overlay(image, ids, colours, background=VOC_SPEC.background_id)
    assert over[0].tolist() == [[100, 100, 100], [114, 50, 50], [50, 114, 50], [100, 100, 100]]
    # A background of another id, and none: class 0 is then an object like the others.
    assert palette.overlay(image, ids, colours, background=2)[0].tolist() == [
        [50, 50, 50], [114, 50, 50], [100, 100, 100], [100, 100, 100],
    ]  # fmt: skip
    assert palette.overlay(image, ids, colours, background=None)[0, 0].tolist() == [50, 50, 50]


def test_an_overlay_call_written_before_the_background_keeps_its_alpha_or_fails():
    image = np.full((1, 2, 3), 100, np.uint8)
    ids = np.array([[0, 1]], np.uint8)
    colours = VOC_SPEC.palette()
    # The fourth positional argument is still alpha; the background must be named.
    with pytest.raises(TypeError, match="missing 1 required keyword-only argument: 'background'"):
        palette.overlay(image, ids, colours, 0.3)
    over = palette.overlay(image, ids, colours, 0.3, background=0)
    assert over[0].tolist() == [[100, 100, 100], [108, 70, 70]]


def test_colormap_matches_the_devkit_colours():
    for index, rgb in KNOWN.items():
        assert tuple(palette.VOC_COLORMAP[index]) == rgb, index


def test_colormap_is_a_bijection_on_256_indices():
    assert len({tuple(c) for c in palette.VOC_COLORMAP}) == 256


def test_inverse_recovers_every_class_and_void():
    valid = np.array(palette.VALID_INDICES)
    ids, ok = palette.colors_to_ids(palette.VOC_COLORMAP[valid])
    np.testing.assert_array_equal(ids, valid)
    assert ok.all()
    assert palette.COLOR_MODULUS == 260 and palette.COLOR_TABLE.nbytes == 1040


def test_colours_off_the_map_are_detected():
    off = np.array([[1, 0, 0], [128, 0, 1], [127, 0, 0], [255, 255, 255]], np.uint8)
    others = palette.VOC_COLORMAP[21:255]  # in the VOC map, but no class
    for colors in (off, others):
        ids, ok = palette.colors_to_ids(colors)
        assert not ok.any() and (ids == 255).all()


def test_every_24_bit_colour_is_classified_right():
    # Exhaustive: all 16.7M colours, so no off-palette colour can alias a class.
    r, g, b = np.meshgrid(np.arange(256), np.arange(256), np.arange(256), indexing="ij")
    rgb = np.stack([r.ravel(), g.ravel(), b.ravel()], axis=-1).astype(np.uint8)
    ids, ok = palette.colors_to_ids(rgb)
    assert ok.sum() == len(palette.VALID_INDICES)
    np.testing.assert_array_equal(np.sort(ids[ok]), np.array(palette.VALID_INDICES))


def png_chunks(data: bytes) -> list:
    """``[(type, payload)]`` of a PNG, each CRC checked: what a decoder will see besides pixels."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, at = [], 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind, payload = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
        assert struct.unpack(">I", data[at + 8 + length : at + 12 + length])[0] == zlib.crc32(kind + payload)
        chunks.append((kind.decode("ascii"), payload))
        at += 12 + length
    return chunks


def assert_canonical_mask_png(data: bytes) -> None:
    """IHDR (8-bit palette), the 256-colour VOC PLTE, IDAT, IEND: no tRNS, gAMA, text or other chunk."""
    chunks = png_chunks(data)
    kinds = [kind for kind, _ in chunks]
    assert kinds[:2] == ["IHDR", "PLTE"] and kinds[-1] == "IEND", kinds
    assert set(kinds[2:-1]) == {"IDAT"}, kinds
    assert chunks[0][1][8:10] == bytes([8, 3]), "bit depth 8, colour type 3 (palette)"
    assert chunks[1][1] == bytes(palette.flat_palette())


def test_palette_png_has_only_the_critical_chunks():
    # Transform decodes masks by colour after an RGBA decode: a tRNS chunk would make class
    # pixels semi-transparent, hence off-palette, hence void.
    ids = np.array([[0, 1, 20], [255, 15, 0]], np.uint8)
    assert_canonical_mask_png(palette.encode_palette_png(ids))


def test_palette_png_round_trip():
    ids = np.array([[0, 1, 20], [255, 15, 0]], np.uint8)
    img = Image.open(io.BytesIO(palette.encode_palette_png(ids)))
    assert img.mode == "P"
    np.testing.assert_array_equal(np.asarray(img), ids)
    rgb = np.asarray(img.convert("RGB"))
    np.testing.assert_array_equal(rgb, palette.VOC_COLORMAP[ids])


def test_valid_indices_are_the_classes_and_void():
    assert palette.VALID_INDICES == tuple(range(21)) + (255,)
    assert VOC_SPEC.num_classes == 21 and features.IGNORE_LABEL == 255
