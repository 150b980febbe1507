"""The Beam job behind SegmentationExampleGen and ``deeplab-tfx ingest``: one code path for both.

The driver lists ids (cheap, and it decides the splits); workers read, validate and encode
(the expensive part, spread by Beam). Records whose data is bad (``records.Rejected``) go to
a dead-letter JSON-lines file with their id, source, split, kind and reason, and bump a Beam
counter per kind; any other exception is a bug or an outage and fails the job. Only after the
job has finished does the driver judge the result, from what every runner leaves on storage
rather than from metrics some runners do not report: the dead-letter file, and the records
read back from the written shards, which must be exactly the listed ids minus the rejected.

The job also sums each written record's pixels per class by split (one 256-bin histogram per
record, the one validation counted, combined per split), which the driver reads back, names by
class (``pixels.census``) and judges (``pixels.judge``): a class the train split has no pixel
of is a warning, a train split mostly ignored or all background fails the run. Files of a
``folders`` dataset's folders that no source reads are named too (``sources.unread_files``).
All of it goes into the summary, the report, the log and, through the executor, the Examples
artifact's properties.
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
import numpy as np
import tensorflow as tf

from components.segmentation_example_gen import pixels, records, sources
from core import artifacts, beam_metrics, dataset_spec, features, paths
from core.config import IngestConfig
from core.dataset_spec import DatasetSpec

NAMESPACE = "SegmentationExampleGen"
REJECTED_TAG = "rejected"
REJECTED_FILE = artifacts.REJECTED_FILE
SUMMARY_FILE = artifacts.SUMMARY_FILE
REPORT_FILE = "report.md"
PIXELS_TAG = "pixels"
# The job's per-split pixel sums, read back into summary.json and then deleted; listed below so
# that one a failed run left behind is deleted (and ``deeplab-tfx ingest`` knows it as its own).
PIXELS_FILE = "pixels.jsonl"
REPORT_FILES = (REJECTED_FILE, SUMMARY_FILE, REPORT_FILE, PIXELS_FILE)

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


class MostlyIgnoredError(RuntimeError):
    """More of the train split's mask pixels are ignored than ``max_ignored_fraction`` allows."""


class BackgroundOnlyError(MostlyIgnoredError):
    """Every labelled pixel of the train split is the background's: nothing else to learn. A
    kind of ``MostlyIgnoredError``, whose cause it usually has (the objects' mask values read as
    ignored) and whose knob turns it off, so that what handles the one handles both."""


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
    pixels: dict  # pixels.census: {split: {"classes": {name: n}, "ignored": n}}
    max_ignored_fraction: float
    unread_files: dict  # {folder: sources.Unread.to_json()}
    warnings: list  # sentences for people: what the data cannot teach, files not read

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
            example, counts = records.build_record(item, self._spec)
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
        yield beam.pvalue.TaggedOutput(PIXELS_TAG, (item.split, counts))

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


class SumPixels(beam.CombineFn):
    """Sums pixel histograms (256 counts per class id, ``records.build_record``) into one, as a
    list of ints: per split, a few KB however many records."""

    def create_accumulator(self):
        return np.zeros(256, np.int64)

    def add_input(self, total, counts):
        total += counts
        return total

    def merge_accumulators(self, totals):
        merged = self.create_accumulator()
        for total in totals:
            merged += total
        return merged

    def extract_output(self, total):
        return total.tolist()


def _pixels_line(split: str, counts: list) -> str:
    return json.dumps({"split": split, "pixels": counts})


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
        | "ToExample"
        >> beam.ParDo(_ToExample(dataset)).with_outputs(REJECTED_TAG, PIXELS_TAG, *features.SPLITS)
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
    name, ext = os.path.splitext(PIXELS_FILE)
    _ = (
        outputs[PIXELS_TAG]
        | "SumPixels" >> beam.CombinePerKey(SumPixels())
        | "PixelsToJson" >> beam.MapTuple(_pixels_line)
        | "WritePixels"
        >> beam.io.WriteToText(
            os.path.join(rejected_dir, name), file_name_suffix=ext, num_shards=1, shard_name_template=""
        )
    )


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


