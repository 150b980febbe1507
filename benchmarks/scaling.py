"""Scaling: ingestion and evaluation time for 250, 500, 1000 and 2000 images, fitted to a line.

One generated dataset of VOC-sized images; each size is a nested subset of its ids (same
split and source mix). Per size, in one run:

- ingestion: SegmentationExampleGen's Beam job on the DirectRunner, in memory, against the yardstick
  of reading the files and parsing their headers. Not ``multi_processing`` (what the configs
  run): its workers' start-up (about 10 s, each imports TensorFlow; see ingest_throughput)
  varied by 5 s between runs and drowned the per-image cost of a few hundred images;
- evaluation: TFMA with the Evaluator's own EvalConfig (our VOC metrics, the three slicings)
  over every ingested example, through the served model's ``serving_examples`` signature
  (the tiny config's model; weights do not change its cost).

Every size is measured ``--rounds`` times, the sizes interleaved, and the least time kept (the
run least disturbed by the rest of the machine). ``seconds = intercept + slope x images`` is
then fitted by least squares. The growth is linear when
no size is off the line by more than 5% of its time; R^2 is reported too, but says little
when a fixed start-up cost dominates (multi_processing's workers each import TensorFlow), as
then the run-to-run noise is a large part of what varies. The slope is the marginal cost of an
image, the intercept the fixed start-up cost.

    python -m benchmarks.scaling
"""

import math
import os
import sys
import tempfile
import time

import numpy as np
import tensorflow_model_analysis as tfma

from benchmarks import fixtures, ingest_throughput, results_io
from core import config as config_lib
from core.dataset_spec import VOC_SPEC
from evaluation import eval_config as eval_config_lib

SIZES = (250, 2000, 500, 1000)  # interleaved, so drift over the run does not look like growth


def evaluate_seconds(examples_uri: str, model_dir: str, out: str) -> float:
    config = tfma.utils.update_eval_config_with_defaults(
        eval_config_lib.make_eval_config(config_lib.load_config("tiny").evaluator, VOC_SPEC),
        has_baseline=False,
        rubber_stamp=True,  # a first run without a baseline, as TFX's Evaluator treats one
    )
    start = time.perf_counter()
    tfma.run_model_analysis(
        eval_shared_model=tfma.default_eval_shared_model(model_dir, eval_config=config, rubber_stamp=True),
        eval_config=config,
        data_location=os.path.join(examples_uri, "Split-*", "*"),
        output_path=out,
    )
    return time.perf_counter() - start


def fit(sizes, seconds) -> dict:
    """Least-squares line through ``(sizes, seconds)`` and how well it explains them."""
    n, t = np.asarray(sizes, float), np.asarray(seconds, float)
    slope, intercept = np.polyfit(n, t, 1)
    predicted = intercept + slope * n
    r2 = 1 - ((t - predicted) ** 2).sum() / ((t - t.mean()) ** 2).sum()
    worst = float(np.max(np.abs(t - predicted) / t))
    return {
        "slope_seconds_per_image": round(float(slope), 5),
        "intercept_seconds": round(float(intercept), 2),
        "r_squared": round(float(r2), 4),
        "largest_residual_fraction": round(worst, 3),
        "linear": bool(worst <= 0.05),
    }


def said(line: dict) -> str:
    return (
        f"{line['slope_seconds_per_image'] * 1000:.1f} ms/image + {line['intercept_seconds']} s "
        f"(R^2 {line['r_squared']}, linear: {line['linear']})"
    )


def main() -> dict:
    parser = results_io.parser(__doc__, "scaling")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    root = fixtures.dataset(max(args.sizes))
    model_dir = os.path.join(fixtures.served_model(), "1")
    best = {n: {"yardstick": math.inf, "ingest": math.inf, "evaluate": math.inf} for n in args.sizes}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for n in args.sizes:
                data = fixtures.subset(root, n)
                ingest_throughput.yardstick(data)  # page cache warm for every contender
                out = os.path.join(tmp, f"{n}_{round_}")
                times = {
                    "yardstick": ingest_throughput.yardstick(data),
                    "ingest": ingest_throughput.beam_run(data, out, "in_memory"),
                    "evaluate": evaluate_seconds(
                        os.path.join(out, "examples"), model_dir, os.path.join(out, "eval")
                    ),
                }
                best[n] = {k: min(v, best[n][k]) for k, v in times.items()}
                print(f"  round {round_ + 1}, {n} images: {times}", file=sys.stderr, flush=True)
    rows = {
        n: {
            "yardstick_seconds": round(b["yardstick"], 3),
            "ingest_seconds": round(b["ingest"], 2),
            "ingest_ratio_to_yardstick": round(b["ingest"] / b["yardstick"], 1),
            "evaluate_seconds": round(b["evaluate"], 2),
        }
        for n, b in sorted(best.items())
    }
    sizes = list(rows)
    result = results_io.save(
        args.out,
        "scaling",
        rounds=args.rounds,
        ingest_runner="DirectRunner in_memory",
        sizes=rows,
        ingest_fit=fit(sizes, [r["ingest_seconds"] for r in rows.values()]),
        evaluate_fit=fit(sizes, [r["evaluate_seconds"] for r in rows.values()]),
        yardstick_fit=fit(sizes, [r["yardstick_seconds"] for r in rows.values()]),
    )
    ingest, evaluate = said(result["ingest_fit"]), said(result["evaluate_fit"])
    print(f"scaling: {sizes} images; ingestion {ingest}; evaluation {evaluate}")
    return result


if __name__ == "__main__":
    main()
