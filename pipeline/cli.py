"""The ``deeplab-tfx`` command.

Subcommands take the same config object as the pipeline (``--config NAME|FILE``, ``--set
section.key=value``); their own flags are shorthands for config keys, so a setting means the
same thing whichever way it is given.

The terminal shows what a person follows; everything else goes to a log file that the command
names (``pipeline/logs.py``), and ``-v`` puts it all back on the terminal.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from typing import Optional, Sequence

from core import config as config_lib
from core import paths
from core.choices import DIRECT_RUNNING_MODES
from pipeline import logs


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", default=None, help=f"YAML file or named config ({', '.join(config_lib.named_configs())})"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set ingest.max_rejected_fraction=0.05",
    )


def _load(args: argparse.Namespace, shorthands: dict) -> config_lib.PipelineConfig:
    overrides = list(args.overrides)
    for attr, key in shorthands.items():
        value = getattr(args, attr, None)
        if value is not None:
            overrides.append(f"{key}={value}")
    return config_lib.load_config(args.config, overrides)


# make-dataset --format: VOC 2012 + SBD, or a folder dataset of ``synthetic_folders.FORMATS``.
VOC_FORMAT = "voc"
DATASET_FORMATS = (VOC_FORMAT, "cihp", "oxford_pet")
# make-dataset --difficulty: ``synthetic_voc.DIFFICULTIES``, spelled here too so that building the
# parser imports no dataset code (a test checks the two agree).
DATASET_DIFFICULTIES = ("easy", "hard")


def _make_dataset(args: argparse.Namespace) -> int:
    from datasets import synthetic_folders, synthetic_voc

    options = dict(seed=args.seed, max_side=args.max_side, workers=args.workers, difficulty=args.difficulty)
    summary = {"out": os.path.abspath(args.out)}
    if args.format == VOC_FORMAT:
        layout = synthetic_voc.make_dataset(args.out, args.num_images, **options)
        summary.update(
            voc_train=len(layout.voc_train),
            voc_val=len(layout.voc_val),
            sbd_train=len(layout.sbd_train),
            sbd_val=len(layout.sbd_val),
        )
    else:
        layout = synthetic_folders.MAKERS[args.format](args.out, args.num_images, **options)
        summary.update(format=args.format, train=len(layout.train), eval=len(layout.eval))
    summary.update(images=len(layout.all_ids), difficulty=args.difficulty)
    print(json.dumps(summary))
    return 0


def _foreign_entries(output: str, own: set) -> list:
    """Entries of ``output`` that ``deeplab-tfx ingest`` did not write (none if it does not exist)."""
    import tensorflow as tf

    if not tf.io.gfile.isdir(output):
        return [output] if tf.io.gfile.exists(output) else []
    names = (name.rstrip("/") for name in tf.io.gfile.listdir(output))  # gs:// lists dirs as "name/"
    return sorted(name for name in names if name not in own and not name.startswith("beam-temp-"))


# ingest's flags: shorthands for config keys.
_INGEST_SHORTHANDS = {
    "voc_root": "data.voc_root",
    "sbd_root": "data.sbd_root",
    "data_root": "data.root",
    "max_rejected_fraction": "ingest.max_rejected_fraction",
    "num_shards": "ingest.num_shards",
    "direct_running_mode": "beam.direct_running_mode",
}


def _missing_root(cfg: config_lib.PipelineConfig) -> Optional[str]:
    """What to tell the person when the dataset's layout needs a root the config lacks."""
    key, value = cfg.required_data_root()
    if value:
        return None
    flag = next("--" + attr.replace("_", "-") for attr, k in _INGEST_SHORTHANDS.items() if k == key)
    return f"{flag} (or {key}) is required for dataset {cfg.dataset.name} (layout {cfg.dataset.layout})"


