"""preprocessing_fn: palette decoding, resize + pad, class statistics, serving on image bytes alone."""

import io
import os
import struct
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from core import features
from core.dataset_spec import VOC_SPEC
from tests.conftest import MAX_SIDE, analyze, feature, png_indices, read_examples, voc_path
from tests.test_palette import png_chunks
from transform import palette, preprocessing


def _png(pixels, mode):
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8), mode).save(buf, format="PNG")
    return buf.getvalue()


def test_palette_decode_equals_pil_on_every_mask_eagerly_and_in_tf_data(dataset_dir):
    folder = voc_path(dataset_dir, "SegmentationClass")
    paths = sorted(os.path.join(folder, f) for f in os.listdir(folder))
    references = [png_indices(open(p, "rb").read()) for p in paths]
    assert any((r == features.IGNORE_LABEL).any() for r in references), "the void band is covered"
    for path, ref in zip(paths, references, strict=False):
        ids, off = preprocessing.decode_mask(tf.io.read_file(path), VOC_SPEC.num_classes)
        np.testing.assert_array_equal(ids.numpy(), ref, err_msg=path)
        assert int(off) == 0
    dataset = tf.data.Dataset.from_tensor_slices(paths).map(
        lambda p: preprocessing.decode_mask(tf.io.read_file(p), VOC_SPEC.num_classes)
    )
    for (ids, off), ref in zip(dataset, references, strict=False):
        np.testing.assert_array_equal(ids.numpy(), ref)
        assert int(off) == 0


def _palette_png(indices: np.ndarray, entries: int = 256, colours=None) -> bytes:
    """A palette PNG as ingestion writes one (IHDR, PLTE, IDAT, IEND) with ``entries`` colours."""
    img = Image.fromarray(indices.astype(np.uint8), "P")
    pal = palette.VOC_COLORMAP if colours is None else colours
    img.putpalette(pal[:entries].reshape(-1).tolist(), rawmode="RGB")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    data = buf.getvalue()
    assert [kind for kind, _ in png_chunks(data)] == ["IHDR", "PLTE", "IDAT", "IEND"]
    assert len(dict(png_chunks(data))["PLTE"]) == 3 * entries
    return data


def test_every_palette_index_decodes_to_its_class_id_whatever_the_palette():
    # Exhaustive over what Transform reads: all 256 indices, under the VOC colours and under a
    # palette that shares no colour with VOC's (random, with repeats): indices, not colours.
    # Expected ids come from the class list alone.
    indices = np.arange(256, dtype=np.uint8).reshape(16, 16)
    expected = np.where(np.isin(indices, palette.VALID_INDICES), indices, features.IGNORE_LABEL)
    foreign = np.random.default_rng(16).integers(0, 256, (256, 3), dtype=np.uint8)
    foreign[1] = foreign[2]  # two classes of one colour
    decode = tf.function(
        lambda png: preprocessing.decode_mask(png, VOC_SPEC.num_classes)
    )  # a graph, as in the Transform
    for colours in (None, foreign):
        ids, no_class = decode(tf.constant(_palette_png(indices, colours=colours)))
        np.testing.assert_array_equal(ids.numpy(), expected)
        assert int(no_class) == 256 - len(palette.VALID_INDICES)


@pytest.mark.parametrize("entries", [17, 21, 22, 100, 255, 256])
def test_indices_beyond_a_short_palette_are_read_not_taken_for_background(entries):
    # PIL writes as many PLTE entries as it is given (8 bits per pixel above 16). Decoding
    # colours, an index beyond them comes out black, i.e. background; read by index it is
    # itself, off-palette when no class.
    indices = np.random.default_rng(entries).integers(0, 256, (37, 53)).astype(np.uint8)
    indices[0, :3] = 0, entries - 1, 255
    decoded = preprocessing.mask_indices(tf.constant(_palette_png(indices, entries))).numpy()
    np.testing.assert_array_equal(decoded, indices)


def test_out_of_palette_indices_become_255_and_are_counted():
    indices = np.array([[0, 1, 15, 255, 21, 37, 254]], np.uint8)
    ids, off = preprocessing.decode_mask(_palette_png(indices), VOC_SPEC.num_classes)
    np.testing.assert_array_equal(ids.numpy(), [[0, 1, 15, 255, 255, 255, 255]])
    assert int(off) == 3
    counts = preprocessing.class_histogram(
        preprocessing.mask_indices(_palette_png(indices)), VOC_SPEC.num_classes
    ).numpy()
    assert counts[0] == counts[1] == counts[15] == 1 and counts[VOC_SPEC.num_classes] == 1 and counts[-1] == 3


@pytest.mark.parametrize("encoding", ["RGB", "L", "sRGB before PLTE", "4-bit palette"])
def test_a_mask_not_in_the_canonical_encoding_is_refused_not_misread(encoding):
    indices = np.array([[0, 1, 15, 255]], np.uint8)
    if encoding == "4-bit palette":  # PIL writes 4 bits per pixel for a palette of 16
        png = _palette_png(indices % 16, 16)
    elif encoding == "sRGB before PLTE":  # valid PNG (the spec puts sRGB before PLTE)
        canonical = _palette_png(indices)
        at = palette.CANONICAL_PLTE_OFFSET
        srgb = struct.pack(">I", 1) + b"sRGB\x00" + struct.pack(">I", zlib.crc32(b"sRGB\x00"))
        png = canonical[:at] + srgb + canonical[at:]
        assert [kind for kind, _ in png_chunks(png)] == ["IHDR", "sRGB", "PLTE", "IDAT", "IEND"]
    else:
        png = _png(palette.VOC_COLORMAP[indices] if encoding == "RGB" else indices, encoding)
    with pytest.raises(tf.errors.InvalidArgumentError, match="canonical encoding"):
        tf.function(lambda png: preprocessing.decode_mask(png, VOC_SPEC.num_classes))(tf.constant(png))


