"""The batch-inference Beam job: every input's mask at its own size, a manifest, a dead letter.

    patterns -> files (one listing per pattern) -> each file once -> images / records -> by name
    (a shuffle: the work spreads over the workers, and two inputs of one name are caught) -> kept,
    or read and sized -> batches of ``batch_pixels`` -> serving_default -> masks/<name>.png
    (+ overlays/<name>.jpg)

Writes under ``output``:

- ``masks/<name>.png``: the class ids as a palette PNG in the model's classes' colours (its
  dataset spec), at the image's own size, what ``serving_default`` answers for it (the same
  signature, called on batches: on CPU an image's mask does not depend on its batch, which the
  tests check pixel for pixel). ``tEXt`` chunks name the model that drew it (its fingerprint) and
  the input's checksum.
- ``overlays/<name>.jpg`` with ``overlay``: the image with its mask painted over it, its JPEG
  comment naming the same.
- ``manifest.jsonl``: one row per input that has a mask: input, mask, overlay, size, the classes
  present, the model's version and fingerprint.
- ``rejected.jsonl``: one row per input that has none, with its kind (``inputs.KINDS``) and reason,
  as ingestion's dead letter has them; the job goes on without it, and fails at the end when more
  than ``max_rejected_fraction`` of the inputs were rejected (a model that refuses every image is
  not a data problem).
- ``summary.json``: counts, the model, the time.

Resumable: an input whose mask is there, drawn by this model from these very bytes (and its
overlay, when asked for), is kept as it is and not sent to the model again; any other is redrawn.
Every file is written whole (``storage.write_file``), the mask last, so a job killed midway
leaves no mask that a re-run would take for done. Outputs of inputs that are gone are left alone.

Only the data's problems are dead-lettered (``core/decoding.py``): a storage outage, or a model
that fails on a valid image (it is tried on one when a worker loads it), fails the job. An image
the signature refuses (its row's ``error``: too many pixels, or a body that does not decode) is
dead-lettered from the batch's answer, the batch's other images drawn; a model exported before
the signatures refused rows fails the whole call instead, and that batch is sent again an image
at a time.

Masks, overlays and the inputs go through ``tf.io.gfile``; the listing, the manifest and the dead
letter through Beam's filesystems: both know ``gs://`` and local paths (TF's ``ram://`` is not a
Beam filesystem).
"""

import dataclasses
import io
import json
import logging
import os
import time
from typing import Iterable, Optional

import apache_beam as beam
import numpy as np
import tensorflow as tf
from apache_beam.utils import shared
from PIL import Image

from core import artifacts, beam_metrics, decoding, storage
from core.config import InferenceConfig
from core.signatures import BATCH_LIMIT, ERROR, IMAGE_LIMIT, IMAGES, SERVING_DEFAULT, crop_masks
from inference import inputs
from inference.model import ModelRef
from serving.models import error_reason
from transform import palette

_log = logging.getLogger(__name__)
NAMESPACE = "deeplab_tfx.infer"
MASKS_DIR = "masks"
OVERLAYS_DIR = "overlays"
MANIFEST_FILE = "manifest.jsonl"
REJECTED_FILE = artifacts.REJECTED_FILE
SUMMARY_FILE = artifacts.SUMMARY_FILE
# PNG tEXt keywords (the mask) and the JPEG comment (the overlay): which model drew it, from which bytes.
MODEL_TAG = "deeplab-tfx-model"
INPUT_TAG = "deeplab-tfx-input"
_MANIFEST, _REJECTED = "manifest", "rejected"
# Counters (NAMESPACE): masks drawn by this run, masks kept from an earlier one, model calls that
# answered (a batch, its refused images' rows included; or one image of a batch that a model
# exported before the signatures refused rows failed whole).
WRITTEN, KEPT, BATCHES = "written", "kept", "batches"


class TooManyRejectedError(RuntimeError):
    """More inputs were rejected than ``max_rejected_fraction`` allows."""


def mask_path(output: str, name: str) -> str:
    return os.path.join(output, MASKS_DIR, f"{name}.png")


def overlay_path(output: str, name: str) -> str:
    return os.path.join(output, OVERLAYS_DIR, f"{name}.jpg")


