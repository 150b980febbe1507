"""Palette-mask decoding in Transform: ours (by index) vs decoding by colour vs decode_png alone.

Ours (``preprocessing.mask_indices`` then ``mask_ids``) swaps the PNG's PLTE for a grey ramp and decodes one
channel: the palette index of every pixel in the decode's own pass. The others read colours:
the previous decoder (RGBA decode, 1 KB hash table, ``palette.COLOR_TABLE``) and the seed
tutorials' 256^3 table (a 16M-entry int32 lookup keyed by R*65536 + G*256 + B; its build time
is reported apart from its per-mask time). All run in one process on the same masks (stored
as ingestion stores them, ``palette.encode_palette_png``), each as a compiled ``tf.function``
over the encoded PNG bytes, so the ratios compare like with like; every decoder's ids are
checked against PIL's indices on every mask first.

    python -m benchmarks.palette_decode --num-masks 200
"""

import os
import tempfile
import time

import numpy as np
import tensorflow as tf
from PIL import Image

from benchmarks import results_io
from core import features
from core.dataset_spec import VOC_SPEC
from datasets import synthetic_voc
from transform import palette, preprocessing


def build_cube_table() -> tuple:
    """The seed tutorials' decoder: a 256^3 table from colour to class id (255 elsewhere)."""
    start = time.perf_counter()
    table = np.full(256**3, 255, np.int32)
    for index in palette.VALID_INDICES:
        r, g, b = (int(v) for v in palette.VOC_COLORMAP[index])
        table[(r << 16) | (g << 8) | b] = index
    constant = tf.constant(table)
    return constant, time.perf_counter() - start


def time_per_mask(contenders: dict, masks: list, rounds: int) -> dict:
    """ms per mask for each contender: round-robin passes, best of ``rounds`` for each.

    Interleaving the contenders means a slow spell of this noisy machine hits all of them,
    instead of whichever happened to be running.
    """
    for fn in contenders.values():  # trace and warm up
        for png in masks[:5]:
            fn(png)
    best = dict.fromkeys(contenders, float("inf"))
    for _ in range(rounds):
        for name, fn in contenders.items():
            start = time.perf_counter()
            for png in masks:
                fn(png)
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: 1000 * seconds / len(masks) for name, seconds in best.items()}


def main() -> None:
    parser = results_io.parser(__doc__, "palette_decode")
    parser.add_argument("--num-masks", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        layout = synthetic_voc.make_dataset(tmp, max(8, int(args.num_masks / 0.3) + 1), seed=0)
        folder = os.path.join(synthetic_voc.voc_dir(tmp), "SegmentationClass")
        indices = [
            np.asarray(Image.open(os.path.join(folder, f"{i}.png"))) for i in layout.voc_ids[: args.num_masks]
        ]
    masks = [tf.constant(palette.encode_palette_png(ids)) for ids in indices]

    cube, cube_build_s = build_cube_table()
    spec = [tf.TensorSpec([], tf.string)]

    @tf.function(input_signature=spec)
    def decode_png_only(png):
        return tf.io.decode_png(png, channels=3)

    @tf.function(input_signature=spec)
    def ours(png):  # class ids, 255 for anything else
        return preprocessing.mask_ids(preprocessing.mask_indices(png), VOC_SPEC.num_classes)

    @tf.function(input_signature=spec)
    def colour_table(png):  # the previous decoder: RGBA, bitcast, 1 KB hash table, XOR
        packed = tf.bitcast(tf.io.decode_png(png, channels=4), tf.int32)
        entry = tf.gather(tf.constant(palette.COLOR_TABLE), tf.math.floormod(packed, palette.COLOR_MODULUS))
        x = tf.bitcast(tf.bitwise.bitwise_xor(entry, packed), tf.uint32)
        return tf.bitcast(tf.minimum(x, tf.constant(features.IGNORE_LABEL, tf.uint32)), tf.int32)

    @tf.function(input_signature=spec)
    def ours_with_count(png):  # ...plus the off-palette pixel count
        return preprocessing.decode_mask(png, VOC_SPEC.num_classes)

    @tf.function(input_signature=spec)
    def cube_table(png):
        rgb = tf.cast(tf.io.decode_png(png, channels=3), tf.int32)
        return tf.gather(cube, rgb[..., 0] * 65536 + rgb[..., 1] * 256 + rgb[..., 2])

    # Same answers first, PIL's: the speed of a wrong decoder is no figure.
    for png, ids in zip(masks, indices, strict=True):
        for decode in (ours, colour_table, cube_table):
            np.testing.assert_array_equal(decode(png).numpy(), ids)

    ms = time_per_mask(
        {
            "decode_png_only": decode_png_only,
            "ours_by_index": ours,
            "ours_with_off_palette_count": ours_with_count,
            "previous_colour_1kb_table": colour_table,
            "cube_256^3_table": cube_table,
        },
        masks,
        args.repeats,
    )
    base = ms["decode_png_only"]
    result = results_io.save(
        args.out,
        "palette_decode",
        masks=len(masks),
        mask_size="VOC-sized, about 500x375",
        ms_per_mask={k: round(v, 3) for k, v in ms.items()},
        ratio_to_decode_png={k: round(v / base, 2) for k, v in ms.items()},
        cube_table_build_seconds=round(cube_build_s, 3),
        table_bytes={
            "ours": len(palette.GREY_RAMP_PLTE),
            "previous": int(palette.COLOR_TABLE.nbytes),
            "cube": 256**3 * 4,
        },
    )
    r = result["ratio_to_decode_png"]
    print(
        f"palette_decode: ms/mask decode_png {ms['decode_png_only']:.3f}, ours {ms['ours_by_index']:.3f} "
        f"({r['ours_by_index']}x), previous {ms['previous_colour_1kb_table']:.3f} "
        f"({r['previous_colour_1kb_table']}x), 256^3 table {ms['cube_256^3_table']:.3f} "
        f"({r['cube_256^3_table']}x); "
        f"table build {cube_build_s:.2f} s"
    )


if __name__ == "__main__":
    main()