def _ingest(args: argparse.Namespace) -> int:
    cfg = _load(args, _INGEST_SHORTHANDS).resolved(paths.PROJECT_ROOT, os.getcwd())
    missing = _missing_root(cfg)
    if missing:
        print(f"deeplab-tfx ingest: {missing}", file=sys.stderr)
        return 2
    in_output = os.path.join(args.output, logs.LOG_DIR)
    log_dir = args.log_dir or logs.local_log_dir(in_output)
    # What the log made in --output, to take back if ingest refuses to start.
    made = [path for path in (args.output, in_output) if log_dir == in_output and not os.path.exists(path)]
    with logs.capture(log_dir, "ingest", args.verbose) as log:
        code = _ingest_captured(args, cfg)
    if code == 2 and made:
        # Refused before it wrote anything (a bad list, a foreign --output): no trace left there.
        shutil.rmtree(made[0], ignore_errors=True)
    else:
        _say("ingest", f"full log in {log}", log)
    return code


def _ingest_captured(args: argparse.Namespace, cfg: config_lib.PipelineConfig) -> int:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from components.segmentation_example_gen import beam_ingest, sources, spans

    # The output is replaced whole, so that running ingest (or `make demo`) again leaves only the
    # new run: no old shards beside the new ones. Only an output ingest wrote itself is deleted;
    # anything else there (a mistyped --output, a user's files) makes it refuse.
    examples = os.path.join(args.output, "examples")
    own = {os.path.basename(examples), logs.LOG_DIR, *beam_ingest.REPORT_FILES}
    foreign = _foreign_entries(args.output, own)
    if foreign:
        print(
            f"deeplab-tfx ingest: --output {args.output} holds what ingest did not write "
            f"({', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''}); ingest replaces its output "
            "whole, so give a new directory or one an earlier ingest wrote",
            file=logs.errors(),
        )
        return 2
    beam_args = cfg.beam_pipeline_args(tfx=False)
    logging.info("ingest: beam args %s", beam_args)
    try:
        # beam_ingest.run checks the lists before it deletes the old output (a bad list leaves it
        # as it was), then replaces it.
        # The span the pipeline would read (the newest, or data.span), as its driver resolves it.
        span = spans.resolve(
            {
                "voc": cfg.data.voc_root or None,
                "sbd": cfg.data.sbd_root or None,
                "root": cfg.data.root or None,
            },
            cfg.data.span,
        )
        logging.info("ingest: span %s, version %s: %s", span.span, span.version, span.roots)
        summary = beam_ingest.run(
            lambda: beam.Pipeline(options=PipelineOptions(beam_args)),
            voc_root=span.roots["voc"],
            sbd_root=span.roots["sbd"],
            examples_uri=examples,
            rejected_dir=args.output,
            max_rejected_fraction=cfg.ingest.max_rejected_fraction,
            num_shards=cfg.ingest.num_shards,
            dataset=cfg.dataset,
            data_root=span.roots["root"],
            max_ignored_fraction=cfg.ingest.max_ignored_fraction,
        )
    except (sources.ListFileError, spans.SpanError) as e:
        print(f"deeplab-tfx ingest: {e}", file=logs.errors())
        return 2
    except (beam_ingest.TooManyRejectedError, beam_ingest.MostlyIgnoredError) as e:
        print(f"deeplab-tfx ingest: {e}", file=logs.errors())
        return 1
    print(
        json.dumps(
            {
                "splits": summary.splits,
                "rejected": len(summary.rejected),
                "warnings": summary.warnings,
                "seconds": summary.seconds,
                "summary": os.path.join(args.output, beam_ingest.SUMMARY_FILE),
            }
        )
    )
    return 0


# infer's flags: shorthands for config keys.
_INFER_SHORTHANDS = {
    "overlay": "inference.overlay",
    "batch_pixels": "inference.batch_pixels",
    "max_rejected_fraction": "inference.max_rejected_fraction",
    "direct_running_mode": "beam.direct_running_mode",
}


def _infer(args: argparse.Namespace) -> int:
    cfg = _load(args, _INFER_SHORTHANDS).resolved(paths.PROJECT_ROOT, os.getcwd())
    log_dir = args.log_dir or logs.local_log_dir(os.path.join(args.output, logs.LOG_DIR))
    with logs.capture(log_dir, "infer", args.verbose) as log:
        code = _infer_captured(args, cfg)
    _say("infer", f"full log in {log}", log)
    return code


