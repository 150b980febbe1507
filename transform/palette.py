"""Mask colours: rendering class ids in a dataset's palette, and the VOC colour map's inverse.

``colorize`` and ``overlay`` draw class ids in the ``[256, 3]`` palette of a dataset spec
(``DatasetSpec.palette()``: its classes' colours, its ignore colour at 255), so a report or a
predicted mask shows each dataset in its own colours.

VOC stores segmentation masks as palette PNGs whose colour for class ``c`` is built by
spreading the bits of ``c`` over the high bits of R, G and B (``dataset_spec.voc_colormap``).
The inverse, for VOC masks that come as RGB colours, is a 41-entry hash table
(``COLOR_TABLE``) that ingestion uses. Ingestion stores every mask as a palette PNG whose
indices are the class ids, so Transform reads indices, not colours (``GREY_RAMP_PLTE``).
"""

import struct
import zlib
from typing import Optional

import numpy as np

from core import dataset_spec, features

# VOC's colour map (``dataset_spec.voc_colormap``): the palette VOC's masks come in, and the one
# ``COLOR_TABLE`` inverts for VOC masks saved as RGB.
VOC_COLORMAP = dataset_spec.voc_colormap()
# The colours a valid VOC mask may contain: VOC's classes and the void label.
VALID_INDICES = tuple(range(dataset_spec.VOC_SPEC.num_classes)) + (features.IGNORE_LABEL,)


def flat_palette() -> list:
    """The colour map as the flat ``[r0, g0, b0, r1, ...]`` list PIL's ``putpalette`` takes."""
    return VOC_COLORMAP.reshape(-1).tolist()


def pack_rgba(rgb: np.ndarray) -> np.ndarray:
    """``[..., 3]`` uint8 colours -> ``[...]`` int32, as a little-endian ``bitcast`` of opaque RGBA.

    ``r | g << 8 | b << 16 | 0xFF << 24``: what TF gets for free by decoding a PNG to RGBA and
    bitcasting each pixel's 4 bytes to one int32 (x86 and ARM are little-endian).
    """
    rgb = rgb.astype(np.uint32)
    return (rgb[..., 0] | rgb[..., 1] << 8 | rgb[..., 2] << 16 | np.uint32(0xFF) << 24).view(np.int32)


def _color_table() -> tuple:
    """``(modulus, table)``: the inverse colour map as a 1 KB hash table.

    A packed pixel ``v`` (``pack_rgba``) is looked up at ``v mod modulus``; a valid colour's slot
    holds ``colour ^ index``, so ``table[v mod modulus] ^ v`` *is* the index (0-20 or 255) for
    the 22 valid colours and above 255 for every other colour. ``modulus`` is the smallest
    above 255 that gives the valid colours distinct slots: above 255, no colour that shares a
    valid colour's G and B can land in its slot, which is the only way an XOR could come out
    below 256 (checked over all 2^24 colours, here and in Transform's TF graph, by the tests).
    Empty slots hold 0, giving ``x = v >= 2^24``. Replaces the 64 MB 256^3 table of the seed
    tutorials.
    """
    colors = pack_rgba(VOC_COLORMAP[list(VALID_INDICES)])
    modulus = next(m for m in range(256, 1 << 16) if len(set(np.mod(colors, m).tolist())) == len(colors))
    table = np.zeros(modulus, np.int32)
    for index, color in zip(VALID_INDICES, colors, strict=False):
        table[np.mod(color, modulus)] = color ^ np.int32(index)
    return modulus, table


COLOR_MODULUS, COLOR_TABLE = _color_table()
# Codes of ``color_codes``: the index for valid colours, OFF_PALETTE for any other colour.
OFF_PALETTE = 256


def color_codes(packed: np.ndarray) -> np.ndarray:
    """Packed colours (``pack_rgba``) -> uint32 codes: 0-20, 255 (void) or ``OFF_PALETTE``."""
    x = (COLOR_TABLE[np.mod(packed, COLOR_MODULUS)] ^ packed).view(np.uint32)
    return np.minimum(x, OFF_PALETTE)


# Where ingestion's canonical mask PNG (``encode_palette_png``) has its bit depth and colour
# type (in IHDR, right after the 8-byte signature) and its PLTE chunk (right after IHDR).
IHDR_DEPTH_AND_COLOUR_TYPE = (8 + 16, b"\x08\x03")  # 8 bits per pixel, palette
CANONICAL_PLTE_OFFSET = 8 + 25


