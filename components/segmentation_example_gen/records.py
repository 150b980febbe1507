"""Turns one id's files into a tf.Example, or says exactly why it cannot.

Everything here is plain Python on bytes, so it runs the same in a Beam worker, in the CLI and
in a unit test. Every failure is a ``Rejected`` carrying a short ``kind`` (the Beam counter
name) and a reason that names the file; the caller routes it to the dead-letter output.
"""

from __future__ import annotations

import dataclasses
import functools
import io

import numpy as np
import tensorflow as tf
from PIL import Image

from components.segmentation_example_gen import matfile
from components.segmentation_example_gen.sources import WorkItem
from core import dataset_spec, decoding, features
from core.dataset_spec import VOC_SPEC, DatasetSpec
from transform import palette

# Rejection kinds; each is also a Beam counter "rejected_<kind>".
MISSING_FILE = decoding.MISSING_FILE
CORRUPT_IMAGE = decoding.CORRUPT_IMAGE
CORRUPT_MASK = "corrupt_mask"
SIZE_MISMATCH = "size_mismatch"
OUT_OF_PALETTE = "out_of_palette"
INVALID_LABEL = "invalid_label"
# Only data problems: any other exception is a bug (or an outage) and fails the run, since
# rejected records pass silently below ``max_rejected_fraction``.
KINDS = (MISSING_FILE, CORRUPT_IMAGE, CORRUPT_MASK, SIZE_MISMATCH, OUT_OF_PALETTE, INVALID_LABEL)

# ``image/format`` by the format PIL names: VOC's images are JPEG, a folders dataset's JPEG or PNG.
IMAGE_FORMATS = {"JPEG": features.IMAGE_FORMAT, "PNG": features.PNG_FORMAT}
VOC_IMAGE_FORMATS = ("JPEG",)

# What a damaged image makes Pillow raise (measured): only these become rejections.
_IMAGE_DATA_ERRORS = decoding.IMAGE_DATA_ERRORS


# A record that cannot be ingested, and reading a file of it: core/decoding.py, shared with batch
# inference.
Rejected = decoding.Rejected
read_file = decoding.read_file