def _infer_captured(args: argparse.Namespace, cfg: config_lib.PipelineConfig) -> int:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from inference import inputs, job, model

    try:
        ref = model.resolve(args.model)
    except FileNotFoundError as e:
        print(f"deeplab-tfx infer: {e}", file=logs.errors())
        return 2
    beam_args = cfg.beam_pipeline_args(tfx=False)
    print(
        f"deeplab-tfx infer: model {ref.path} (version {ref.version}, {ref.dataset.name!r}, "
        f"{ref.dataset.num_classes} classes) on {', '.join(args.inputs)} -> {args.output}",
        flush=True,
    )
    logging.info("infer: beam args %s", beam_args)
    try:
        summary = job.run(
            lambda: beam.Pipeline(options=PipelineOptions(beam_args)),
            args.inputs,
            args.output,
            ref,
            overlay=cfg.inference.overlay,
            batch_pixels=cfg.inference.batch_pixels,
            max_rejected_fraction=cfg.inference.max_rejected_fraction,
            max_batch_images=cfg.inference.max_batch_images,
        )
    except inputs.NoInputError as e:
        print(f"deeplab-tfx infer: {e}", file=logs.errors())
        return 2
    except job.TooManyRejectedError as e:
        print(f"deeplab-tfx infer: {e}", file=logs.errors())
        return 1
    shown = ("masks", "written", "kept", "batches", "rejected", "rejected_by_kind", "seconds")
    print(json.dumps({**{key: summary[key] for key in shown}, "output": args.output}))
    return 0


def _say(command: str, message: str, log: Optional[str]) -> None:
    """A line for the person about the log file, on stderr so that stdout stays the command's
    output (ingest's JSON); nothing when there is no file (``-v``)."""
    if log:
        print(f"deeplab-tfx {command}: {message}", file=logs.errors(), flush=True)


def _run(args: argparse.Namespace) -> int:
    config = _load(args, {}).resolved(paths.PROJECT_ROOT, os.getcwd())
    log_dir = os.path.join(config.pipeline_root, logs.LOG_DIR)
    with logs.capture(args.log_dir or logs.local_log_dir(log_dir), "run", args.verbose) as log:
        _say("run", f"full log in {log}", log)
        from pipeline import local_runner  # TensorFlow: imported once its output is captured

        code = local_runner.run(config, to_nodes=args.to_nodes)
    log = logs.publish(log, args.log_dir or log_dir)
    _say("run", f"full log in {log}", log)
    return code


