"""SegmentationInferrer: batch inference in the pipeline, where TFX puts its BulkInferrer.

After the ServingPusher, it runs ``inference/job.py`` (the job ``deeplab-tfx infer`` runs) with the
model just pushed over the folder of unlabelled images ``inference.images`` names, and writes the
masks, the manifest and the dead letter into its output, a ``SegmentationMasks`` artifact whose
lineage in ML Metadata leads to the model, its push and the Examples of the run. What it adds to
BulkInferrer: masks at each image's own size, as palette PNGs people and labelling tools open,
instead of PredictionLogs of the model's raw outputs.

The folder may name spans as the data roots do (``/data/unlabelled/span-{SPAN}``): the node reads
the span this run ingested, so a scheduled run pre-annotates the span that arrived with the model
that learned up to it. A span of the labelled data whose unlabelled folder has not arrived fails
the node (after the push): a failed execution is not cached, so the next scheduled run infers it
once it is there. Its cache key is the model, the push and that span's Examples: a run whose data
did not change is a cache hit here too, and images added to a folder already inferred wait for
the next model (``deeplab-tfx infer`` on a copy of the output takes them in, keeping the rest).
A model that was not pushed infers nothing and says why on the artifact (``not_inferred_reason``),
as the pusher does for a model it did not push.
"""

import logging

import apache_beam as beam
from tfx import types
from tfx.dsl.component.experimental.annotations import (
    BeamComponentParameter,
    InputArtifact,
    OutputArtifact,
    Parameter,
)
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts

from components.segmentation_example_gen import spans
from core import artifacts
from core.config import InferenceConfig
from inference import job
from inference import model as model_lib


class SegmentationMasks(types.Artifact):
    """masks/<name>.png (+ overlays/<name>.jpg), manifest.jsonl, rejected.jsonl, summary.json
    (``inference/job.py``)."""

    TYPE_NAME = "deeplab_tfx.SegmentationMasks"


def folder_to_infer(images: str, span: int) -> str:
    """The folder of ``images`` this run reads: its span ``span`` when it names spans (the newest
    version of it), else itself. Raises ``spans.SpanError`` naming the pattern when that span is
    not there: the run fails at this node (the model is pushed, the rest recorded), and it is not
    cached, so the next scheduled run, once the images are there, infers them."""
    requested = span if spans.has_specs(images) else spans.NEWEST
    try:
        return spans.resolve({artifacts.IMAGES: images}, requested).roots[artifacts.IMAGES]
    except spans.SpanError as e:
        raise spans.SpanError(f"no unlabelled images for span {span}: {e}") from None


@component(use_beam=True)
def SegmentationInferrer(  # noqa: N802 - TFX component names are classes.
    model: InputArtifact[standard_artifacts.Model],
    pushed_model: InputArtifact[standard_artifacts.PushedModel],
    examples: InputArtifact[standard_artifacts.Examples],
    masks: OutputArtifact[SegmentationMasks],
    images: Parameter[str],
    overlay: Parameter[bool] = InferenceConfig.overlay,
    batch_pixels: Parameter[int] = InferenceConfig.batch_pixels,
    max_rejected_fraction: Parameter[float] = InferenceConfig.max_rejected_fraction,
    max_batch_images: Parameter[int] = InferenceConfig.max_batch_images,
    beam_pipeline: BeamComponentParameter[beam.Pipeline] = None,
):
    """Masks of the images under ``images`` (this run's span of it) by the model ``pushed_model``
    pushed; nothing, with the reason recorded, when it pushed none. Fails when that span is not
    there, when the folder has no file, and when more than ``max_rejected_fraction`` of its inputs
    are rejected (``inference/job.py``)."""
    if not pushed_model.get_int_custom_property(artifacts.PUSHED):
        reason = pushed_model.get_string_custom_property(artifacts.NOT_PUSHED_REASON)
        why_not = f"model {model.uri} was not pushed ({reason})"
        logging.warning("SegmentationInferrer: nothing inferred: %s", why_not)
        masks.set_int_custom_property(artifacts.NUM_MASKS, 0)
        masks.set_string_custom_property(artifacts.NOT_INFERRED_REASON, why_not)
        return
    folder = folder_to_infer(images, examples.span)
    ref = model_lib.resolve(pushed_model.get_string_custom_property(artifacts.PUSHED_DESTINATION))
    summary = job.run(
        lambda: beam_pipeline, [folder], masks.uri, ref, overlay, batch_pixels, max_rejected_fraction,
        max_batch_images,
    )  # fmt: skip
    masks.set_string_custom_property(artifacts.IMAGES, folder)
    masks.set_int_custom_property(artifacts.NUM_MASKS, summary["masks"])
    masks.set_int_custom_property(artifacts.NUM_REJECTED, summary["rejected"])
    masks.set_int_custom_property(artifacts.MODEL_VERSION, ref.version or 0)
    logging.info(
        "SegmentationInferrer: %d masks of %s by version %s in %s (%d rejected)",
        summary["masks"], folder, ref.version, masks.uri, summary["rejected"],
    )  # fmt: skip
