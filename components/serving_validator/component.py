"""ServingValidator: TFX's InfraValidator's place, with TF's bundle loader instead of a container.

Between the Evaluator and the ServingPusher: a candidate the Evaluator blessed is loaded and run
the way TF Serving's server does, in a child process under a serving pod's memory and time
limits (``serving/validation.py``), with the warm-up records the pusher will ship and the first
eval examples; refused if it cannot load or answer, outgrows the limits, or answers otherwise
than the Evaluator scored. Its output is TFX's ``InfraBlessing`` (``blessed`` and the
``INFRA_BLESSED`` / ``INFRA_NOT_BLESSED`` file, as TFX's InfraValidator writes it), with the load
time, p50/p99 latency per image and peak memory as properties and in ``validation.json``, so ML
Metadata, the report and the pusher read one artifact whichever validator ran.

A candidate the Evaluator did not bless is not loaded (it will not be pushed either way); the
blessing says so, and the pusher reports the Evaluator's reasons.
"""

import json
import logging
import os

from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts

from core import artifacts, storage
from core.config import EvaluatorConfig, InfraValidatorConfig, PusherConfig
from serving import validation, warmup

NOT_BLESSED_BY_EVALUATOR = "the Evaluator did not bless it: not loaded"


@component
def ServingValidator(  # noqa: N802 - TFX component names are classes.
    model: InputArtifact[standard_artifacts.Model],
    model_blessing: InputArtifact[standard_artifacts.ModelBlessing],
    examples: InputArtifact[standard_artifacts.Examples],
    blessing: OutputArtifact[standard_artifacts.InfraBlessing],
    model_name: Parameter[str] = PusherConfig.model_name,
    warmup_requests: Parameter[int] = PusherConfig.warmup_requests,
    num_examples: Parameter[int] = InfraValidatorConfig.num_examples,
    max_memory_mb: Parameter[int] = InfraValidatorConfig.max_memory_mb,
    timeout_seconds: Parameter[int] = InfraValidatorConfig.timeout_seconds,
    max_mask_disagreement: Parameter[float] = InfraValidatorConfig.max_mask_disagreement,
    evaluator_batch_size: Parameter[int] = EvaluatorConfig.batch_size,
):
    """Blesses ``model`` for serving if TF's bundle loader loads it within the limits and it
    answers the warm-up records and ``num_examples`` eval examples as the Evaluator scored them
    (``evaluator_batch_size`` a call). The warm-up records it replays (those the pusher will ship)
    stay in its output, at the path they have in a version (``warmup.WARMUP_FILE``)."""
    if not model_blessing.get_int_custom_property(artifacts.BLESSED):
        _record(blessing, validation.Outcome(False, NOT_BLESSED_BY_EVALUATOR))
        return
    warmup_file = ""
    if warmup_requests > 0:
        # The records the pusher ships with the version, replayed first as TF Serving replays them.
        logs = warmup.prediction_logs(warmup.eval_images(examples.uri, warmup_requests), model_name)
        warmup_file = warmup.write(blessing.uri, logs)
    outcome = validation.validate(
        artifacts.serving_model_dir(model.uri),
        warmup.eval_records(examples.uri, num_examples),
        warmup_file=warmup_file,
        max_memory_mb=max_memory_mb,
        timeout_seconds=timeout_seconds,
        max_mask_disagreement=max_mask_disagreement,
        reference_batch_size=evaluator_batch_size,
    )
    _record(blessing, outcome)
    if outcome.validated:
        logging.info(
            "ServingValidator: %s loads in %.1f s, answers in %.0f ms (p50) / %.0f ms (p99) per image, "
            "peak %.0f MB", model.uri, outcome.load_seconds, outcome.latency_p50_ms, outcome.latency_p99_ms,
            outcome.peak_memory_mb,
        )  # fmt: skip
    else:
        logging.warning("ServingValidator: %s refused: %s", model.uri, outcome.reason)


def _record(blessing, outcome: validation.Outcome) -> None:
    """The verdict on the InfraBlessing, as TFX's InfraValidator marks it, and the figures."""
    marker = artifacts.INFRA_BLESSED_FILE if outcome.validated else artifacts.INFRA_NOT_BLESSED_FILE
    storage.write_file(os.path.join(blessing.uri, marker), "")
    storage.write_file(os.path.join(blessing.uri, artifacts.VALIDATION_FILE), json.dumps(outcome.to_json()))
    blessing.set_int_custom_property(artifacts.BLESSED, int(outcome.validated))
    if not outcome.validated:
        blessing.set_string_custom_property(artifacts.NOT_VALIDATED_REASON, outcome.reason)
    # What was measured (a refusal before the load measured nothing but, maybe, the memory).
    figures = (
        artifacts.LOAD_SECONDS,
        artifacts.LATENCY_P50_MS,
        artifacts.LATENCY_P99_MS,
        artifacts.PEAK_MEMORY_MB,
    )
    for key in figures:
        if getattr(outcome, key):
            blessing.set_float_custom_property(key, getattr(outcome, key))
