"""The ``deeplab-tfx`` command.

Subcommands take the same config object as the pipeline (``--config NAME|FILE``, ``--set
section.key=value``); their own flags are shorthands for config keys, so a setting means the
same thing whichever way it is given.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Optional, Sequence

from pipeline import config as config_lib


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


def _make_dataset(args: argparse.Namespace) -> int:
    from datasets import synthetic_voc

    layout = synthetic_voc.make_dataset(
        args.out, args.num_images, seed=args.seed, max_side=args.max_side, workers=args.workers
    )
    print(
        json.dumps(
            {
                "out": os.path.abspath(args.out),
                "voc_train": len(layout.voc_train),
                "voc_val": len(layout.voc_val),
                "sbd_train": len(layout.sbd_train),
                "sbd_val": len(layout.sbd_val),
                "images": len(layout.all_ids),
            }
        )
    )
    return 0


def _ingest(args: argparse.Namespace) -> int:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from components.voc_example_gen import beam_ingest, sources

    cfg = _load(
        args,
        {
            "voc_root": "data.voc_root",
            "sbd_root": "data.sbd_root",
            "max_rejected_fraction": "ingest.max_rejected_fraction",
            "num_shards": "ingest.num_shards",
            "direct_running_mode": "beam.direct_running_mode",
        },
    )
    if not cfg.data.voc_root:
        print("deeplab-tfx ingest: --voc-root (or data.voc_root) is required", file=sys.stderr)
        return 2
    os.makedirs(args.output, exist_ok=True)
    beam_args = cfg.beam_pipeline_args()
    logging.info("ingest: beam args %s", beam_args)
    try:
        summary = beam_ingest.run(
            lambda: beam.Pipeline(options=PipelineOptions(beam_args)),
            voc_root=cfg.data.voc_root,
            sbd_root=cfg.data.sbd_root or None,
            examples_uri=os.path.join(args.output, "examples"),
            rejected_dir=args.output,
            max_rejected_fraction=cfg.ingest.max_rejected_fraction,
            num_shards=cfg.ingest.num_shards,
        )
    except sources.ListFileError as e:
        print(f"deeplab-tfx ingest: {e}", file=sys.stderr)
        return 2
    except beam_ingest.TooManyRejectedError as e:
        print(f"deeplab-tfx ingest: {e}", file=sys.stderr)
        return 1
    print(
        json.dumps(
            {
                "splits": summary.splits,
                "rejected": len(summary.rejected),
                "seconds": summary.seconds,
                "summary": os.path.join(args.output, beam_ingest.SUMMARY_FILE),
            }
        )
    )
    return 0


def _run(args: argparse.Namespace) -> int:
    from pipeline import local_runner

    return local_runner.run(_load(args, {}))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deeplab-tfx", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("make-dataset", help="write a synthetic dataset in the VOC 2012 + SBD formats")
    p.add_argument("--out", required=True, help="directory to create VOCdevkit/ and benchmark_RELEASE/ in")
    p.add_argument("--num-images", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-side", type=int, default=500, help="longer image side (VOC: 500)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: one per core)")
    p.set_defaults(func=_make_dataset)

    p = sub.add_parser("ingest", help="run VocExampleGen's Beam job alone, no orchestrator")
    p.add_argument("--voc-root", dest="voc_root", help="directory holding VOCdevkit/VOC2012")
    p.add_argument("--sbd-root", dest="sbd_root", help="directory holding benchmark_RELEASE/dataset")
    p.add_argument(
        "--output", required=True, help="writes examples/, rejected.jsonl, summary.json and report.md there"
    )
    p.add_argument("--max-rejected-fraction", dest="max_rejected_fraction", type=float)
    p.add_argument("--num-shards", dest="num_shards", type=int)
    p.add_argument(
        "--direct-running-mode",
        dest="direct_running_mode",
        choices=["in_memory", "multi_threading", "multi_processing"],
    )
    _add_config_args(p)
    p.set_defaults(func=_ingest)

    p = sub.add_parser("run", help="run the pipeline locally (LocalDagRunner, SQLite ML Metadata)")
    _add_config_args(p)
    p.set_defaults(func=_run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        # Beam relays every worker's INFO lines (harness start/stop); progress comes from ours.
        logging.getLogger("apache_beam").setLevel(logging.WARNING)
    try:
        return args.func(args)
    except config_lib.ConfigError as e:
        print(f"deeplab-tfx {args.command}: config error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
