"""The Pascal VOC colour map and its inverse.

VOC stores segmentation masks as palette PNGs whose colour for class ``c`` is built by spreading
the bits of ``c`` over the high bits of R, G and B (bit 0 -> R, bit 1 -> G, bit 2 -> B, then
the next three bits one position lower, and so on). Because that construction is a bijection
between an 8-bit index and a colour, the inverse needs no 256^3 lookup table: gather the bits
back (``colors_to_indices``). Both directions are plain integer arithmetic, so they run the same
in numpy (ingestion, tests) and in TensorFlow (Transform, serving).
"""

import numpy as np

from pipeline import features


def _bit(value, position):
    return (value >> position) & 1


def colormap(size: int = 256) -> np.ndarray:
    """Returns the VOC colour map as a ``[size, 3]`` uint8 array (index -> RGB)."""
    cmap = np.zeros((size, 3), dtype=np.uint8)
    for index in range(size):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= _bit(c, 0) << shift
            g |= _bit(c, 1) << shift
            b |= _bit(c, 2) << shift
            c >>= 3
        cmap[index] = (r, g, b)
    return cmap


VOC_COLORMAP = colormap()
# The colours a valid mask may contain: the 21 classes and the void label.
VALID_INDICES = tuple(range(features.NUM_CLASSES)) + (features.IGNORE_LABEL,)


def flat_palette() -> list:
    """The colour map as the flat ``[r0, g0, b0, r1, ...]`` list PIL's ``putpalette`` takes."""
    return VOC_COLORMAP.reshape(-1).tolist()


def colors_to_indices(rgb: np.ndarray) -> np.ndarray:
    """Inverts the colour map: ``[..., 3]`` uint8 colours -> ``[...]`` palette indices.

    Reads bit ``7 - k`` of R, G and B back into bits ``3k``, ``3k + 1``, ``3k + 2`` of the
    index. Every colour maps to *some* index in 0..511; a colour that is not in the VOC map
    (e.g. a low bit set) gives an index whose colour differs from the input, which is how
    ``is_palette_color`` detects it.
    """
    rgb = rgb.astype(np.int32)
    index = np.zeros(rgb.shape[:-1], dtype=np.int32)
    for k in range(8):
        for channel in range(3):
            index |= ((rgb[..., channel] >> (7 - k)) & 1) << (3 * k + channel)
    return index


def is_palette_color(rgb: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """True where ``rgb`` is exactly the VOC colour of ``indices`` (both from the same mask)."""
    in_range = indices < 256
    expected = VOC_COLORMAP[np.where(in_range, indices, 0)]
    return in_range & np.all(expected == rgb, axis=-1)


def encode_palette_png(ids: np.ndarray) -> bytes:
    """Class ids ``[H, W]`` as a palette PNG in the VOC colours, the format VOC ships masks in."""
    import io

    from PIL import Image

    img = Image.fromarray(ids.astype(np.uint8), mode="P")
    img.putpalette(flat_palette())
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
