"""Ingestion throughput: SegmentationExampleGen's Beam job vs reading the same files, in one run.

Writes benchmarks/results/ingest_throughput.json and prints one line. The yardstick is the
least any ingestion must do: read every listed file and parse the JPEG/PNG headers (and load
the .mat) in one Python process. Ratios against it, measured minutes apart on the same
machine, are what to compare across machines; absolute images/s move with the machine's load.

Where the time goes: the same ids go through ``records.read``, ``records.validate`` and
``records.encode`` one after another in this process, and the serialized examples through a
gzipped TFRecord writer, each stage timed on its own; Beam's in-memory run against their sum
says what Beam itself adds (bundling, the reshuffle, counters, sharded writes).

    python -m benchmarks.ingest_throughput --num-images 1000
"""

import collections
import io
import os
import tempfile
import time

import apache_beam as beam
import scipy.io
import tensorflow as tf
from apache_beam.options.pipeline_options import PipelineOptions
from PIL import Image

from benchmarks import fixtures, results_io
from components.segmentation_example_gen import beam_ingest, records, sources
from core.dataset_spec import VOC_SPEC


def yardstick(root: str) -> float:
    """Seconds to read every listed file and parse its header, in one process."""
    start = time.perf_counter()
    for item in sources.plan_items(root, root):
        with open(item.image_path, "rb") as f:
            Image.open(io.BytesIO(f.read())).size  # noqa: B018 - parses the header
        with open(item.mask_path, "rb") as f:
            data = f.read()
        if item.mask_path.endswith(".png"):
            Image.open(io.BytesIO(data)).size  # noqa: B018
        else:
            scipy.io.whosmat(io.BytesIO(data))
    return time.perf_counter() - start


def stage_split(root: str, out: str) -> dict:
    """Seconds spent reading, validating, encoding and writing every listed id, in one process."""
    seconds = collections.Counter()
    by_split = collections.defaultdict(list)
    for item in sources.plan_items(root, root):
        start = time.perf_counter()
        files = records.read(item)
        read = time.perf_counter()
        checked = records.validate(item, files, VOC_SPEC)
        validated = time.perf_counter()
        by_split[item.split].append(records.encode(item, files, checked).SerializeToString())
        encoded = time.perf_counter()
        seconds["reading"] += read - start
        seconds["validating"] += validated - read
        seconds["encoding"] += encoded - validated
    start = time.perf_counter()
    for split, serialized in by_split.items():
        path = os.path.join(out, f"{split}.tfrecord.gz")
        with tf.io.TFRecordWriter(path, tf.io.TFRecordOptions(compression_type="GZIP")) as writer:
            for record in serialized:
                writer.write(record)
    seconds["writing"] = time.perf_counter() - start
    return dict(seconds)


def beam_run(root: str, out: str, mode: str) -> float:
    args = ["--runner=DirectRunner", f"--direct_running_mode={mode}", "--direct_num_workers=0"]
    summary = beam_ingest.run(
        lambda: beam.Pipeline(options=PipelineOptions(args)),
        root,
        root,
        os.path.join(out, "examples"),
        os.path.join(out, "rejected"),
        dataset=VOC_SPEC,
    )
    assert not summary.rejected
    return summary.seconds


def main() -> None:
    parser = results_io.parser(__doc__, "ingest_throughput")
    parser.add_argument("--num-images", type=int, default=1000)
    parser.add_argument("--max-side", type=int, default=500, help="VOC-sized images by default")
    args = parser.parse_args()

    # A subset of the 2,000-image dataset that benchmarks/scaling.py also reads (made once).
    root = fixtures.subset(fixtures.dataset(max(args.num_images, 2000), args.max_side), args.num_images)
    listed = len(sources.plan_items(root, root))
    with tempfile.TemporaryDirectory() as tmp:
        yardstick(root)  # warm the page cache so every contender reads from memory
        seconds = {"yardstick_read_and_parse_headers": yardstick(root)}
        for mode in ("in_memory", "multi_processing"):
            seconds[f"beam_{mode}"] = beam_run(root, os.path.join(tmp, mode), mode)
        stages = stage_split(root, tmp)

    base = seconds["yardstick_read_and_parse_headers"]
    total = sum(stages.values())
    result = results_io.save(
        args.out,
        "ingest_throughput",
        dataset={"listed_ids": listed, "max_side": args.max_side},
        seconds={k: round(v, 3) for k, v in seconds.items()},
        images_per_second={k: round(listed / v, 1) for k, v in seconds.items()},
        ratio_to_yardstick={k: round(v / base, 2) for k, v in seconds.items()},
        stage_seconds={k: round(v, 3) for k, v in stages.items()},
        stage_share={k: round(v / total, 3) for k, v in stages.items()},
        # Above 1: Beam's own work (bundles, reshuffle, counters, sharded writes) on top.
        beam_in_memory_to_stage_sum=round(seconds["beam_in_memory"] / total, 2),
    )
    ips, share = result["images_per_second"], result["stage_share"]
    print(
        f"ingest_throughput: {listed} ids; images/s yardstick {ips['yardstick_read_and_parse_headers']}, "
        f"beam in_memory {ips['beam_in_memory']}, multi_processing {ips['beam_multi_processing']}; stages: "
        + ", ".join(f"{k} {100 * v:.0f}%" for k, v in share.items())
        + f"; Beam in_memory = {result['beam_in_memory_to_stage_sum']}x their sum"
    )


if __name__ == "__main__":
    main()
