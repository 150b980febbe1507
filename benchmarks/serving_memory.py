"""Serving memory: peak RSS per megapixel of ``serving_default``, the class ids made a map at a
time against all N maps at once, in one run.

The tiny config's model (VOC's 21 classes, 128 px) is exported twice in this run: as the code
exports it (``trainer/export.py``: ``class_ids_at`` resizes all N maps at once only while they
take at most ``ALL_CLASSES_BYTES``, else one class's map at a time), and as the baseline,
exported with ``ALL_CLASSES_BYTES`` beyond any image, so that every image takes the single
resize of all N maps and ``tf.argmax``: what serving_default did before. Each (export, image)
pair runs in a fresh process: the SavedModel loaded, one call on a 64x64 image (what is loaded
and traced), then the image; its peak RSS is the process's (``peak_rss_kb``), and what the image
added is that peak less the peak after the 64x64 call, per megapixel of the image.
Images: VOC's 500x375 and 1, 4 and 16 MP JPEGs (16 MP is inside the 25 MP guard). The masks of
the two exports are asserted identical, pixel for pixel. Time: the median of the image's calls
in those processes (``--calls`` for the largest, more for the small ones). The exports take
turns, ``--rounds`` processes each per image: load on a shared machine comes and goes.

    python -m benchmarks.serving_memory [--calls 3] [--rounds 2]
"""

import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

from benchmarks import fixtures, results_io

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (name, height, width): VOC's commonest size, then 1, 4 and 16 megapixels.
SIZES = (("voc_500x375", 375, 500), ("1mp", 1000, 1000), ("4mp", 2000, 2000), ("16mp", 4000, 4000))
VARIANTS = ("all_maps", "map_at_a_time")  # the baseline first
IMAGE_SIZE = 128


def jpeg(height: int, width: int, seed: int = 0) -> bytes:
    """A photo-like JPEG: gradients, and blocks of colour for the model to tell apart."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], -1).astype(np.uint8)
    for _ in range(8):
        top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
        image[top : top + height // 3, left : left + width // 3] = rng.integers(0, 256, 3)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def export_variants(out: str, all_classes_bytes: dict) -> dict:
    """``{variant: SavedModel dir}``: the tiny config's fresh model, exported once per
    ``{variant: ALL_CLASSES_BYTES}``."""
    from core import config as config_lib
    from core import dataset_spec
    from trainer import export, training

    _, tft_output = fixtures.analyzed(60, IMAGE_SIZE)
    net = training.build_model(
        config_lib.load_config("tiny").trainer, IMAGE_SIZE, replicas=1, images_normalized=False,
        num_classes=dataset_spec.VOC_SPEC.num_classes,
    )  # fmt: skip
    paths = {}
    default = export.ALL_CLASSES_BYTES
    for variant, budget in all_classes_bytes.items():
        paths[variant] = os.path.join(out, variant)
        # Read when the signatures are traced, so this export's graph has it.
        export.ALL_CLASSES_BYTES = budget
        try:
            export.export(net, tft_output, paths[variant], dataset_spec.VOC_SPEC)
        finally:
            export.ALL_CLASSES_BYTES = default
    return paths


def peak_rss_kb() -> int:
    """This process's peak resident set (KB): Linux's ``VmHWM``, which ``execve`` starts afresh.
    Not ``ru_maxrss``: Linux keeps it across ``fork`` and ``execve``, so a child started by a
    parent of 2 GB (this script, after exporting) reads 2 GB before it has done anything."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # not Linux: an upper bound


def child(model_dir: str, image_path: str, calls: int, mask_path: str) -> None:
    """In a fresh process: load, call on 64x64, then ``calls`` times on the image; print figures."""
    import tensorflow as tf

    from core.signatures import SERVING_DEFAULT, crop_masks

    signature = tf.saved_model.load(model_dir).signatures[SERVING_DEFAULT]
    signature(images=tf.constant([jpeg(64, 64)]))
    loaded_kb = peak_rss_kb()
    images = tf.constant([open(image_path, "rb").read()])
    seconds = []
    for _ in range(calls):
        start = time.perf_counter()
        outputs = signature(images=images)
        seconds.append(time.perf_counter() - start)
    np.save(mask_path, crop_masks(outputs)[0])
    peak_kb = peak_rss_kb()
    print(json.dumps({"loaded_kb": loaded_kb, "peak_kb": peak_kb, "seconds": seconds}))