@dataclasses.dataclass(frozen=True)
class _Sized:
    """An input read and ready for the model: its bytes, their checksum, its declared pixels."""

    input: inputs.Input
    data: bytes
    checksum: str
    pixels: int


def _reject(source: str, kind: str, reason: str):
    beam.metrics.Metrics.counter(NAMESPACE, f"rejected_{kind}").inc()
    _log.warning("infer: rejected %s (%s): %s", source, kind, reason)
    return beam.pvalue.TaggedOutput(_REJECTED, inputs.rejection(source, kind, reason))


def _expand(path_and_base: tuple):
    """A matched file -> its ``Input`` (an image) or its records' (a TFRecord file)."""
    path, base = path_and_base
    if not inputs.is_tfrecord(path):
        yield inputs.image_input(path, base)
        return
    for item in inputs.records(path):
        yield item if isinstance(item, inputs.Input) else _reject(item["input"], item["kind"], item["reason"])


def _one_per_name(name_and_inputs: tuple):
    """The input of a name, or all of them rejected when several share it."""
    name, found = name_and_inputs
    found = sorted(found, key=lambda item: item.source)
    if len(found) == 1:
        yield found[0]
        return
    for item in found:
        others = ", ".join(other.source for other in found if other is not item)
        reason = f"its outputs ({MASKS_DIR}/{name}.png) would also be those of {others}"
        yield _reject(item.source, inputs.DUPLICATE_NAME, reason)


class _Outputs:
    """What the job writes for one input, how it tells its own earlier outputs, and the manifest row."""

    def __init__(self, output: str, model: ModelRef, overlay: bool):
        self.output, self.model, self.overlay = output, model, overlay

    def tags(self, checksum: str) -> dict:
        return {MODEL_TAG: self.model.fingerprint, INPUT_TAG: checksum}

    def row(self, item: inputs.Input, mask: np.ndarray) -> dict:
        spec = self.model.dataset
        overlay = overlay_path(self.output, item.name) if self.overlay else None
        return {
            "input": item.source,
            "mask": os.path.relpath(mask_path(self.output, item.name), self.output),
            "overlay": overlay and os.path.relpath(overlay, self.output),
            "height": int(mask.shape[0]),
            "width": int(mask.shape[1]),
            "classes": [spec.class_names[i] for i in np.unique(mask) if i < spec.num_classes],
            "model_version": self.model.version,
            "model_fingerprint": self.model.fingerprint,
        }

    def kept(self, item: inputs.Input, checksum: str) -> Optional[np.ndarray]:
        """The mask an earlier run of this model drew from these bytes (with its overlay, if asked
        for), or None."""
        tags = self.tags(checksum)
        try:
            with Image.open(io.BytesIO(storage.read_file(mask_path(self.output, item.name)))) as png:
                png.load()
                if any(png.text.get(key) != value for key, value in tags.items()):
                    return None
                mask = np.asarray(png)
            if self.overlay:
                with Image.open(io.BytesIO(storage.read_file(overlay_path(self.output, item.name)))) as jpeg:
                    if jpeg.info.get("comment", b"") != _comment(tags).encode():
                        return None
        except tf.errors.NotFoundError:
            return None
        except decoding.IMAGE_DATA_ERRORS:  # a damaged output: drawn again
            return None
        return mask

    def write(self, sized: _Sized, mask: np.ndarray) -> None:
        """The overlay first, the mask last: a mask there means its input is done. Raises
        ``decoding.Rejected`` when PIL cannot decode for the overlay what TF decoded for the mask."""
        colours, tags = self.model.dataset.palette(), self.tags(sized.checksum)
        path = overlay_path(self.output, sized.input.name)
        if self.overlay:
            try:
                jpeg = palette.overlay_jpeg(
                    sized.data, mask, colours, background=self.model.dataset.background_id,
                    comment=_comment(tags),
                )  # fmt: skip
            except decoding.IMAGE_DATA_ERRORS as e:  # ValueError among them: a GIF's frame and screen
                raise decoding.Rejected(inputs.CORRUPT_IMAGE, f"overlay: {type(e).__name__}: {e}") from None
            _makedirs(os.path.dirname(path))
            storage.write_file(path, jpeg)
        elif tf.io.gfile.exists(path):  # an earlier run's, of another model or other bytes
            tf.io.gfile.remove(path)
        path = mask_path(self.output, sized.input.name)
        _makedirs(os.path.dirname(path))
        storage.write_file(path, palette.encode_palette_png(mask, colours, text=tags))


