"""One id's files to one tf.Example, or a rejection that names the file and the reason."""

import io
import os
import random
import struct
import zlib

import numpy as np
import pytest
import scipy.io
from PIL import Image, PngImagePlugin

from components.segmentation_example_gen import records, sources
from core import features
from core.dataset_spec import VOC_SPEC
from tests.conftest import feature, png_indices, sbd_segmentation
from tests.test_palette import assert_canonical_mask_png, png_chunks
from transform import palette, preprocessing

VOC_CLASSES = VOC_SPEC.num_classes


def _item(root, source, split=features.TRAIN_SPLIT):
    """The first planned item of ``source``."""
    items = sources.plan_items(root, root)
    return next(i for i in items if i.source == source and i.split == split)


def _write_png(path, ids, pal=None, mode="P"):
    if mode == "P":
        img = Image.fromarray(ids.astype(np.uint8), "P")
        img.putpalette(pal if pal is not None else palette.flat_palette())
    elif mode == "RGB":
        img = Image.fromarray(ids.astype(np.uint8), "RGB")
    else:
        img = Image.fromarray(ids.astype(np.uint8), "L")
    img.save(path)


def test_voc_record_holds_the_contract(dataset_dir):
    item = _item(dataset_dir, features.SOURCE_VOC)
    example = records.build_example(item, VOC_SPEC)
    with open(item.image_path, "rb") as f:
        jpeg = f.read()
    with open(item.mask_path, "rb") as f:
        png = f.read()
    width, height = Image.open(item.image_path).size
    assert feature(example, features.IMAGE_KEY) == [jpeg]
    assert feature(example, features.IMAGE_FORMAT_KEY) == [b"jpeg"]
    assert feature(example, features.FILENAME_KEY) == [item.image_id.encode()]
    assert feature(example, features.HEIGHT_KEY) == [height]
    assert feature(example, features.WIDTH_KEY) == [width]
    assert feature(example, features.SOURCE_KEY) == [b"voc"]
    ids = png_indices(png)
    stored = feature(example, features.MASK_KEY)[0]
    assert stored == palette.encode_palette_png(ids), "every mask is stored in our one encoding"
    assert_canonical_mask_png(stored)
    np.testing.assert_array_equal(png_indices(stored), ids)
    assert feature(example, features.MASK_FORMAT_KEY) == [b"png"]
    assert feature(example, features.CLASSES_PRESENT_KEY) == [c for c in np.unique(ids) if 0 < c < 255]
    assert set(example.features.feature) == {
        features.IMAGE_KEY,
        features.IMAGE_FORMAT_KEY,
        features.FILENAME_KEY,
        features.HEIGHT_KEY,
        features.WIDTH_KEY,
        features.SOURCE_KEY,
        features.MASK_KEY,
        features.MASK_FORMAT_KEY,
        features.CLASSES_PRESENT_KEY,
    }


def test_sbd_mat_becomes_a_voc_palette_png(dataset_dir):
    item = _item(dataset_dir, features.SOURCE_SBD)
    example = records.build_example(item, VOC_SPEC)
    png = feature(example, features.MASK_KEY)[0]
    assert (
        Image.open(io.BytesIO(png)).getpalette()[: 3 * VOC_CLASSES]
        == palette.flat_palette()[: 3 * VOC_CLASSES]
    )
    np.testing.assert_array_equal(png_indices(png), sbd_segmentation(item.mask_path))
    assert feature(example, features.SOURCE_KEY) == [b"sbd"]


def test_rgb_and_grey_masks_are_read_by_colour_and_by_id(dataset_copy):
    item = _item(dataset_copy, features.SOURCE_VOC)
    ids = png_indices(open(item.mask_path, "rb").read())
    for mode, pixels in (("RGB", palette.VOC_COLORMAP[ids]), ("L", ids)):
        _write_png(item.mask_path, pixels, mode=mode)
        example = records.build_example(item, VOC_SPEC)
        np.testing.assert_array_equal(png_indices(feature(example, features.MASK_KEY)[0]), ids)


