"""Batch inference: images per second per core of ``deeplab-tfx infer`` against the two ways a user
would otherwise segment an archive, on the same images, in one run.

- ``loop``: ``serving_default`` called in a Python loop, one image per call, each mask written as
  its palette PNG: what a script around the SavedModel does (loading the model included).
- ``grpc``: ``deeplab-tfx serve`` (its own process, started and warmed before: its start-up,
  recorded as ``server_start_s``, is not in its figure) and the official gRPC stub, 8 images per
  request (``deeplab-tfx predict``'s default), each mask written as its palette PNG.
- ``beam_in_memory`` and ``beam_multi_processing``: the Beam job (``inference/job.py``) on
  DirectRunner, in this process and on one worker process per core, writing masks, the manifest
  and the dead letter into a fresh directory; start-up (worker processes, loading the model once
  per worker) included, as a user pays it.

The methods take turns, ``--rounds`` times, and each figure is the median of its rounds: load on a
shared machine comes and goes, and a method measured in one block would pay for a burst the others
escaped. "Per core" divides by the cores this process may use (every method spreads over all of
them: TensorFlow's thread pools, Beam's workers). Every method's masks are checked identical.

    python -m benchmarks.batch_inference [--images 600] [--rounds 3] [--model-base-path DIR]
"""

import glob
import os
import shutil
import statistics
import tempfile
import time

import apache_beam as beam
import numpy as np
import tensorflow as tf
from apache_beam.options.pipeline_options import PipelineOptions
from PIL import Image

from benchmarks import fixtures, results_io, serving_latency
from core import config as config_lib
from core import storage
from core.signatures import SERVING_DEFAULT, crop_masks
from inference import job
from inference import model as model_lib
from serving import client
from transform import palette


def _write_mask(out_dir: str, path: str, mask: np.ndarray, colours: np.ndarray) -> None:
    os.makedirs(out_dir, exist_ok=True)
    name = os.path.splitext(os.path.basename(path))[0]
    storage.write_file(os.path.join(out_dir, f"{name}.png"), palette.encode_palette_png(mask, colours))


def run_loop(ref: model_lib.ModelRef, paths: list, out_dir: str) -> None:
    signature = tf.saved_model.load(ref.path).signatures[SERVING_DEFAULT]
    colours = ref.dataset.palette()
    for path in paths:
        [mask] = crop_masks(signature(images=tf.constant([storage.read_file(path)])))
        _write_mask(out_dir, path, mask, colours)


def run_grpc(ref: model_lib.ModelRef, paths: list, out_dir: str, address: str, batch: int = 8) -> None:
    grpc_client = client.GrpcClient(address, "deeplab")
    colours = ref.dataset.palette()
    try:
        for start in range(0, len(paths), batch):
            chunk = paths[start : start + batch]
            _, masks = grpc_client.predict([storage.read_file(p) for p in chunk])
            for path, mask in zip(chunk, masks, strict=True):
                _write_mask(out_dir, path, mask, colours)
    finally:
        grpc_client.close()


def run_beam(ref: model_lib.ModelRef, folder: str, out_dir: str, mode: str, workers: int) -> float:
    """The job on DirectRunner in ``mode``; returns its images per model call."""
    # The Beam arguments ``deeplab-tfx infer --direct-running-mode <mode>`` runs with.
    overrides = [f"beam.direct_running_mode={mode}", f"beam.direct_num_workers={workers}"]
    args = config_lib.load_config("tiny", overrides).beam_pipeline_args(tfx=False)
    summary = job.run(lambda: beam.Pipeline(options=PipelineOptions(args)), [folder], out_dir, ref)
    assert summary["rejected"] == 0, summary
    return summary["written"] / summary["batches"]


def masks_of(out_dir: str) -> dict:
    """``{name: class ids}`` of every palette PNG under ``out_dir``."""
    found = {}
    for path in glob.glob(os.path.join(out_dir, "**", "*.png"), recursive=True):
        with Image.open(path) as png:
            found[os.path.splitext(os.path.basename(path))[0]] = np.asarray(png)
    return found


def main():
    p = results_io.parser(__doc__, "batch_inference")
    p.add_argument("--images", type=int, default=600, help="VOC-sized JPEGs of the generated dataset")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--model-base-path", help="a pushed model's base path (default: the tiny config's, untrained)"
    )
    args = p.parse_args()
    base = args.model_base_path or fixtures.served_model()
    ref = model_lib.resolve(base)
    jpegs = sorted(
        glob.glob(os.path.join(fixtures.dataset(600), "**", "JPEGImages", "*.jpg"), recursive=True)
    )
    work = tempfile.mkdtemp(prefix="batch_inference_")
    folder = os.path.join(work, "images")
    os.makedirs(folder)
    for path in jpegs[: args.images]:
        shutil.copy(path, folder)
    paths = sorted(glob.glob(os.path.join(folder, "*.jpg")))
    pixels = 0
    for path in paths:
        with Image.open(path) as image:
            pixels += image.size[0] * image.size[1]
    cores = len(os.sched_getaffinity(0))
    start = time.perf_counter()
    proc, address = serving_latency.start_server(base, "deeplab")  # up once the model is loaded
    server_start_s = time.perf_counter() - start
    methods = {
        "loop": lambda out: run_loop(ref, paths, out),
        "grpc": lambda out: run_grpc(ref, paths, out, address),
        "beam_in_memory": lambda out: run_beam(ref, folder, out, "in_memory", 1),
        "beam_multi_processing": lambda out: run_beam(ref, folder, out, "multi_processing", cores),
    }
    seconds = {name: [] for name in methods}
    per_call = {"loop": [1.0], "grpc": [8.0], "beam_in_memory": [], "beam_multi_processing": []}
    reference = None
    try:
        run_grpc(ref, paths[:8], os.path.join(work, "warm"), address)  # the server's first requests
        for round_ in range(args.rounds):
            for name, method in methods.items():
                out = os.path.join(work, f"{name}_{round_}")
                start = time.perf_counter()
                images_per_call = method(out)
                seconds[name].append(time.perf_counter() - start)
                if images_per_call:
                    per_call[name].append(images_per_call)
                masks = masks_of(os.path.join(out, job.MASKS_DIR) if name.startswith("beam") else out)
                reference = reference or masks
                assert masks.keys() == reference.keys() and all(
                    np.array_equal(masks[k], reference[k]) for k in masks
                ), f"{name}'s masks differ"
                shutil.rmtree(out)
                print(f"batch_inference: round {round_ + 1}, {name}: {seconds[name][-1]:.1f} s", flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        shutil.rmtree(work, ignore_errors=True)
    figures = {}
    for name, times in seconds.items():
        median = statistics.median(times)
        figures[name] = {
            "seconds": [round(t, 2) for t in times],
            "images_per_s": len(paths) / median,
            "images_per_s_per_core": len(paths) / median / cores,
            "images_per_model_call": statistics.median(per_call[name]),
        }
    ratios = {
        name: figures[name]["images_per_s"] / figures["loop"]["images_per_s"]
        for name in methods
        if name != "loop"
    }
    result = results_io.save(
        args.out, "batch_inference", images=len(paths), megapixels=round(pixels / 1e6, 2), cores=cores,
        rounds=args.rounds, model_version=ref.version, server_start_s=round(server_start_s, 1),
        figures=figures, ratio_to_loop=ratios,
    )  # fmt: skip
    print(
        "batch_inference: images/s per core: "
        + ", ".join(f"{name} {f['images_per_s_per_core']:.2f}" for name, f in figures.items())
    )
    return result


if __name__ == "__main__":
    main()