def _comment(tags: dict) -> str:
    """The overlay's JPEG comment: the mask's tags, as JSON."""
    return json.dumps(tags, sort_keys=True)


def _makedirs(path: str) -> None:
    """Local disk needs a mask's folder; an object store has none (and a marker per mask costs calls)."""
    if storage.is_local(path):
        os.makedirs(path, exist_ok=True)


class _Prepare(beam.DoFn):
    """Keeps what an earlier run of this model drew from the same bytes; reads and sizes the rest."""

    def __init__(self, outputs: _Outputs):
        self._outputs = outputs

    def process(self, item: inputs.Input):
        try:
            data = inputs.read(item)
        except decoding.Rejected as e:
            yield _reject(item.source, e.kind, e.reason)
            return
        checksum = inputs.checksum(data)
        mask = self._outputs.kept(item, checksum)
        if mask is not None:
            beam.metrics.Metrics.counter(NAMESPACE, KEPT).inc()
            yield beam.pvalue.TaggedOutput(_MANIFEST, self._outputs.row(item, mask))
            return
        if inputs.encoding(data) is None:
            yield _reject(item.source, inputs.NOT_AN_IMAGE, inputs.not_an_image(data))
            return
        try:
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
        except Image.DecompressionBombError as e:  # over PIL's limit: far over any model's
            yield _reject(item.source, inputs.TOO_LARGE, str(e))
            return
        except decoding.IMAGE_DATA_ERRORS as e:
            reason = f"cannot read its header: {type(e).__name__}: {e}"
            yield _reject(item.source, inputs.CORRUPT_IMAGE, reason)
            return
        yield _Sized(item, data, checksum, width * height)


class _LoadedModel:
    """The loaded SavedModel, shared by every thread of a worker process (``shared.Shared``)."""

    def __init__(self, path: str):
        self.module = tf.saved_model.load(path)  # keeps the variables alive
        self.signature = self.module.signatures[SERVING_DEFAULT]


# A 2x2 PNG every model of ours segments: what a worker tries its model on before any input.
_PROBE = palette.encode_palette_png(np.zeros((2, 2), np.uint8))


class _Predict(beam.DoFn):
    """``serving_default`` on a batch, the model loaded once per worker process; an image the
    signature refuses is dead-lettered with its reason, and costs only its own mask."""

    def __init__(self, outputs: _Outputs):
        self._outputs = outputs
        self._shared = shared.Shared()
        self._model = None

    def setup(self):
        path = self._outputs.model.path
        self._model = self._shared.acquire(lambda: _LoadedModel(path), tag=self._outputs.model.fingerprint)
        # A model that fails on a valid image fails here, loudly, not image by image in the dead letter.
        try:
            [refused] = self._call([_PROBE])[1]
        except tf.errors.OpError as e:
            refused = error_reason(e.message)
        if refused:
            raise RuntimeError(f"the model at {path} fails on a valid 2x2 PNG: {refused}")

    def _call(self, images: list) -> tuple:
        """``(masks, reasons)``: each image's mask, and why the signature refused it ("" if it did
        not; always "" from a model exported before the signatures had an ``error`` output)."""
        outputs = self._model.signature(**{IMAGES: tf.constant(images, dtype=tf.string)})
        reasons = [r.decode() for r in outputs[ERROR].numpy()] if ERROR in outputs else [""] * len(images)
        return crop_masks(outputs), reasons

    def _check_budget(self, count: int, reasons: list) -> None:
        """A batch within inference.batch_pixels that the model finds above its own pixel budget
        is the job's setting's fault: ValueError, not the images' dead letter."""
        over = next((reason for reason in reasons if BATCH_LIMIT in reason), None)
        if over and count > 1:
            raise ValueError(
                f"the model at {self._outputs.model.path} refuses a batch of {count} images "
                f"within inference.batch_pixels: lower it to the model's own limit ({over})"
            )

    def process(self, batch: list):
        if not batch:
            return
        try:
            masks, reasons = self._call([sized.data for sized in batch])
        except tf.errors.InvalidArgumentError as e:  # a model exported before the signatures refused rows
            reason = error_reason(e.message)
            if len(batch) == 1:
                yield _reject(batch[0].input.source, *_refusal(batch[0], reason, e))
                return
            self._check_budget(len(batch), [reason])
            for sized in batch:
                yield from self.process([sized])
            return
        self._check_budget(len(batch), reasons)
        beam.metrics.Metrics.counter(NAMESPACE, BATCHES).inc()
        for sized, mask, reason in zip(batch, masks, reasons, strict=True):
            if reason:
                yield _reject(sized.input.source, *_refusal(sized, reason))
                continue
            try:
                self._outputs.write(sized, mask)
            except decoding.Rejected as e:
                yield _reject(sized.input.source, e.kind, e.reason)
                continue
            beam.metrics.Metrics.counter(NAMESPACE, WRITTEN).inc()
            yield self._outputs.row(sized.input, mask)