def read_pixels(rejected_dir: str) -> dict:
    """``{split: pixels per class id 0-255}`` the job summed (``PIXELS_FILE``), which is then
    deleted: summary.json holds the numbers, by class name. A split without a written record
    has no line."""
    path = os.path.join(rejected_dir, PIXELS_FILE)
    with tf.io.gfile.GFile(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    tf.io.gfile.remove(path)
    return {row["split"]: np.asarray(row["pixels"], np.int64) for row in rows}


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
    max_ignored_fraction: float = IngestConfig.max_ignored_fraction,
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
    ids minus the rejected, ``TooManyRejectedError`` when too much was rejected,
    ``EmptySplitError`` when rejection emptied a split, ``MostlyIgnoredError`` when more of
    the train split's mask pixels are ignored than ``max_ignored_fraction``, and
    ``BackgroundOnlyError`` (a kind of it) when every labelled train pixel is the background's;
    the dead-letter file and report are there in every case, so nothing is lost without a word.
    Warnings (a class without a train pixel, an eval split mostly ignored, files no source
    reads) are logged and in the summary, and fail nothing; the data is judged (``pixels.judge``)
    only where rejection did not fail the run. What an earlier run wrote to the same places is
    deleted first.
    """
    items = sources.plan(dataset, voc_root, sbd_root, data_root)
    planned = sources.count_by_split(items)
    _log.info(
        "SegmentationExampleGen: %d ids listed (%s)",
        len(items),
        ", ".join(f"{k} {v}" for k, v in planned.items()),
    )
    unread = sources.unread_files(dataset, data_root)
    for folder in unread:
        _log.warning("SegmentationExampleGen: %s", folder.warning())
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
    census = pixels.census(dataset, read_pixels(rejected_dir))
    report = os.path.join(rejected_dir, REPORT_FILE)
    failure = _rejection_error(len(items), rejected, planned, written, max_rejected_fraction, report)
    # What the data cannot teach is judged on data the run keeps: where too much was rejected,
    # that is the failure, and a class missing with the rejected records is no finding of the data.
    findings = pixels.Findings([]) if failure else pixels.judge(dataset, census, max_ignored_fraction)
    summary = IngestSummary(
        splits=written,
        rejected=rejected,
        seconds=round(seconds, 3),
        listed=len(items),
        rejected_fraction=len(rejected) / len(items),
        max_rejected_fraction=max_rejected_fraction,
        counters=beam_metrics.counters(result, NAMESPACE) or {},
        pixels=census,
        max_ignored_fraction=max_ignored_fraction,
        unread_files={folder.directory: folder.to_json() for folder in unread},
        warnings=[folder.warning() for folder in unread] + findings.warnings,
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
    _log.info(
        "SegmentationExampleGen: train pixels per class %s, %.2f%% ignored",
        census[features.TRAIN_SPLIT][pixels.CLASSES],
        100 * pixels.ignored_fraction(census[features.TRAIN_SPLIT]),
    )
    _check_written(items, rejected, on_disk)
    if failure:
        raise failure
    for warning in findings.warnings:
        _log.warning("SegmentationExampleGen: %s", warning)
    if findings.error:
        error = BackgroundOnlyError if findings.fails == pixels.BACKGROUND_ONLY else MostlyIgnoredError
        raise error(f"SegmentationExampleGen: {findings.error} Pixels per class: {report}")
    write_spec(dataset, examples_uri)
    return summary


def _rejection_error(
    listed: int, rejected: list, planned: dict, written: dict, max_rejected_fraction: float, report: str
) -> Optional[TooManyRejectedError]:
    """``TooManyRejectedError`` when more of the ``listed`` ids were rejected than
    ``max_rejected_fraction`` allows, ``EmptySplitError`` when rejection emptied a split (of
    ``written``), None when neither: made before the report, raised after it."""
    if len(rejected) / listed > max_rejected_fraction:
        return TooManyRejectedError(
            f"SegmentationExampleGen rejected {len(rejected)} of {listed} ids "
            f"({100 * len(rejected) / listed:.2f}%), more than max_rejected_fraction="
            f"{max_rejected_fraction} allows. Most common reasons: {_top_kinds(rejected)}. "
            f"Every rejected id and its reason: {report}"
        )
    for split, count in written.items():
        if not count:
            return EmptySplitError(
                f"split {split}: all {planned[split]} listed ids were rejected, and the pipeline cannot "
                f"train or evaluate on nothing. Every rejected id and its reason: {report}"
            )
    return None


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


def _pixel_table(census: dict) -> list:
    """report.md's table of ``pixels.rows``: per split, each class's pixels and their share of
    the labelled pixels, in class-id order, then the ignored pixels (no id: they may come from
    several values) and their share of all."""
    lines = ["| id | class | " + " | ".join(census) + " |", "|---|---|" + "---|" * len(census)]
    for row in pixels.rows(census):
        cells = (f"{n}" if share is None else f"{n} ({100 * share:.2f}%)" for n, share in row.cells)
        class_id = "" if row.class_id is None else row.class_id
        lines.append(f"| {class_id} | {row.label} | " + " | ".join(cells) + " |")
    return lines


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
        *(f"- warning: {warning}" for warning in summary.warnings),
        *([""] if summary.warnings else []),
        f"## Pixels per class (the run fails above {100 * summary.max_ignored_fraction:.2f}% of the "
        "train split's mask pixels ignored)",
        "",
        *_pixel_table(summary.pixels),
        "",
        "## Rejected records",
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