def test_grayscale_jpeg_is_accepted(dataset_copy):
    item = _item(dataset_copy, features.SOURCE_VOC)
    Image.open(item.image_path).convert("L").save(item.image_path, format="JPEG")
    assert feature(records.build_example(item, VOC_SPEC), features.IMAGE_KEY) == [
        open(item.image_path, "rb").read()
    ]


def _reject(item):
    with pytest.raises(records.Rejected) as err:
        records.build_example(item, VOC_SPEC)
    return err.value


def test_missing_image(dataset_copy):
    item = _item(dataset_copy, features.SOURCE_VOC)
    os.remove(item.image_path)
    e = _reject(item)
    assert e.kind == records.MISSING_FILE and item.image_path in e.reason


def test_corrupt_jpeg(dataset_copy):
    item = _item(dataset_copy, features.SOURCE_VOC)
    with open(item.image_path, "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 this is not a jpeg body" * 10)
    e = _reject(item)
    assert e.kind == records.CORRUPT_IMAGE and item.image_path in e.reason


def test_truncated_jpeg(dataset_copy):
    item = _item(dataset_copy, features.SOURCE_VOC)
    data = open(item.image_path, "rb").read()
    with open(item.image_path, "wb") as f:
        f.write(data[: len(data) // 2])
    e = _reject(item)
    assert e.kind == records.CORRUPT_IMAGE and "truncated" in e.reason and item.image_path in e.reason


def test_png_named_jpg(dataset_copy):
    item = _item(dataset_copy, features.SOURCE_VOC)
    Image.open(item.image_path).save(item.image_path, format="PNG")
    e = _reject(item)
    assert e.kind == records.CORRUPT_IMAGE and "is PNG, not a JPEG" in e.reason


def test_truncated_png(dataset_copy):
    item = _item(dataset_copy, features.SOURCE_VOC)
    data = open(item.mask_path, "rb").read()
    with open(item.mask_path, "wb") as f:
        f.write(data[: len(data) // 2])
    e = _reject(item)
    assert e.kind == records.CORRUPT_MASK and item.mask_path in e.reason


def test_mask_and_image_of_different_sizes(dataset_copy):
    item = _item(dataset_copy, features.SOURCE_VOC)
    ids = png_indices(open(item.mask_path, "rb").read())
    _write_png(item.mask_path, ids[:-3])
    e = _reject(item)
    assert e.kind == records.SIZE_MISMATCH
    h, w = ids.shape
    assert f"mask is {w}x{h - 3}" in e.reason and f"is {w}x{h}" in e.reason
    assert item.mask_path in e.reason and item.image_path in e.reason


def test_palette_index_that_is_no_class(dataset_copy):
    item = _item(dataset_copy, features.SOURCE_VOC)
    ids = png_indices(open(item.mask_path, "rb").read()).copy()
    ids[:2, :2] = 37
    _write_png(item.mask_path, ids)
    e = _reject(item)
    assert e.kind == records.OUT_OF_PALETTE
    assert "4 pixels are not a VOC class or void: palette index 37" in e.reason


@pytest.mark.parametrize("palette_entries", ["recoloured", "short"])
def test_palette_png_is_read_by_index_and_repainted_in_voc_colours(dataset_copy, palette_entries):
    # Loaders read VOC masks by palette index; a file painted in other colours, or with a
    # palette shorter than its indices, still holds valid class ids.
    item = _item(dataset_copy, features.SOURCE_VOC)
    ids = png_indices(open(item.mask_path, "rb").read())
    pal = palette.flat_palette()
    pal = [255 - v for v in pal] if palette_entries == "recoloured" else pal[: 3 * VOC_CLASSES]
    _write_png(item.mask_path, ids, pal=pal)
    assert (ids == 255).any()
    png = feature(records.build_example(item, VOC_SPEC), features.MASK_KEY)[0]
    assert png != open(item.mask_path, "rb").read(), "re-encoded"
    np.testing.assert_array_equal(png_indices(png), ids)
    assert Image.open(io.BytesIO(png)).getpalette() == palette.flat_palette()


def _save_with_chunks(path, ids, chunks):
    """A VOC palette PNG (VOC colours) carrying the given ancillary chunks, as other tools write them."""
    img = Image.fromarray(ids.astype(np.uint8), "P")
    img.putpalette(palette.flat_palette())
    options = {}
    if "tRNS" in chunks:  # background opaque, classes half transparent, void fully
        options["transparency"] = bytes([255] + [128] * 254 + [0])
    if chunks - {"tRNS"}:
        info = PngImagePlugin.PngInfo()
        info.add(b"gAMA", struct.pack(">I", 45455))
        info.add_text("Software", "a label tool")
        options.update(pnginfo=info, dpi=(72, 72))
    img.save(path, **options)
    assert chunks <= {kind for kind, _ in png_chunks(open(path, "rb").read())}


@pytest.mark.parametrize("chunks", [{"tRNS"}, {"gAMA", "tEXt", "pHYs"}], ids=["tRNS", "gAMA-tEXt-pHYs"])
def test_masks_with_ancillary_chunks_are_stored_in_the_canonical_encoding(dataset_copy, chunks):
    item = _item(dataset_copy, features.SOURCE_VOC)
    ids = png_indices(open(item.mask_path, "rb").read())
    assert len(np.unique(ids)) >= 3, "background, a class and void at least"
    _save_with_chunks(item.mask_path, ids, chunks)
    example = records.build_example(item, VOC_SPEC)
    stored = feature(example, features.MASK_KEY)[0]
    assert_canonical_mask_png(stored)
    np.testing.assert_array_equal(png_indices(stored), ids)
    # What Transform reads: the same indices, nothing off-palette.
    decoded, off_palette = preprocessing.decode_mask(stored, VOC_SPEC.num_classes)
    np.testing.assert_array_equal(decoded.numpy(), ids)
    assert int(off_palette) == 0
    present = sorted(int(c) for c in np.unique(png_indices(stored)) if 0 < c < VOC_CLASSES)
    assert feature(example, features.CLASSES_PRESENT_KEY) == present and present


def _damaged(data: bytes, rng: random.Random) -> bytes:
    data = bytearray(data)
    at = rng.randrange(len(data))
    how = rng.choice(["flip", "cut", "zero", "insert"])
    if how == "flip":
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif how == "cut":
        del data[at:]
    elif how == "zero":
        data[at : at + 32] = bytes(len(data[at : at + 32]))
    else:
        data[at:at] = rng.randbytes(rng.randint(1, 16))
    return bytes(data)


def test_damaged_images_and_masks_are_rejected_as_data_never_raised(dataset_copy):
    # Ingestion fails the run on any exception that is not ``Rejected``: so every way a file
    # can be damaged must come out as a rejection kind. 100 seeded damages per format (1,000
    # more .mat ones, and the files that crashed scipy's reader, in tests/test_matfile.py).
    voc, sbd = _item(dataset_copy, features.SOURCE_VOC), _item(dataset_copy, features.SOURCE_SBD)
    rng = random.Random(14)
    kinds = {}
    for item, path, allowed in (
        (voc, voc.image_path, {records.CORRUPT_IMAGE, records.SIZE_MISMATCH}),
        (voc, voc.mask_path, {records.CORRUPT_MASK, records.SIZE_MISMATCH, records.OUT_OF_PALETTE}),
        (sbd, sbd.mask_path, {records.CORRUPT_MASK, records.INVALID_LABEL}),
    ):
        original = open(path, "rb").read()
        for _ in range(100):
            open(path, "wb").write(_damaged(original, rng))
            try:
                records.build_example(item, VOC_SPEC)
            except records.Rejected as e:
                assert e.kind in allowed and path in e.reason, (e.kind, e.reason)
                kinds[e.kind] = kinds.get(e.kind, 0) + 1
        open(path, "wb").write(original)
    assert kinds[records.CORRUPT_IMAGE] > 30 and kinds[records.CORRUPT_MASK] > 100, kinds


@pytest.mark.parametrize(
    "error",
    [
        OSError("damaged"),
        ValueError("damaged"),
        zlib.error("damaged"),
        AttributeError("an injected bug"),
        MemoryError("the worker is out of memory"),
    ],
    ids=["OSError", "ValueError", "zlib.error", "AttributeError", "MemoryError"],
)
def test_only_data_errors_inside_a_decoder_become_rejections(dataset_copy, monkeypatch, error):
    # Fault injection into the library call each decoder makes on the file's bytes: what a
    # damaged file makes it raise is rejected as data; anything else is a bug or the worker's
    # trouble and must reach the run. The .mat reader checks the bytes itself: only zlib's
    # error is the data's.
    voc, sbd = _item(dataset_copy, features.SOURCE_VOC), _item(dataset_copy, features.SOURCE_SBD)

    def fail(*args, **kwargs):
        raise error

    for decode, path, library, name, kind, data_errors in (
        (records.inspect_jpeg, voc.image_path, Image, "open", records.CORRUPT_IMAGE, (OSError, ValueError)),
        (records.decode_voc_mask, voc.mask_path, Image, "open", records.CORRUPT_MASK, (OSError, ValueError)),
        (records.decode_sbd_mask, sbd.mask_path, zlib, "decompressobj", records.CORRUPT_MASK, (zlib.error,)),
    ):
        data = open(path, "rb").read()
        decode(path, data)  # decodes before the fault is injected
        with monkeypatch.context() as patch:
            patch.setattr(library, name, fail)
            if isinstance(error, data_errors):
                with pytest.raises(records.Rejected) as e:
                    decode(path, data)
                assert e.value.kind == kind and path in e.value.reason and str(error) in e.value.reason
            else:
                with pytest.raises(type(error), match=str(error)):
                    decode(path, data)


def test_rgb_colour_outside_the_palette(dataset_copy):
    item = _item(dataset_copy, features.SOURCE_VOC)
    rgb = palette.VOC_COLORMAP[png_indices(open(item.mask_path, "rb").read())].copy()
    rgb[0, 0] = (1, 2, 3)
    _write_png(item.mask_path, rgb, mode="RGB")
    e = _reject(item)
    assert (
        e.kind == records.OUT_OF_PALETTE
        and "1 pixels have colours outside the VOC palette: RGB(1, 2, 3)" in e.reason
    )


def test_corrupt_mat(dataset_copy):
    item = _item(dataset_copy, features.SOURCE_SBD)
    with open(item.mask_path, "wb") as f:
        f.write(b"MATLAB 5.0 MAT-file, garbage" + bytes(200))
    e = _reject(item)
    assert e.kind == records.CORRUPT_MASK and item.mask_path in e.reason


def test_mat_without_gtcls(dataset_copy):
    item = _item(dataset_copy, features.SOURCE_SBD)
    scipy.io.savemat(item.mask_path, {"GTinst": {"Segmentation": np.zeros((4, 4), np.uint8)}})
    e = _reject(item)
    assert e.kind == records.CORRUPT_MASK and "no GTcls struct" in e.reason


def test_mat_with_class_ids_out_of_range(dataset_copy):
    item = _item(dataset_copy, features.SOURCE_SBD)
    seg = sbd_segmentation(item.mask_path).copy()
    seg[0, :3] = 30
    scipy.io.savemat(item.mask_path, {"GTcls": {"Segmentation": seg}})
    e = _reject(item)
    assert e.kind == records.INVALID_LABEL and "3 pixels are not a VOC class or void: class id 30" in e.reason
