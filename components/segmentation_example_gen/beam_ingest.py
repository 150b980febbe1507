"""The Beam job behind SegmentationExampleGen and ``deeplab-tfx ingest``: one code path for both.

The driver lists ids (cheap, and it decides the splits); workers read, validate and encode
(the expensive part, spread by Beam). Records whose data is bad (``records.Rejected``) go to
a dead-letter JSON-lines file with their id, source, split, kind and reason, and bump a Beam
counter per kind; any other exception is a bug or an outage and fails the job. Only after the
job has finished does the driver judge the result, from what every runner leaves on storage
rather than from metrics some runners do not report: the dead-letter file, and the records
read back from the written shards, which must be exactly the listed ids minus the rejected.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import time
import traceback
from typing import Callable, Iterable, Optional

import apache_beam as beam
import tensorflow as tf

from components.segmentation_example_gen import records, sources
from core import artifacts, dataset_spec, features, paths
from core.config import IngestConfig
from core.dataset_spec import DatasetSpec

NAMESPACE = "SegmentationExampleGen"
REJECTED_TAG = "rejected"
REJECTED_FILE = "rejected.jsonl"
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.md"
REPORT_FILES = (REJECTED_FILE, SUMMARY_FILE, REPORT_FILE)

_log = logging.getLogger(__name__)

# The directory that holds this project's packages (components/, pipeline/, ...): the checkout,
# or the image's /deeplab-tfx (an editable install). Frames in files under it, and not under a
# site-packages or dist-packages directory (a virtualenv inside the checkout), are our code.
_INSTALLED = frozenset({"site-packages", "dist-packages"})


class TooManyRejectedError(RuntimeError):
    """More records were rejected than ``max_rejected_fraction`` allows."""


class EmptySplitError(TooManyRejectedError):
    """Every listed id of a split was rejected: nothing to train or evaluate on."""


class UnexpectedRecordError(RuntimeError):
    """An exception that is no data problem, raised while ingesting one id: fails the job.

    One message argument only, so that Beam can re-raise it with the step name appended.
    """


class OutputMismatchError(RuntimeError):
    """The records read back from the shards are not the listed ids minus the rejected ones."""


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
    """Builds one tf.Example per id of the dataset ``spec`` describes; failures leave through
    the ``rejected`` tag."""

    def __init__(self, spec: DatasetSpec):
        self._spec = spec
        self._written = {
            split: beam.metrics.Metrics.counter(NAMESPACE, f"examples_{split}") for split in features.SPLITS
        }
        self._rejected = {
            kind: beam.metrics.Metrics.counter(NAMESPACE, f"rejected_{kind}") for kind in records.KINDS
        }
        self._seen = 0

    def process(self, item: sources.WorkItem):
        try:
            example = records.build_example(item, self._spec)
        except records.Rejected as e:
            yield self._reject(item, e.kind, e.reason)
            return
        except Exception as e:
            # Not the data's fault (the readers classify every data problem): dead-lettering it
            # would pass silently below max_rejected_fraction, so it stops the job instead.
            raise UnexpectedRecordError(_unexpected(item, e)) from e
        finally:
            self._seen += 1
            if self._seen % 200 == 0:
                _log.info("SegmentationExampleGen worker %d: %d ids processed", os.getpid(), self._seen)
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


def _is_own_code(filename: str) -> bool:
    parts = os.path.relpath(os.path.abspath(filename), paths.PROJECT_ROOT).split(os.sep)
    return parts[0] != os.pardir and not _INSTALLED.intersection(parts)


def _where(error: BaseException) -> str:
    """``file:line in function`` of the innermost frame of our own code that ``error`` passed
    through (the line to fix, or our call into the library that raised), then the innermost
    frame if that is elsewhere (inside numpy, PIL, TensorFlow). Where setup.py installed the
    project into site-packages (Beam workers given ``--setup_file``), no frame counts as ours
    and only the innermost one is named.
    """
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return "an unknown place"
    innermost = frames[-1]
    own = next((f for f in reversed(frames) if _is_own_code(f.filename)), innermost)
    if own is innermost:
        return _at(own)
    return f"{_at(own)} (innermost frame: {_at(innermost)})"


def _at(frame: traceback.FrameSummary) -> str:
    return f"{frame.filename}:{frame.lineno} in {frame.name}"


def _unexpected(item: sources.WorkItem, error: Exception) -> str:
    """Says which id and files were being ingested, what was raised and where (``_where``)."""
    return (
        f"ingesting {item.image_id} ({item.source}, {item.split}) raised {type(error).__name__}: {error} "
        f"at {_where(error)}; its files: {item.image_path}, {item.mask_path}. Data problems are "
        f"rejected by kind, so this is a bug or a storage outage."
    )


def build(
    pipeline: beam.Pipeline,
    items: list,
    examples_uri: str,
    rejected_dir: str,
    dataset: DatasetSpec,
    num_shards: int = IngestConfig.num_shards,
) -> None:
    """Adds the ingestion transforms to ``pipeline``."""
    outputs = (
        pipeline
        | "ListIds" >> beam.Create(items, reshuffle=True)
        | "ToExample" >> beam.ParDo(_ToExample(dataset)).with_outputs(REJECTED_TAG, *features.SPLITS)
    )
    for split in features.SPLITS:
        _ = outputs[split] | f"Write{split.title()}" >> beam.io.WriteToTFRecord(
            os.path.join(artifacts.split_dir(examples_uri, split), artifacts.EXAMPLE_FILE_PREFIX),
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


def remove_previous_outputs(examples_uri: str, rejected_dir: str) -> None:
    """Deletes what an earlier run into the same places wrote: its shards, its dataset spec
    and its reports.

    Shard names depend on the shard count, so a rerun (a retried executor, ``deeplab-tfx
    ingest`` run twice) would otherwise leave old shards beside the new ones, and every reader
    of ``Split-<name>/*`` would see both; an old spec would describe records this run failed
    to replace.
    """
    for split in features.SPLITS:
        if tf.io.gfile.exists(artifacts.split_dir(examples_uri, split)):
            tf.io.gfile.rmtree(artifacts.split_dir(examples_uri, split))
    spec_file = os.path.join(examples_uri, artifacts.SPEC_FILE)
    if tf.io.gfile.exists(spec_file):
        tf.io.gfile.remove(spec_file)
    for name in REPORT_FILES:
        if tf.io.gfile.exists(os.path.join(rejected_dir, name)):
            tf.io.gfile.remove(os.path.join(rejected_dir, name))


def written_ids(examples_uri: str, split: str) -> list:
    """The ``image/filename`` of every record in a split's shards, read back from storage."""
    pattern = os.path.join(artifacts.split_dir(examples_uri, split), f"{artifacts.EXAMPLE_FILE_PREFIX}-*")
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        return []
    spec = {features.FILENAME_KEY: tf.io.FixedLenFeature([], tf.string)}
    batches = (
        tf.data.TFRecordDataset(files, compression_type="GZIP", num_parallel_reads=tf.data.AUTOTUNE)
        .batch(1024)
        .map(lambda serialized: tf.io.parse_example(serialized, spec)[features.FILENAME_KEY])
    )
    return [name.decode() for batch in batches.as_numpy_iterator() for name in batch]


def _check_written(items: list, rejected: list, on_disk: dict) -> None:
    """Every listed id is written once or rejected, and nothing else is written."""
    expected = {split: set() for split in features.SPLITS}
    for item in items:
        expected[item.split].add(item.image_id)
    for row in rejected:
        expected[row["split"]].discard(row["id"])
    problems = []
    for split, ids in on_disk.items():
        counts = collections.Counter(ids)
        for what, found in (
            ("missing", sorted(expected[split] - set(counts))),
            ("not listed for it", sorted(set(counts) - expected[split])),
            ("written more than once", sorted(i for i, n in counts.items() if n > 1)),
        ):
            if found:
                problems.append(f"{split}: {len(found)} ids {what} ({', '.join(found[:5])})")
    if problems:
        raise OutputMismatchError(
            "the written shards are not the listed ids minus the rejected ones: " + "; ".join(problems)
        )


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
    max_rejected_fraction: float = IngestConfig.max_rejected_fraction,
    num_shards: int = IngestConfig.num_shards,
    *,
    dataset: DatasetSpec,
    data_root: Optional[str] = None,
) -> IngestSummary:
    """Lists, runs the Beam job, writes the report and judges what was written.

    ``dataset`` says the layout, classes and mask encoding: VOC's reads ``voc_root`` (and
    ``sbd_root``), a folders dataset ``data_root``. Once the records pass every check, the spec
    is written beside the splits (``write_spec``), so that later components read the classes
    from the data.

    Raises, before any work, ``sources.ListFileError`` when a split list is unreadable or a
    split would be empty. The job fails with ``UnexpectedRecordError`` (or the runner's wrapper
    of it) on any exception that is no data problem. After the job, the report is written from
    the records read back from storage, then ``OutputMismatchError`` if they are not the listed
    ids minus the rejected, ``TooManyRejectedError`` when too much was rejected, and
    ``EmptySplitError`` when rejection emptied a split; the dead-letter file and report are
    there in every case, so nothing is lost without a word. What an earlier run wrote to the
    same places is deleted first.
    """
    items = sources.plan(dataset, voc_root, sbd_root, data_root)
    planned = sources.count_by_split(items)
    _log.info(
        "SegmentationExampleGen: %d ids listed (%s)",
        len(items),
        ", ".join(f"{k} {v}" for k, v in planned.items()),
    )
    remove_previous_outputs(examples_uri, rejected_dir)
    tf.io.gfile.makedirs(rejected_dir)
    start = time.time()
    pipeline = make_pipeline()
    build(pipeline, items, examples_uri, rejected_dir, dataset, num_shards)
    result = pipeline.run()
    result.wait_until_finish()
    seconds = time.time() - start

    rejected = read_rejected(rejected_dir)
    on_disk = {split: written_ids(examples_uri, split) for split in features.SPLITS}
    written = {split: len(ids) for split, ids in on_disk.items()}
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
        "SegmentationExampleGen: wrote %s, rejected %d (%.2f%%) in %.1f s (%.1f ids/s)",
        written,
        len(rejected),
        100 * summary.rejected_fraction,
        seconds,
        len(items) / seconds,
    )
    _check_written(items, rejected, on_disk)
    if summary.rejected_fraction > max_rejected_fraction:
        raise TooManyRejectedError(
            f"SegmentationExampleGen rejected {len(rejected)} of {len(items)} ids "
            f"({100 * summary.rejected_fraction:.2f}%), more than max_rejected_fraction="
            f"{max_rejected_fraction} allows. Most common reasons: {_top_kinds(rejected)}. "
            f"Every rejected id and its reason: {os.path.join(rejected_dir, REPORT_FILE)}"
        )
    for split, count in written.items():
        if not count:
            raise EmptySplitError(
                f"split {split}: all {planned[split]} listed ids were rejected, and the pipeline cannot "
                f"train or evaluate on nothing. Every rejected id and its reason: "
                f"{os.path.join(rejected_dir, REPORT_FILE)}"
            )
    write_spec(dataset, examples_uri)
    return summary


def write_spec(dataset: DatasetSpec, examples_uri: str) -> None:
    """Writes ``artifacts.SPEC_FILE`` into the Examples, VOC's included, so that every later
    component reads the classes from the data (``dataset_spec.of_examples`` takes an Examples
    directory without one, made before specs travelled, for VOC's)."""
    dataset_spec.write(dataset, examples_uri)


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
        "# SegmentationExampleGen ingestion report",
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
