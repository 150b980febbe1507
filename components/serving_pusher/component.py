"""ServingPusher: TFX's Pusher contract, with TF Serving's integer versions written atomically.

TFX 1.16's Pusher names versions by Unix time and copies files straight into the version
directory, which TF Serving may load while it is half-written. This one keeps the Pusher's
outputs (a ``PushedModel`` with ``pushed``, ``pushed_destination``, ``pushed_version``, so
TFX tooling reads it as usual) and differs where serving needs it: versions 1, 2, 3, ...
are never loaded half-written, on local disk or object stores, and concurrent pushes do not
collide (``serving/layout.py`` says what holds where), carry warm-up requests built from eval
images (``serving/warmup.py``), and a model that was not blessed is not pushed, with the Evaluator's
reasons recorded on the output in plain words; nor is one the serving validation refused
(``infra_blessing``: our ServingValidator's or TFX's InfraValidator's; none with
``infra_validator.runtime: none``), with its reason. Every
file goes through ``tf.io.gfile``, so ``model_base_path`` may be ``gs://`` as well as a local
directory.
"""

import logging
import os

from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts

from core import artifacts
from core.config import PusherConfig
from evaluation import verdict
from serving import layout, warmup


@component
def ServingPusher(  # noqa: N802 - TFX component names are classes.
    model: InputArtifact[standard_artifacts.Model],
    model_blessing: InputArtifact[standard_artifacts.ModelBlessing],
    evaluation: InputArtifact[standard_artifacts.ModelEvaluation],
    examples: InputArtifact[standard_artifacts.Examples],
    pushed_model: OutputArtifact[standard_artifacts.PushedModel],
    model_base_path: Parameter[str],
    model_name: Parameter[str],
    warmup_requests: Parameter[int] = PusherConfig.warmup_requests,
    infra_blessing: InputArtifact[standard_artifacts.InfraBlessing] = None,
):
    """Pushes a blessed, serving-validated model to ``model_base_path/<next version>``; records
    why not otherwise."""
    why = ""
    if not model_blessing.get_int_custom_property(artifacts.BLESSED):
        why = "; ".join(verdict.reasons(evaluation.uri))
    elif infra_blessing is not None and not infra_blessing.get_int_custom_property(artifacts.BLESSED):
        # TFX's InfraValidator gives no reason: its logs have it.
        reason = infra_blessing.get_string_custom_property(artifacts.NOT_VALIDATED_REASON)
        why = f"refused by the serving validation: {reason or 'see the InfraValidator log'}"
    if why:
        logging.warning("ServingPusher: model %s not pushed: %s", model.uri, why)
        pushed_model.set_int_custom_property(artifacts.PUSHED, 0)
        pushed_model.set_string_custom_property(artifacts.NOT_PUSHED_REASON, why)
        return

    def add_warmup(version_dir: str) -> None:
        if warmup_requests > 0:
            images = warmup.eval_images(examples.uri, warmup_requests)
            warmup.write(version_dir, warmup.prediction_logs(images, model_name))

    version, new = layout.push(
        artifacts.serving_model_dir(model.uri), model_base_path, source=model.uri, add_files=add_warmup
    )
    destination = os.path.join(model_base_path, str(version))
    logging.info("ServingPusher: %s version %d at %s", "pushed" if new else "kept", version, destination)
    pushed_model.set_int_custom_property(artifacts.PUSHED, 1)
    pushed_model.set_string_custom_property(artifacts.PUSHED_DESTINATION, destination)
    pushed_model.set_string_custom_property(artifacts.PUSHED_VERSION, str(version))
