"""Ingestion throughput: VocExampleGen's Beam job vs reading the same files, in one run.

Writes benchmarks/results/ingest_throughput.json and prints one line. The yardstick is the
least any ingestion must do: read every listed file and parse the JPEG/PNG headers (and load
the .mat) in one Python process. Ratios against it, measured minutes apart on the same
machine, are what to compare across machines; absolute images/s move with the machine's load.

    python -m benchmarks.ingest_throughput --num-images 500
"""

import io
import os
import tempfile
import time

import apache_beam as beam
import scipy.io
from apache_beam.options.pipeline_options import PipelineOptions
from PIL import Image

from benchmarks import results_io
from components.voc_example_gen import beam_ingest, sources
from datasets import synthetic_voc


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


def beam_run(root: str, out: str, mode: str) -> float:
    args = ["--runner=DirectRunner", f"--direct_running_mode={mode}", "--direct_num_workers=0"]
    summary = beam_ingest.run(
        lambda: beam.Pipeline(options=PipelineOptions(args)),
        root,
        root,
        os.path.join(out, "examples"),
        os.path.join(out, "rejected"),
    )
    assert not summary.rejected
    return summary.seconds


def main() -> None:
    parser = results_io.parser(__doc__, "ingest_throughput")
    parser.add_argument("--num-images", type=int, default=500)
    parser.add_argument("--max-side", type=int, default=500, help="VOC-sized images by default")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "data")
        synthetic_voc.make_dataset(root, args.num_images, seed=0, max_side=args.max_side)
        listed = len(sources.plan_items(root, root))
        yardstick(root)  # warm the page cache so every contender reads from memory
        seconds = {"yardstick_read_and_parse_headers": yardstick(root)}
        for mode in ("in_memory", "multi_processing"):
            seconds[f"beam_{mode}"] = beam_run(root, os.path.join(tmp, mode), mode)

    base = seconds["yardstick_read_and_parse_headers"]
    result = results_io.save(
        args.out,
        "ingest_throughput",
        dataset={"generated_images": args.num_images, "listed_ids": listed, "max_side": args.max_side},
        seconds={k: round(v, 3) for k, v in seconds.items()},
        images_per_second={k: round(listed / v, 1) for k, v in seconds.items()},
        ratio_to_yardstick={k: round(v / base, 2) for k, v in seconds.items()},
    )
    ips = result["images_per_second"]
    print(
        f"ingest_throughput: {listed} ids; images/s yardstick {ips['yardstick_read_and_parse_headers']}, "
        f"beam in_memory {ips['beam_in_memory']}, multi_processing {ips['beam_multi_processing']}"
    )


if __name__ == "__main__":
    main()