def _refusal(sized: _Sized, reason: str, error: Optional[Exception] = None) -> tuple:
    """``(kind, reason)`` of an image the signature refused: more pixels than the model
    takes, or an image that does not decode. One that PIL decodes whole but the model refuses is
    the model's fault, which fails the job rather than hide in the dead letter."""
    if IMAGE_LIMIT in reason or BATCH_LIMIT in reason:
        return inputs.TOO_LARGE, reason
    try:
        with Image.open(io.BytesIO(sized.data)) as image:
            image.load()
    except decoding.IMAGE_DATA_ERRORS as e:
        return inputs.CORRUPT_IMAGE, f"{reason} (PIL: {type(e).__name__}: {e})"
    raise RuntimeError(f"the model refused {sized.input.source}, an image that decodes: {reason}") from error


def _matches(numbered_listing: tuple) -> list:
    """``(file, (pattern's number, base folder))`` for every file a pattern matches."""
    number, (glob, base) = numbered_listing
    return [(path, (number, base)) for path in inputs.matched_files(glob)]


def build(
    pipeline: beam.Pipeline,
    listings: list,
    output: str,
    model: ModelRef,
    overlay: bool = InferenceConfig.overlay,
    batch_pixels: int = InferenceConfig.batch_pixels,
    max_batch_images: int = InferenceConfig.max_batch_images,
) -> None:
    """Adds the job to ``pipeline``; ``listings``: ``inputs.listing`` of each pattern, in order."""
    outputs = _Outputs(output, model, overlay)
    least = max(1, batch_pixels // max_batch_images)
    own = output.rstrip("/") + "/"
    files = (
        pipeline
        | "Patterns" >> beam.Create(list(enumerate(listings)))
        | "Match" >> beam.FlatMap(_matches)
        # Not the job's own outputs, when the output folder is under an input folder.
        | "NotOwnOutputs" >> beam.Filter(lambda entry: not entry[0].startswith(own))
        # A file two patterns match is read once, named after the first pattern; the shuffle also
        # spreads the files listed by one worker over all of them.
        | "OncePerFile" >> beam.CombinePerKey(min)
        | "BaseFolder" >> beam.MapTuple(lambda path, first: (path, first[1]))
    )
    expanded = files | "Expand" >> beam.FlatMap(_expand).with_outputs(_REJECTED, main="inputs")
    unique = (
        expanded.inputs
        | "ByName" >> beam.Map(lambda item: (item.name, item))
        | "GroupByName" >> beam.GroupByKey()
        | "OnePerName" >> beam.FlatMap(_one_per_name).with_outputs(_REJECTED, main="inputs")
    )
    prepared = unique.inputs | "Prepare" >> beam.ParDo(_Prepare(outputs)).with_outputs(
        _MANIFEST, _REJECTED, main="sized"
    )
    predicted = (
        prepared.sized
        # Fixed budget (not Beam's timing-adaptive sizes): batches of up to batch_pixels declared
        # pixels and max_batch_images images (each weighs at least batch_pixels / max_batch_images);
        # an image larger than the budget goes alone.
        | "Batch"
        >> beam.BatchElements(
            min_batch_size=batch_pixels,
            max_batch_size=batch_pixels,
            element_size_fn=lambda item: max(item.pixels, least),
        )
        | "Predict" >> beam.ParDo(_Predict(outputs)).with_outputs(_REJECTED, main="rows")
    )
    rows = (prepared[_MANIFEST], predicted.rows) | "Manifest" >> beam.Flatten()
    rejected = (
        expanded[_REJECTED],
        unique[_REJECTED],
        prepared[_REJECTED],
        predicted[_REJECTED],
    ) | "Rejected" >> beam.Flatten()
    written = (("Manifest", rows, MANIFEST_FILE), ("DeadLetter", rejected, REJECTED_FILE))
    for label, collection, name in written:
        stem, ext = os.path.splitext(name)
        _ = (
            collection
            | f"{label}Json" >> beam.Map(lambda row: json.dumps(row, sort_keys=True))
            | f"Write{label}"
            >> beam.io.WriteToText(
                os.path.join(output, stem), file_name_suffix=ext, num_shards=1, shard_name_template=""
            )
        )


def read_jsonl(path: str) -> list:
    if not tf.io.gfile.exists(path):
        return []
    return [json.loads(line) for line in storage.read_file(path, binary=False).splitlines() if line.strip()]


def _count_lines(path: str) -> int:
    """Rows of a JSON-lines file, streamed: an archive's manifest need not fit in memory."""
    if not tf.io.gfile.exists(path):
        return 0
    with tf.io.gfile.GFile(path, "r") as f:
        return sum(1 for line in f if line.strip())


def run(
    make_pipeline,
    patterns: Iterable[str],
    output: str,
    model: ModelRef,
    overlay: bool = InferenceConfig.overlay,
    batch_pixels: int = InferenceConfig.batch_pixels,
    max_rejected_fraction: float = InferenceConfig.max_rejected_fraction,
    max_batch_images: int = InferenceConfig.max_batch_images,
) -> dict:
    """Runs the job on ``make_pipeline()`` and writes ``summary.json``; returns the summary.

    Raises ``inputs.NoInputError`` before anything runs when a pattern matches no file, and
    ``TooManyRejectedError`` after the job (its outputs written) when more than
    ``max_rejected_fraction`` of the inputs were rejected.
    """
    patterns = list(patterns)
    output = inputs.absolute(output.rstrip("/"))
    listings = inputs.common_base([inputs.listing(pattern) for pattern in patterns])
    for pattern, (_, base) in zip(patterns, listings, strict=True):
        if base == output or base.startswith(output + "/"):
            raise inputs.NoInputError(
                f"--output {output} holds the folder of --input {pattern}: give an output outside it"
            )
    start = time.time()
    tf.io.gfile.makedirs(output)
    for name in (MANIFEST_FILE, REJECTED_FILE, SUMMARY_FILE):  # no stale figures if this run fails
        if tf.io.gfile.exists(os.path.join(output, name)):
            tf.io.gfile.remove(os.path.join(output, name))
    pipeline = make_pipeline()
    build(pipeline, listings, output, model, overlay, batch_pixels, max_batch_images)
    result = pipeline.run()
    result.wait_until_finish()
    counters = beam_metrics.counters(result, NAMESPACE)
    masks = _count_lines(os.path.join(output, MANIFEST_FILE))
    rejected = read_jsonl(os.path.join(output, REJECTED_FILE))
    by_kind = {kind: sum(row["kind"] == kind for row in rejected) for kind in inputs.KINDS}
    summary = {
        "inputs": patterns,
        "output": output,
        "model": model.describe(),
        "masks": masks,
        # From Beam's counters: None on a runner without metrics.
        "written": counters.get(WRITTEN, 0) if counters is not None else None,
        "kept": counters.get(KEPT, 0) if counters is not None else None,
        "batches": counters.get(BATCHES, 0) if counters is not None else None,
        "rejected": len(rejected),
        "rejected_by_kind": {kind: n for kind, n in by_kind.items() if n},
        "overlay": overlay,
        "batch_pixels": batch_pixels,
        "max_batch_images": max_batch_images,
        "seconds": round(time.time() - start, 1),
    }
    storage.write_file(os.path.join(output, SUMMARY_FILE), json.dumps(summary, indent=2, sort_keys=True))
    _log.info("infer: %s", summary)
    total = masks + len(rejected)
    if total and len(rejected) / total > max_rejected_fraction:
        raise TooManyRejectedError(
            f"{len(rejected)} of {total} inputs rejected ({summary['rejected_by_kind']}), more than "
            f"inference.max_rejected_fraction={max_rejected_fraction}: see "
            f"{os.path.join(output, REJECTED_FILE)}"
        )
    return summary