def _grey_ramp_plte() -> bytes:
    """A whole PLTE chunk (length, type, data, CRC) of 256 colours, entry i = (i, i, i).

    Put in place of an 8-bit palette PNG's own PLTE, it makes ``decode_png(channels=1)`` return
    each pixel's palette index: libpng expands an index to its entry's colour, and turns a
    colour with equal R, G and B into that value exactly. Always 256 entries, whatever the
    length of the PLTE it replaces: an index beyond a shorter palette decodes to itself (and
    is seen as no class) where the PNG's own palette would give black, i.e. background.
    """
    data = b"PLTE" + bytes(np.repeat(np.arange(256, dtype=np.uint8), 3))
    return struct.pack(">I", len(data) - 4) + data + struct.pack(">I", zlib.crc32(data))


GREY_RAMP_PLTE = _grey_ramp_plte()


def colors_to_ids(rgb: np.ndarray) -> tuple:
    """Inverts the colour map: ``(ids [...] uint8, is_valid [...] bool)``; ids are 255 where invalid."""
    codes = color_codes(pack_rgba(rgb))
    valid = codes != OFF_PALETTE
    return np.minimum(codes, 255).astype(np.uint8), valid


def _palette(palette: np.ndarray) -> np.ndarray:
    palette = np.asarray(palette)
    if palette.shape != (256, 3) or palette.dtype != np.uint8:
        raise ValueError(
            f"palette must be [256, 3] uint8 (DatasetSpec.palette()), got {palette.shape} {palette.dtype}"
        )
    return palette


def colorize(ids: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Class ids ``[H, W]`` -> ``[H, W, 3]`` uint8 in ``palette`` (``DatasetSpec.palette()``)."""
    return _palette(palette)[ids.astype(np.uint8)]


def overlay(
    image: np.ndarray, ids: np.ndarray, palette: np.ndarray, alpha: float = 0.5, *, background: Optional[int]
) -> np.ndarray:
    """Blends the class colours of ``palette`` into ``image`` ``[H, W, 3]``; the ``background``
    class (``DatasetSpec.background_id``; None: the dataset has none, every class is painted) and
    ignored pixels stay as they are, so the objects stand out. ``background`` is keyword-only and
    required: a call written before it existed (``overlay(image, ids, palette, 0.3)``) keeps its
    ``alpha`` and fails, rather than taking 0.3 for a class id."""
    blended = (1 - alpha) * image.astype(np.float32) + alpha * colorize(ids, palette).astype(np.float32)
    keep = ids == features.IGNORE_LABEL
    if background is not None:
        keep |= ids == background
    return np.where(keep[..., None], image, blended.astype(np.uint8))


def encode_palette_png(ids: np.ndarray, palette: np.ndarray = None, text: Optional[dict] = None) -> bytes:
    """Class ids ``[H, W]`` as a palette PNG in ``palette`` (``[256, 3]`` uint8, a dataset spec's
    ``palette()``; default the VOC colours, the format VOC ships masks in).

    The one encoding ingestion stores every mask in: IHDR, a 256-colour PLTE, IDAT and IEND
    only. No tRNS above all, since Transform decodes masks to RGBA and reads a colour with
    alpha below 255 as off-palette (void). ``text`` adds ``tEXt`` chunks (``{keyword: value}``;
    batch inference names the model that drew the mask), which every PNG reader skips or shows.
    """
    import io

    from PIL import Image, PngImagePlugin

    img = Image.fromarray(ids.astype(np.uint8), mode="P")
    img.putpalette(flat_palette() if palette is None else np.asarray(palette, np.uint8).reshape(-1).tolist())
    info = None
    if text:
        info = PngImagePlugin.PngInfo()
        for keyword, value in text.items():
            info.add_text(keyword, value)
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


# JPEG quality of the overlays people look at (predictions, batch inference).
OVERLAY_JPEG_QUALITY = 90


def overlay_jpeg(
    image_bytes: bytes, ids: np.ndarray, palette: np.ndarray, *, background: Optional[int], comment: str = ""
) -> bytes:
    """``overlay`` of an encoded image (any format PIL reads) and its class ids, as a JPEG with
    ``comment`` (a COM segment) when given."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(image_bytes)) as img:
        image = np.asarray(img.convert("RGB"))
    out = io.BytesIO()
    extra = {"comment": comment.encode()} if comment else {}
    Image.fromarray(overlay(image, ids, palette, background=background)).save(
        out, format="JPEG", quality=OVERLAY_JPEG_QUALITY, **extra
    )
    return out.getvalue()
