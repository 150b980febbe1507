"""The Beam job behind VocExampleGen and ``deeplab-tfx ingest``: one code path for both.

The driver lists ids (cheap, and it decides the splits); workers read, validate and encode
(the expensive part, spread by Beam). Records that fail go to a dead-letter JSON-lines file
with their id, source, split, kind and reason, and bump a Beam counter per kind. Only after
the job has finished does the driver judge the rejected fraction: it counts the dead-letter
file, which every runner writes, rather than relying on metrics some runners do not report.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Callable, Iterable, Optional

import apache_beam as beam
import tensorflow as tf

from components.voc_example_gen import records, sources
from pipeline import features

NAMESPACE = "VocExampleGen"
REJECTED_TAG = "rejected"
REJECTED_FILE = "rejected.jsonl"
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.md"
# TFX's Examples convention: Split-<name>/data_tfrecord-SSSSS-of-NNNNN.gz
EXAMPLE_FILE_PREFIX = "data_tfrecord"

_log = logging.getLogger(__name__)


class TooManyRejectedError(RuntimeError):
    """More records were rejected than ``max_rejected_fraction`` allows."""


@dataclasses.dataclass
class IngestSummary:
    """What one ingestion did; written as summary.json beside the dead-letter file."""

    splits: dict
    rejected: list
    seconds: float
    listed: int
    rejected_fraction: float
    max_rejected_fraction: float
    counters: dict

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


class _ToExample(beam.DoFn):
    """Builds one tf.Example per id; failures leave through the ``rejected`` tag."""

    def __init__(self):
        self._written = {
            split: beam.metrics.Metrics.counter(NAMESPACE, f"examples_{split}") for split in features.SPLITS
        }
        self._rejected = {
            kind: beam.metrics.Metrics.counter(NAMESPACE, f"rejected_{kind}") for kind in records.KINDS
        }
        self._seen = 0

    def process(self, item: sources.WorkItem):
        try:
            example = records.build_example(item)
        except records.Rejected as e:
            yield self._reject(item, e.kind, e.reason)
            return
        except Exception as e:  # noqa: BLE001 - a bad record must never take the job down.
            yield self._reject(
                item, records.UNEXPECTED, f"{item.image_path} + {item.mask_path}: " f"{type(e).__name__}: {e}"
            )
            return
        finally:
            self._seen += 1
            if self._seen % 200 == 0:
                _log.info("VocExampleGen worker %d: %d ids processed", os.getpid(), self._seen)
        self._written[item.split].inc()
        yield beam.pvalue.TaggedOutput(item.split, example.SerializeToString())

    def _reject(self, item: sources.WorkItem, kind: str, reason: str):
        self._rejected[kind].inc()
        _log.warning("rejected %s (%s): %s", item.image_id, item.source, reason)
        return beam.pvalue.TaggedOutput(
            REJECTED_TAG,
            json.dumps(
                {
                    "id": item.image_id,
                    "source": item.source,
                    "split": item.split,
                    "kind": kind,
                    "reason": reason,
                },
                sort_keys=True,
            ),
        )


def split_dir(examples_uri: str, split: str) -> str:
    """Where TFX components look for a split of an Examples artifact."""
    return os.path.join(examples_uri, f"Split-{split}")


def build(
    pipeline: beam.Pipeline, items: list, examples_uri: str, rejected_dir: str, num_shards: int = 0
) -> None:
    """Adds the ingestion transforms to ``pipeline``."""
    outputs = (
        pipeline
        | "ListIds" >> beam.Create(items, reshuffle=True)
        | "ToExample" >> beam.ParDo(_ToExample()).with_outputs(REJECTED_TAG, *features.SPLITS)
    )
    for split in features.SPLITS:
        _ = outputs[split] | f"Write{split.title()}" >> beam.io.WriteToTFRecord(
            os.path.join(split_dir(examples_uri, split), EXAMPLE_FILE_PREFIX),
            file_name_suffix=".gz",
            num_shards=num_shards,
            compression_type=beam.io.filesystem.CompressionTypes.GZIP,
        )
    name, ext = os.path.splitext(REJECTED_FILE)
    _ = outputs[REJECTED_TAG] | "WriteDeadLetter" >> beam.io.WriteToText(
        os.path.join(rejected_dir, name),
        file_name_suffix=ext,
        num_shards=1,
        shard_name_template="",
    )


def _counters(result) -> dict:
    try:
        query = result.metrics().query(beam.metrics.MetricsFilter().with_namespace(NAMESPACE))
    except Exception:  # noqa: BLE001 - metrics are reporting only; some runners lack them.
        return {}
    totals = {}
    for counter in query["counters"]:
        name = counter.key.metric.name
        totals[name] = totals.get(name, 0) + (
            counter.committed if counter.committed is not None else counter.attempted
        )
    return dict(sorted(totals.items()))


def read_rejected(rejected_dir: str) -> list:
    path = os.path.join(rejected_dir, REJECTED_FILE)
    if not tf.io.gfile.exists(path):
        return []
    with tf.io.gfile.GFile(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return sorted(rows, key=lambda r: (r["split"], r["id"]))


def run(
    make_pipeline: Callable[[], beam.Pipeline],
    voc_root: str,
    sbd_root: Optional[str],
    examples_uri: str,
    rejected_dir: str,
    max_rejected_fraction: float = 0.01,
    num_shards: int = 0,
) -> IngestSummary:
    """Lists, runs the Beam job, writes the report and enforces ``max_rejected_fraction``.

    Raises ``sources.ListFileError`` when a split list is unreadable (before any work), and
    ``TooManyRejectedError`` after the job when too much was rejected; the dead-letter file
    and report are written either way, so nothing is lost.
    """
    items = sources.plan_items(voc_root, sbd_root)
    planned = sources.count_by_split(items)
    _log.info(
        "VocExampleGen: %d ids listed (%s)", len(items), ", ".join(f"{k} {v}" for k, v in planned.items())
    )
    if not items:
        raise sources.ListFileError(f"the split lists under {voc_root} name no ids")
    tf.io.gfile.makedirs(rejected_dir)
    start = time.time()
    pipeline = make_pipeline()
    build(pipeline, items, examples_uri, rejected_dir, num_shards)
    result = pipeline.run()
    result.wait_until_finish()
    seconds = time.time() - start

    rejected = read_rejected(rejected_dir)
    written = dict(planned)
    for row in rejected:
        written[row["split"]] -= 1
    summary = IngestSummary(
        splits=written,
        rejected=rejected,
        seconds=round(seconds, 3),
        listed=len(items),
        rejected_fraction=len(rejected) / len(items),
        max_rejected_fraction=max_rejected_fraction,
        counters=_counters(result),
    )
    write_report(summary, rejected_dir)
    _log.info(
        "VocExampleGen: wrote %s, rejected %d (%.2f%%) in %.1f s (%.1f ids/s)",
        written,
        len(rejected),
        100 * summary.rejected_fraction,
        seconds,
        len(items) / seconds,
    )
    if summary.rejected_fraction > max_rejected_fraction:
        raise TooManyRejectedError(
            f"VocExampleGen rejected {len(rejected)} of {len(items)} ids "
            f"({100 * summary.rejected_fraction:.2f}%), more than max_rejected_fraction="
            f"{max_rejected_fraction} allows. Most common reasons: {_top_kinds(rejected)}. "
            f"Every rejected id and its reason: {os.path.join(rejected_dir, REPORT_FILE)}"
        )
    return summary


def _top_kinds(rejected: Iterable[dict]) -> str:
    counts = {}
    for row in rejected:
        counts[row["kind"]] = counts.get(row["kind"], 0) + 1
    return ", ".join(f"{k} x{n}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def write_report(summary: IngestSummary, rejected_dir: str) -> None:
    """summary.json for programs, report.md for people."""
    with tf.io.gfile.GFile(os.path.join(rejected_dir, SUMMARY_FILE), "w") as f:
        json.dump(summary.to_json(), f, indent=1, sort_keys=True)
    lines = [
        "# VocExampleGen ingestion report",
        "",
        f"- listed ids: {summary.listed}",
        *(f"- written to `{split}`: {n}" for split, n in summary.splits.items()),
        f"- rejected: {len(summary.rejected)} ({100 * summary.rejected_fraction:.2f}%; "
        f"the run fails above {100 * summary.max_rejected_fraction:.2f}%)",
        f"- seconds: {summary.seconds}",
        "",
    ]
    if summary.rejected:
        lines += ["| id | source | split | kind | reason |", "|---|---|---|---|---|"]
        lines += [
            f"| {r['id']} | {r['source']} | {r['split']} | {r['kind']} | {r['reason']} |"
            for r in summary.rejected
        ]
    else:
        lines.append("No record was rejected.")
    with tf.io.gfile.GFile(os.path.join(rejected_dir, REPORT_FILE), "w") as f:
        f.write("\n".join(lines) + "\n")