def inspect_image(path: str, data: bytes, formats: tuple = tuple(IMAGE_FORMATS)) -> tuple:
    """Fully decodes an image in one of ``formats`` to prove it is intact; returns
    ``(height, width, PIL's format name)``.

    A JPEG is decoded at 1/8 scale (``draft``), which still reads every entropy-coded byte, so
    truncation and corruption are caught at a fraction of the cost of a full-size decode. A
    PNG has no such shortcut: every row is inflated and its CRCs checked.
    """
    allowed = " or ".join(formats)
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format not in formats:
                raise Rejected(CORRUPT_IMAGE, f"{path}: is {img.format or 'not an image'}, not a {allowed}")
            width, height = img.size
            if img.format == "JPEG":
                img.draft(img.mode, (max(1, width // 8), max(1, height // 8)))
            img.load()
            return height, width, img.format
    except _IMAGE_DATA_ERRORS as e:
        raise Rejected(CORRUPT_IMAGE, f"{path}: cannot decode {allowed}: {e}") from None


def inspect_jpeg(path: str, data: bytes) -> tuple:
    """``inspect_image`` for VOC and SBD, whose images are JPEGs: ``(height, width)``."""
    height, width, _ = inspect_image(path, data, VOC_IMAGE_FORMATS)
    return height, width


@dataclasses.dataclass(frozen=True)
class _Tables:
    """What decoding a spec's masks needs, computed once per spec (``_tables``)."""

    label: str  # the dataset in messages: "VOC", or the spec's name
    lookup: np.ndarray  # [256] int16: value -> class id, features.IGNORE_LABEL, or -1 (no class)
    allowed: str  # the values the masks may hold, for messages
    colour_keys: np.ndarray  # sorted packed colours (palette.pack_rgba) of classes and ignore
    colour_ids: np.ndarray  # [len(colour_keys)] uint8: their class ids (features.IGNORE_LABEL for ignore)
    ignore_colour: tuple
    palette: np.ndarray  # [256, 3] uint8: the stored PNG's PLTE (DatasetSpec.palette())
    foreground: tuple  # the class ids class/present may hold (DatasetSpec.foreground_ids())


def _ranges(values) -> str:
    """``[0, 1, 2, 5, 255]`` -> ``"0-2, 5, 255"``."""
    runs, start = [], None
    values = list(values)
    for i, v in enumerate(values):
        start = v if start is None else start
        if i + 1 == len(values) or values[i + 1] != v + 1:
            runs.append(str(v) if start == v else f"{start}-{v}")
            start = None
    return ", ".join(runs)


@functools.lru_cache(maxsize=8)
def _tables(spec: DatasetSpec) -> _Tables:
    # Once per spec and process: building the palette alone costs about a millisecond.
    lookup = spec.value_lookup()
    colours = np.concatenate([spec.class_colours(), spec.palette()[features.IGNORE_LABEL][None]])
    ids = np.append(np.arange(spec.num_classes), features.IGNORE_LABEL).astype(np.uint8)
    keys = palette.pack_rgba(colours)
    order = np.argsort(keys)
    return _Tables(
        label="VOC" if spec.layout == dataset_spec.VOC else spec.name,
        lookup=lookup,
        allowed=_ranges(np.nonzero(lookup >= 0)[0].tolist()),
        colour_keys=keys[order],
        colour_ids=ids[order],
        ignore_colour=tuple(int(v) for v in colours[-1]),
        palette=spec.palette(),
        foreground=spec.foreground_ids(),
    )


def _values_to_ids(path: str, values: np.ndarray, spec: DatasetSpec, kind: str, describe) -> tuple:
    """Mask values ``[H, W]`` uint8 -> ``(class ids, histogram of ids)`` through the spec's
    ``value_lookup``; rejects as ``kind`` a value that is no class or void.

    ``describe(value)`` says what a bad value was in the file. One ``bincount`` of the values
    does the whole check, and the ids' histogram (for the classes-present feature) is derived
    from it without a second pass over the pixels; where every present value is its own class
    id (VOC, CIHP) the values are the ids, with no copy.
    """
    table = _tables(spec)
    counts = np.bincount(values.ravel(), minlength=256)
    present = np.nonzero(counts)[0]
    targets = table.lookup[present]
    bad = present[targets < 0].tolist()
    if bad:
        shown = ", ".join(str(describe(v)) for v in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise Rejected(
            kind,
            f"{path}: {int(counts[bad].sum())} pixels are not a {table.label} class or void: {shown}{more} "
            f"(dataset {spec.name} allows mask values {table.allowed})",
        )
    if np.array_equal(targets, present):
        return values, counts
    ids = table.lookup.astype(np.uint8)[values]
    return ids, np.bincount(targets, weights=counts[present], minlength=256).astype(np.int64)


def _rgb(color) -> str:  # for messages
    r, g, b = (int(v) for v in color)
    return f"RGB({r}, {g}, {b})"


def _colours_to_ids(path: str, pixels: np.ndarray, spec: DatasetSpec) -> tuple:
    """RGB pixels ``[H, W, 3]`` -> ``(class ids, histogram)`` through the spec's class colours
    and its ignore colour; a colour that is neither is rejected as ``OUT_OF_PALETTE``."""
    table = _tables(spec)
    packed = palette.pack_rgba(pixels)
    at = np.minimum(np.searchsorted(table.colour_keys, packed), len(table.colour_keys) - 1)
    valid = table.colour_keys[at] == packed
    if not valid.all():
        colors = np.unique(pixels[~valid], axis=0)
        shown = ", ".join(_rgb(c) for c in colors[:5])
        raise Rejected(
            OUT_OF_PALETTE,
            f"{path}: {int((~valid).sum())} pixels have colours outside the {table.label} palette: "
            f"{shown}{' and more' if len(colors) > 5 else ''} (dataset {spec.name} allows the colours "
            f"of its {spec.num_classes} classes and void {_rgb(table.ignore_colour)})",
        )
    ids = table.colour_ids[at]
    return ids, np.bincount(ids.ravel(), minlength=256)


# How each encoding reads each PNG mode: by "index" (palette PNG), "value" (grey) or "colour".
# A palette spec also takes grey conversions and RGB renderings of its masks (VOC's
# SegmentationClassAug, colour exports); a grey spec takes palette PNGs by index (label tools
# save id masks so, and numpy's view of such a file is its indices); an rgb spec reads any
# colour PNG, a palette one by its colours.
_READS = {
    dataset_spec.PALETTE: {"P": "index", "L": "value", "RGB": "colour", "RGBA": "colour"},
    dataset_spec.GREY: {"L": "value", "P": "index"},
    dataset_spec.RGB: {"RGB": "colour", "RGBA": "colour", "P": "colour"},
}
_ENCODING_WORDS = {
    dataset_spec.PALETTE: "palette PNGs read by index",
    dataset_spec.GREY: "8-bit grey PNGs of values",
    dataset_spec.RGB: "RGB PNGs in the classes' colours",
}
_MODE_WORDS = {"P": "a palette", "L": "an 8-bit grey", "RGB": "an RGB", "RGBA": "an RGBA"}


def _open_mask(path: str, data: bytes, spec: DatasetSpec) -> tuple:
    """Decodes a mask PNG as the spec reads it: ``(pixels, how)``, ``how`` a value of ``_READS``."""
    reads = _READS[spec.mask_encoding]
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format != "PNG":
                raise Rejected(CORRUPT_MASK, f"{path}: is {img.format or 'not an image'}, not a PNG")
            img.load()
            mode = img.mode
            if mode not in _MODE_WORDS:
                raise Rejected(CORRUPT_MASK, f"{path}: PNG mode {mode} is not a palette, RGB or grey mask")
            if mode not in reads:
                raise Rejected(
                    CORRUPT_MASK,
                    f"{path}: is {_MODE_WORDS[mode]} PNG, but the "
                    f"masks of dataset {spec.name} are {_ENCODING_WORDS[spec.mask_encoding]} "
                    f"(mask_encoding: {spec.mask_encoding})",
                )
            how = reads[mode]
            if how == "colour" and mode != "RGB":
                img = img.convert("RGB")
            return np.asarray(img), how
    except _IMAGE_DATA_ERRORS as e:
        raise Rejected(CORRUPT_MASK, f"{path}: cannot decode PNG: {e}") from None


def decode_mask(path: str, data: bytes, spec: DatasetSpec) -> tuple:
    """Decodes a mask PNG as ``spec`` says its masks are encoded; returns ``(ids [H, W] uint8,
    histogram)``.

    Palette PNGs are read by index, as every loader does (the index *is* the value, the
    palette only paints it), grey PNGs by value, both through ``spec.value_lookup()``; RGB(A)
    PNGs colour by colour through the spec's class colours. A value or colour that is no class
    and not ignored is an error, never silently background; a PNG in a form the spec does not
    allow is a corrupt mask. Whatever the file's form, ``encode`` stores the ids in one
    encoding of our own.
    """
    pixels, how = _open_mask(path, data, spec)
    if how == "colour":
        return _colours_to_ids(path, pixels, spec)
    describe = (lambda v: f"palette index {v}") if how == "index" else (lambda v: f"grey {v}")
    return _values_to_ids(path, pixels, spec, OUT_OF_PALETTE, describe)


def decode_voc_mask(path: str, data: bytes) -> tuple:
    """``decode_mask`` with VOC's spec: palette PNGs by index, grey by value, RGB(A) by colour."""
    return decode_mask(path, data, VOC_SPEC)


def decode_sbd_mask(path: str, data: bytes) -> tuple:
    """Reads ``GTcls.Segmentation`` from an SBD ``.mat`` (MATLAB 5, as SBD ships).

    Returns ``(ids [H, W] uint8, histogram)``. SBD has no void band, so its ids are 0-20. The
    file is read by ``matfile``, not scipy's ``loadmat``, which crashes the process on some
    damaged files: whatever the bytes, this returns or raises ``Rejected``.
    """
    try:
        variables = matfile.read_variables(data)
        if "GTcls" not in variables:
            raise Rejected(CORRUPT_MASK, f"{path}: no GTcls struct (variables: {sorted(variables)})")
        seg = matfile.numeric_array(matfile.struct_field(variables["GTcls"], "Segmentation"))
    except matfile.HDF5MatError:
        raise Rejected(
            CORRUPT_MASK, f"{path}: MATLAB v7.3 (HDF5) files are not SBD's format; " "re-save with -v7"
        ) from None
    except matfile.MatError as e:
        raise Rejected(CORRUPT_MASK, f"{path}: cannot read MATLAB file: {e}") from None
    seg = np.squeeze(seg)  # as loadmat(squeeze_me=True) read it: [1, H, W] is [H, W]
    if seg.ndim != 2 or seg.size == 0:
        raise Rejected(CORRUPT_MASK, f"{path}: GTcls.Segmentation has shape {seg.shape}, not [H, W]")
    if np.any(seg != np.round(seg)):
        raise Rejected(INVALID_LABEL, f"{path}: GTcls.Segmentation is not integral ({seg.dtype})")
    if seg.min() < 0 or seg.max() > 255:
        raise Rejected(
            INVALID_LABEL,
            f"{path}: GTcls.Segmentation has values in " f"[{seg.min()}, {seg.max()}], outside 0-255",
        )
    ids = seg.astype(np.uint8)
    return _values_to_ids(path, ids, VOC_SPEC, INVALID_LABEL, lambda i: f"class id {i}")


def _bytes(*values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))


def _ints(*values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))


@dataclasses.dataclass(frozen=True)
class Files:
    """One id's bytes as read from storage."""

    image: bytes
    mask: bytes


@dataclasses.dataclass(frozen=True)
class Validated:
    """What validation learned about one id: its size, image format, mask ids and their histogram."""

    height: int
    width: int
    ids: np.ndarray  # [H, W] uint8 class ids, 255 void
    counts: np.ndarray  # pixels per id 0-255
    image_format: bytes  # the value of image/format
    spec: DatasetSpec  # the dataset it was checked against: classes and palette


def read(item: WorkItem) -> Files:
    """Stage 1 of 3: the image and mask bytes."""
    return Files(read_file(item.image_path), read_file(item.mask_path))


def _decode_files(item: WorkItem, files: Files, spec: DatasetSpec) -> tuple:
    """``(height, width, image format, ids, counts)``: VOC's JPEGs with its palette PNGs or SBD's
    ``.mat`` files, or a folders dataset's JPEG or PNG images with masks as ``spec`` encodes them."""
    if spec.layout == dataset_spec.VOC:
        height, width = inspect_jpeg(item.image_path, files.image)
        decode = decode_voc_mask if item.source == features.SOURCE_VOC else decode_sbd_mask
        return (height, width, "JPEG", *decode(item.mask_path, files.mask))
    height, width, image_format = inspect_image(item.image_path, files.image)
    return (height, width, image_format, *decode_mask(item.mask_path, files.mask, spec))


def validate(item: WorkItem, files: Files, spec: DatasetSpec) -> Validated:
    """Stage 2 of 3: decodes both files and checks them against each other and the classes."""
    height, width, image_format, ids, counts = _decode_files(item, files, spec)
    if ids.shape != (height, width):
        raise Rejected(
            SIZE_MISMATCH,
            f"{item.mask_path}: mask is {ids.shape[1]}x{ids.shape[0]} but image "
            f"{item.image_path} is {width}x{height} (width x height)",
        )
    return Validated(height, width, ids, counts, IMAGE_FORMATS[image_format], spec)


def encode(item: WorkItem, files: Files, checked: Validated) -> tf.train.Example:
    """Stage 3 of 3: packs the tf.Example, with the mask re-encoded by ``palette.encode_palette_png``
    in the palette of the spec it was checked against (``DatasetSpec.palette()``; VOC's colour
    map for VOC).

    Every mask is stored in that one encoding, never as the source file carried it: a VOC
    palette PNG may also carry a tRNS chunk, and Transform, which decodes masks to RGBA, would
    then read its translucent classes as off-palette (void) while ``present`` still lists them;
    a grey, trimap or RGB mask holds values, not class ids. What is stored is exactly
    ``checked.ids``, which ``present`` is counted from. The cost, measured on 102 generated
    VOC-sized masks: ``build_example`` of a VOC id went from 2.7 to 4.3 ms (SBD masks were
    always re-encoded).
    """
    table = _tables(checked.spec)
    png = palette.encode_palette_png(checked.ids, table.palette)
    # The background class is never a slice (nearly every image has it): the present classes
    # are the others (VOC: 1 to 20).
    present = [c for c in table.foreground if checked.counts[c]]
    return tf.train.Example(
        features=tf.train.Features(
            feature={
                features.IMAGE_KEY: _bytes(files.image),
                features.IMAGE_FORMAT_KEY: _bytes(checked.image_format),
                features.FILENAME_KEY: _bytes(item.image_id.encode()),
                features.HEIGHT_KEY: _ints(checked.height),
                features.WIDTH_KEY: _ints(checked.width),
                features.SOURCE_KEY: _bytes(item.source.encode()),
                features.MASK_KEY: _bytes(png),
                features.MASK_FORMAT_KEY: _bytes(features.MASK_FORMAT),
                features.CLASSES_PRESENT_KEY: _ints(*present),
            }
        )
    )


def build_record(item: WorkItem, spec: DatasetSpec) -> tuple:
    """Reads, validates and packs one id of the dataset ``spec`` describes: ``(tf.Example,
    pixels of its mask per class id 0-255)``, 255 the ignored. Raises ``Rejected`` with the
    reason otherwise.

    The histogram is the one validation counted anyway, so ingestion's pixels per class cost no
    second pass over the mask. The three stages are separate functions so that
    benchmarks/ingest_throughput.py can say where ingestion's time goes.
    """
    files = read(item)
    checked = validate(item, files, spec)
    return encode(item, files, checked), checked.counts


def build_example(item: WorkItem, spec: DatasetSpec) -> tf.train.Example:
    """``build_record``'s tf.Example alone."""
    return build_record(item, spec)[0]