@pytest.mark.parametrize("height, width", [(375, 500), (500, 333), (64, 64), (20, 100)])
def test_resize_and_pad_keeps_the_aspect_ratio_and_pads_labels_with_255(height, width):
    size = 128
    rng = np.random.default_rng(height)
    ids = rng.integers(0, 21, (height, width)).astype(np.int32)
    label = preprocessing.resize_and_pad_label(tf.constant(ids), size).numpy()
    image = preprocessing.resize_and_pad_image(tf.zeros((height, width, 3), tf.uint8), size).numpy()
    h, w = round(height * size / max(height, width)), round(width * size / max(height, width))
    assert abs(h / w - height / width) < 2 / min(h, w), "aspect ratio kept to a pixel"
    assert max(h, w) == size
    assert (label[h:, :] == 255).all() and (label[:, w:] == 255).all()
    assert (label[:h, :w] != 255).all() and set(np.unique(label[:h, :w])) <= set(np.unique(ids))
    assert (image[h:, :] == preprocessing.IMAGE_PAD_VALUE).all() and (image[:h, :w] == 0).all()
    assert label.shape == (size, size) and image.shape == (size, size, 3)


def test_grayscale_and_cmyk_jpegs_decode_to_rgb():
    rgb = np.full((8, 8, 3), 200, np.uint8)
    for mode in ("L", "CMYK"):
        buf = io.BytesIO()
        Image.fromarray(rgb).convert(mode).save(buf, format="JPEG")
        assert preprocessing.decode_image(buf.getvalue()).shape == (8, 8, 3)


def _transform(tft_output, examples, split, keys=None):
    spec = tft_output.raw_feature_spec()
    serialized = [e.SerializeToString() for e in examples]
    raw = tf.io.parse_example(serialized, spec)
    if keys is not None:
        raw = {k: raw[k] for k in keys}
    return tft_output.transform_features_layer()(raw)


def test_class_pixel_counts_equal_a_numpy_count(analyzed):
    examples_uri, tft_output = analyzed
    expected = np.zeros(256, np.int64)
    for example in read_examples(examples_uri, features.TRAIN_SPLIT):
        expected += np.bincount(png_indices(feature(example, features.MASK_KEY)[0]).ravel(), minlength=256)
    counts = preprocessing.read_class_counts(tft_output, VOC_SPEC.num_classes)
    assert {int(t): n for t, n in counts.items() if t.isdigit()} == {
        c: int(expected[c]) for c in (*range(VOC_SPEC.num_classes), features.IGNORE_LABEL)
    }
    assert counts[features.OUT_OF_PALETTE_TOKEN] == 0


def test_training_outputs_are_pixel_exact_and_static(analyzed):
    examples_uri, tft_output = analyzed
    examples = read_examples(examples_uri, features.TRAIN_SPLIT)
    out = _transform(tft_output, examples, features.TRAIN_SPLIT)
    assert out[features.IMAGE].shape[1:] == (MAX_SIDE, MAX_SIDE, 3)
    assert out[features.LABEL].shape[1:] == (MAX_SIDE, MAX_SIDE)
    for i, example in enumerate(examples):
        ids = png_indices(feature(example, features.MASK_KEY)[0])
        h, w = ids.shape
        assert (out[features.ORIGINAL_HEIGHT][i], out[features.ORIGINAL_WIDTH][i]) == (h, w)
        # The generated images' longer side is MAX_SIDE: no resampling, so labels are exact.
        label = out[features.LABEL][i].numpy()
        np.testing.assert_array_equal(label[:h, :w], ids)
        assert (label[h:] == 255).all() and (label[:, w:] == 255).all()


def test_image_bytes_alone_give_the_training_image(analyzed):
    examples_uri, tft_output = analyzed
    examples = read_examples(examples_uri, features.TRAIN_SPLIT)[:6]
    training = _transform(tft_output, examples, features.TRAIN_SPLIT)
    serving = _transform(tft_output, examples, features.TRAIN_SPLIT, keys=[features.IMAGE_KEY])
    assert features.LABEL not in serving
    np.testing.assert_array_equal(serving[features.IMAGE].numpy(), training[features.IMAGE].numpy())
    np.testing.assert_array_equal(
        serving[features.ORIGINAL_HEIGHT].numpy(), training[features.ORIGINAL_HEIGHT].numpy()
    )


def test_optional_normalization_uses_the_train_split_mean_and_std(analyzed, tmp_path):
    examples_uri, plain = analyzed
    normalized = analyze(examples_uri, str(tmp_path), {"image_size": MAX_SIDE, "normalize_image": True})
    examples = read_examples(examples_uri, features.TRAIN_SPLIT)
    pixels = np.concatenate(
        [
            tf.io.decode_jpeg(feature(e, features.IMAGE_KEY)[0], channels=3).numpy().reshape(-1, 3)
            for e in examples
        ]
    ).astype(np.float64)
    mean, std = pixels.mean(0), pixels.std(0)
    before = _transform(plain, examples, features.TRAIN_SPLIT)[features.IMAGE].numpy()
    after = _transform(normalized, examples, features.TRAIN_SPLIT)[features.IMAGE].numpy()
    for i, example in enumerate(examples):
        h, w = feature(example, features.HEIGHT_KEY)[0], feature(example, features.WIDTH_KEY)[0]
        np.testing.assert_allclose(after[i, :h, :w], (before[i, :h, :w] - mean) / std, atol=2e-3)
        assert (after[i, h:] == 0).all() and (after[i, :, w:] == 0).all()