def measure(model_dir: str, image_path: str, calls: int, mask_path: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.serving_memory", "--child", model_dir, image_path, str(calls),
         mask_path],
        cwd=ROOT, check=True, capture_output=True, text=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    if sys.argv[1:2] == ["--child"]:
        model_dir, image_path, calls, mask_path = sys.argv[2:6]
        return child(model_dir, image_path, int(calls), mask_path)
    from core.dataset_spec import VOC_SPEC
    from trainer import export

    p = results_io.parser(__doc__, "serving_memory")
    p.add_argument("--calls", type=int, default=3, help="calls on the 16 MP image (more on smaller ones)")
    p.add_argument("--rounds", type=int, default=2, help="fresh processes per export and image, taking turns")
    args = p.parse_args()
    figures = {variant: {} for variant in VARIANTS}
    with tempfile.TemporaryDirectory() as work:
        # The baseline: a budget beyond any image, so every one takes all N maps at once.
        budgets = {"all_maps": 1 << 62, "map_at_a_time": export.ALL_CLASSES_BYTES}
        models = export_variants(os.path.join(work, "models"), budgets)
        for name, height, width in SIZES:
            image_path = os.path.join(work, f"{name}.jpg")
            with open(image_path, "wb") as f:
                f.write(jpeg(height, width))
            megapixels = height * width / 1e6
            calls = max(args.calls, min(20, round(args.calls * 16 / megapixels)))
            runs = {variant: [] for variant in VARIANTS}
            for turn in range(args.rounds):  # the exports take turns: load on a shared machine comes and goes
                for variant in VARIANTS[:: 1 if turn % 2 == 0 else -1]:
                    mask_path = os.path.join(work, f"{variant}_{name}.npy")
                    runs[variant].append(measure(models[variant], image_path, calls, mask_path))
            masks = {variant: np.load(os.path.join(work, f"{variant}_{name}.npy")) for variant in VARIANTS}
            for variant, got in runs.items():
                # The highest of the rounds' peaks (they differ by a few MB), the median of all calls.
                peak_kb = max(run["peak_kb"] for run in got)
                loaded_kb = max(run["loaded_kb"] for run in got)
                added_mb = (peak_kb - loaded_kb) / 1024
                figures[variant][name] = {
                    "megapixels": megapixels,
                    "calls": calls * args.rounds,
                    "median_ms": 1000 * statistics.median(s for run in got for s in run["seconds"]),
                    "peak_rss_mb": peak_kb / 1024,
                    "loaded_rss_mb": loaded_kb / 1024,
                    "added_rss_mb": added_mb,
                    "added_rss_mb_per_megapixel": added_mb / megapixels,
                }
                print(f"{variant} {name}: {figures[variant][name]}", file=sys.stderr, flush=True)
            assert masks["all_maps"].shape == (height, width), masks["all_maps"].shape
            np.testing.assert_array_equal(masks["map_at_a_time"], masks["all_maps"], err_msg=name)
            assert len(np.unique(masks["map_at_a_time"])) > 1, "masks of one class would prove little"
    new, old = figures["map_at_a_time"], figures["all_maps"]
    ratios = {
        name: {
            "peak_rss": new[name]["peak_rss_mb"] / old[name]["peak_rss_mb"],
            # None where the image added nothing to the peak of loading and a first call.
            "added_rss": (new[name]["added_rss_mb"] / old[name]["added_rss_mb"])
            if old[name]["added_rss_mb"]
            else None,
            "median_ms": new[name]["median_ms"] / old[name]["median_ms"],
        }
        for name, _, _ in SIZES
    }
    result = results_io.save(
        args.out, "serving_memory", classes=VOC_SPEC.num_classes, image_size=IMAGE_SIZE,
        all_classes_bytes=export.ALL_CLASSES_BYTES, rounds=args.rounds,
        sizes={n: [h, w] for n, h, w in SIZES}, figures=figures, ratio_to_all_maps=ratios,
        masks_identical=True,
    )  # fmt: skip
    before, after = old["16mp"], new["16mp"]
    print(
        f"serving_memory: 16 MP adds {before['added_rss_mb_per_megapixel']:.0f} MB/MP with all "
        f"{VOC_SPEC.num_classes} maps at once, {after['added_rss_mb_per_megapixel']:.0f} MB/MP a map at a "
        f"time; {after['median_ms']:.0f} ms vs {before['median_ms']:.0f} ms; 500x375: "
        f"{new['voc_500x375']['median_ms']:.1f} ms vs {old['voc_500x375']['median_ms']:.1f} ms; "
        "masks identical"
    )
    return result


if __name__ == "__main__":
    main()