def _compile(args: argparse.Namespace) -> int:
    from pipeline import kubeflow_runner

    config = _load(args, {})
    job = kubeflow_runner.compile_pipeline(config, args.output)
    tasks = job["pipelineSpec"]["root"]["dag"]["tasks"]
    print(f"deeplab-tfx compile: {len(tasks)} tasks, image {config.kubeflow.image} -> {args.output}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    with logs.capture(args.log_dir or _default_log_dir(), "serve", args.verbose) as log:
        _say("serve", f"full log in {log}", log)
        return _serve_captured(args)


def _serve_captured(args: argparse.Namespace) -> int:
    from serving import server

    try:
        return server.serve(
            args.model_name, args.model_base_path, args.host, args.port, args.rest_port, args.poll_seconds,
            args.max_request_mb << 20, args.wait_seconds, args.rest_timeout_seconds,
        )  # fmt: skip
    except (FileNotFoundError, OSError) as e:
        print(f"deeplab-tfx serve: {e}", file=logs.errors())
        return 1


def _predict(args: argparse.Namespace) -> int:
    with logs.capture(args.log_dir or _default_log_dir(), "predict", args.verbose) as log:
        code = _predict_captured(args)
        if code:
            _say("predict", f"full log in {log}", log)
        return code


def _predict_captured(args: argparse.Namespace) -> int:
    from core import dataset_spec
    from serving import client

    try:
        # Without a model directory or --dataset, masks are drawn in VOC's colours (the config's default).
        spec = client.prediction_spec(args.model_base_path, args.dataset, args.version, dataset_spec.VOC_SPEC)
        written = client.predict_files(
            args.server, args.model_name, args.images, args.out, spec, args.version, args.rest,
            args.batch_size, args.deadline,
        )  # fmt: skip
    except client.ServerUnavailableError as e:
        print(f"deeplab-tfx predict: {e}", file=logs.errors())
        return 1
    except Exception as e:  # noqa: BLE001 - gRPC and HTTP errors: their message, not a trace
        what = f"{e.code().name}: {e.details()}" if hasattr(e, "code") and hasattr(e, "details") else str(e)
        print(f"deeplab-tfx predict: {what}", file=logs.errors())
        return 1
    for path, version, mask_path in written:
        print(f"{path} -> {mask_path} (model version {version})")
    return 0


def _default_log_dir() -> str:
    """Where commands without a pipeline root or an output directory keep their logs."""
    return os.path.join(os.path.expanduser("~"), ".cache", "deeplab-tfx", logs.LOG_DIR)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deeplab-tfx", description=__doc__.splitlines()[0])
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="everything on the terminal (debug level), no log file"
    )
    parser.add_argument(
        "--log-dir",
        default=None,
        help="where the full log goes (default: <pipeline_root>/logs for run, <output>/logs for ingest and "
        "infer, ~/.cache/deeplab-tfx/logs for serve and predict)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "make-dataset",
        help="write a synthetic dataset in the formats of VOC 2012 + SBD, CIHP or Oxford-IIIT Pet",
    )
    p.add_argument(
        "--out",
        required=True,
        help="directory to write in (voc: VOCdevkit/ and benchmark_RELEASE/; cihp and oxford_pet: the "
        "dataset's data.root)",
    )
    p.add_argument(
        "--format",
        choices=DATASET_FORMATS,
        default=VOC_FORMAT,
        help="voc: VOC 2012 + SBD archives; cihp: Images/ + Category_ids/ grey ids, no lists; oxford_pet: "
        "images/ + annotations/trimaps/ + trainval.txt/test.txt (default voc)",
    )
    p.add_argument("--num-images", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-side", type=int, default=500, help="longer image side (VOC: 500)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: one per core)")
    p.add_argument(
        "--difficulty",
        choices=DATASET_DIFFICULTIES,
        default=DATASET_DIFFICULTIES[0],
        help="easy: each class its own colour, shape and texture (the demo's data); hard: classes share "
        "each cue and differ in the combination, object-coloured backgrounds, clutter labelled background, "
        "small, overlapping and repeated objects (default easy)",
    )
    p.set_defaults(func=_make_dataset)

    p = sub.add_parser("ingest", help="run SegmentationExampleGen's Beam job alone, no orchestrator")
    p.add_argument("--voc-root", dest="voc_root", help="directory holding VOCdevkit/VOC2012")
    p.add_argument("--sbd-root", dest="sbd_root", help="directory holding benchmark_RELEASE/dataset")
    p.add_argument(
        "--data-root", dest="data_root", help="a folders dataset's root (with --set dataset=cihp, say)"
    )
    p.add_argument(
        "--output", required=True, help="writes examples/, rejected.jsonl, summary.json and report.md there"
    )
    p.add_argument("--max-rejected-fraction", dest="max_rejected_fraction", type=float)
    p.add_argument("--num-shards", dest="num_shards", type=int)
    p.add_argument(
        "--direct-running-mode",
        dest="direct_running_mode",
        choices=DIRECT_RUNNING_MODES,
    )
    _add_config_args(p)
    p.set_defaults(func=_ingest)

    p = sub.add_parser(
        "infer", help="segment a folder of images (or TFRecords of Examples) with a model, as a Beam job"
    )
    p.add_argument(
        "--model", required=True,
        help="a pushed model (<serving_dir>/<model_name>: its newest version, or one version's directory), "
        "a Trainer's Model artifact, or a SavedModel directory",
    )  # fmt: skip
    p.add_argument(
        "--input", dest="inputs", action="append", required=True, metavar="GLOB",
        help="images (JPEG, PNG, GIF, BMP; a directory: all its files, recursively) or TFRecord files "
        "(*.tfrecord, *.gz) of Examples; repeat for more",
    )  # fmt: skip
    p.add_argument(
        "--output", required=True,
        help="writes masks/<name>.png, overlays/<name>.jpg (--overlay), manifest.jsonl, rejected.jsonl, "
        "summary.json; a re-run keeps the masks this model already drew",
    )  # fmt: skip
    p.add_argument("--overlay", action="store_const", const="true", default=None, help="also write overlays")
    p.add_argument("--batch-pixels", dest="batch_pixels", type=int, help="pixels per batch to the model")
    p.add_argument(
        "--max-rejected-fraction", dest="max_rejected_fraction", type=float,
        help="exit 1 (after writing everything) when more of the inputs are rejected (default 0.1)",
    )  # fmt: skip
    p.add_argument(
        "--direct-running-mode",
        dest="direct_running_mode",
        choices=DIRECT_RUNNING_MODES,
    )
    _add_config_args(p)
    p.set_defaults(func=_infer)

    p = sub.add_parser("run", help="run the pipeline locally (LocalDagRunner, SQLite ML Metadata)")
    p.add_argument(
        "--to",
        dest="to_nodes",
        action="append",
        default=[],
        metavar="COMPONENT",
        help="run only up to this component (a TFX partial run), e.g. --to DataGate to validate new data",
    )
    _add_config_args(p)
    p.set_defaults(func=_run)

    p = sub.add_parser(
        "compile", help="compile the pipeline for an orchestrator (kubeflow: a PipelineJob JSON)"
    )
    p.add_argument("orchestrator", choices=["kubeflow"])
    p.add_argument("--output", required=True, help="PipelineJob JSON to write (Vertex AI Pipelines, KFP 2)")
    _add_config_args(p)
    p.set_defaults(func=_compile)

    p = sub.add_parser("serve", help="serve pushed models over TF Serving's gRPC (and REST) API")
    p.add_argument("--model-base-path", required=True, help="<serving_dir>/<model_name>: integer versions")
    p.add_argument("--model-name", required=True)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: no auth here)")
    p.add_argument("--port", type=int, default=8500, help="gRPC port (0: pick a free one)")
    p.add_argument("--rest-port", type=int, default=0, help="REST port (0: no REST)")
    p.add_argument(
        "--rest-timeout-seconds", type=float, default=None,
        help="a REST request not received whole (line, headers, body) within this is answered 408 and "
        "dropped (default 30; not TF Serving's --rest_api_timeout_in_ms, a processing deadline)",
    )  # fmt: skip
    p.add_argument("--poll-seconds", type=float, default=1.0, help="how often to look for new versions")
    p.add_argument("--max-request-mb", type=int, default=32, help="larger requests are refused")
    p.add_argument("--wait-seconds", type=float, default=0.0, help="wait this long for a first version")
    p.set_defaults(func=_serve)

    p = sub.add_parser("predict", help="segment images with a served model; writes masks and overlays")
    p.add_argument("images", nargs="+", help="JPEG files")
    p.add_argument("--server", required=True, help="HOST:PORT (gRPC) or HOST:PORT / URL (REST)")
    p.add_argument("--model-name", required=True)
    p.add_argument("--version", type=int, default=None, help="default: the version the server serves")
    p.add_argument("--out", required=True, help="writes <stem>.png (class ids) and <stem>_overlay.jpg")
    p.add_argument("--rest", action="store_true", help="use the REST API (b64 JSON) instead of gRPC")
    p.add_argument("--batch-size", type=int, default=8, help="images per request")
    p.add_argument("--deadline", type=float, default=30.0, help="seconds to keep retrying UNAVAILABLE")
    p.add_argument(
        "--model-base-path", default=None,
        help="<serving_dir>/<model_name>: draw masks in the classes' colours of the model there "
        "(its assets.extra/dataset_spec.json)",
    )  # fmt: skip
    p.add_argument(
        "--dataset", default=None,
        help="dataset spec (YAML path or name in datasets/specs) whose colours to draw masks in "
        "when the model's directory cannot be read (default: VOC's)",
    )  # fmt: skip
    p.set_defaults(func=_predict)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.verbose:
        logging.basicConfig(level=logging.DEBUG, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except config_lib.ConfigError as e:
        print(f"deeplab-tfx {args.command}: config error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
