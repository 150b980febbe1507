"""RunReport: the last step of the DAG, so every orchestrator produces the report.

Writes ``index.html``, its PNGs and ``report.json`` (the same numbers, for scripts) into its
output artifact, then publishes a copy to ``<pipeline_root>/report/`` (``publish_dir``), the
place users look. It reads what the run produced: split counts, pixels per class and ignored of
each split, unread files and data warnings (ExampleGen), class pixel counts (Transform),
training history (Trainer's ModelRun), scores and slices (Evaluator, through
``tfma.load_eval_result``), the blessing and its reasons, the serving validation's load time,
latency and memory, and the pushed version (or why none). Sample
predictions come from the model's own ``serving_examples`` signature, as TFMA's did. Class
names and colours are the dataset spec's that travels with the Examples
(``dataset_spec.of_examples``): tables, figures, masks and overlays show that dataset's classes.

Everything goes through ``tf.io.gfile``: with a ``gs://`` pipeline root (Kubeflow, Vertex AI)
the report is written there, not to a local directory inside the container. How a report is
published so that a page's figures are there when a reader loads them, and when that can fail,
is ``publish``'s docstring.
"""

import hashlib
import json
import os

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
from tfx import types
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts

from components.data_gate.component import DECISION_FILE, DataGateDecision
from components.run_report import eval_results, figures, page
from core import artifacts, dataset_spec, features, metrics, signatures, storage
from core.config import ReportConfig
from evaluation import tfma_metrics, verdict
from transform import preprocessing

INDEX = "index.html"
REPORT_JSON = "report.json"
FIGURE_SUFFIX = ".png"


class RunReport(types.Artifact):
    """index.html, its PNG figures and report.json."""

    TYPE_NAME = "deeplab_tfx.RunReport"


def eval_samples(examples_uri: str, model_dir: str, count: int) -> list:
    """``[(name, jpeg bytes, truth ids, predicted ids)]`` for the first ``count`` eval images."""
    pattern = artifacts.split_files(examples_uri, features.EVAL_SPLIT)
    records = [
        r.numpy() for r in tf.data.TFRecordDataset(sorted(tf.io.gfile.glob(pattern)), "GZIP").take(count)
    ]
    if not records:
        return []
    predict = tf.saved_model.load(model_dir).signatures[signatures.SERVING_EXAMPLES]
    out = predict(**{signatures.EXAMPLES: tf.constant(records)})
    samples = []
    for i, record in enumerate(records):
        feature = tf.train.Example.FromString(record).features.feature
        truth = tfma_metrics.decode_mask(feature[features.MASK_KEY].bytes_list.value[0])
        h, w = int(out[signatures.HEIGHT][i]), int(out[signatures.WIDTH][i])
        name = feature[features.FILENAME_KEY].bytes_list.value[0].decode()
        samples.append(
            (
                name,
                feature[features.IMAGE_KEY].bytes_list.value[0],
                truth,
                out[signatures.CLASS_IDS][i, :h, :w].numpy(),
            )
        )
    return samples


def figure_name(key: str, png: bytes) -> str:
    """``<key>-<hash of the content>.png``: a new figure never takes the name of an old one."""
    return f"{key}-{hashlib.sha256(png).hexdigest()[:16]}{FIGURE_SUFFIX}"


def decision_of(blessing: types.Artifact, evaluation: types.Artifact, pushed_model: types.Artifact) -> dict:
    """``report.json``'s decision, keyed by the ML Metadata properties it is read from."""
    blessed = bool(blessing.get_int_custom_property(artifacts.BLESSED))
    decision = {artifacts.BLESSED: blessed, "reasons": [] if blessed else verdict.reasons(evaluation.uri)}
    if pushed_model.get_int_custom_property(artifacts.PUSHED):
        decision[artifacts.PUSHED_VERSION] = int(
            pushed_model.get_string_custom_property(artifacts.PUSHED_VERSION)
        )
        decision[artifacts.PUSHED_DESTINATION] = pushed_model.get_string_custom_property(
            artifacts.PUSHED_DESTINATION
        )
    elif pushed_model.has_custom_property(artifacts.NOT_PUSHED_REASON):
        decision[artifacts.NOT_PUSHED_REASON] = pushed_model.get_string_custom_property(
            artifacts.NOT_PUSHED_REASON
        )
    return decision


def build(out_dir: str, pipeline_name: str, examples, transform_graph, model, model_run, evaluation,
          blessing, pushed_model, samples: int, gate_decision=None, infra_blessing=None) -> dict:  # fmt: skip
    """Writes the report into ``out_dir``; returns what ``report.json`` holds."""
    tf.io.gfile.makedirs(out_dir)
    spec = dataset_spec.of_examples(examples.uri)
    scores = eval_results.load(evaluation.uri)
    if tuple(scores["class_names"]) != spec.class_names:
        raise ValueError(
            f"the evaluation {evaluation.uri} has classes {list(scores['class_names'])} but the Examples "
            f"{examples.uri} have {list(spec.class_names)}: the Evaluator was configured for another dataset"
        )
    overall = scores["overall"]
    split_counts = {s: examples.get_int_custom_property(artifacts.num_examples(s)) for s in features.SPLITS}
    counts = preprocessing.read_class_counts(tft.TFTransformOutput(transform_graph.uri), spec.num_classes)
    class_pixels = {spec.class_names[int(t)] if t.isdigit() and int(t) < spec.num_classes else t: n
                    for t, n in counts.items()}  # fmt: skip
    figs = {}

    def draw(key, fn, *args):
        png = fn(*args)
        figs[key] = figure_name(key, png)
        storage.write_file(os.path.join(out_dir, figs[key]), png)

    draw(
        page.CLASS_IOU_FIGURE,
        figures.class_iou_bars,
        overall[metrics.CLASS_IOU],
        overall[metrics.MEAN_IOU],
        spec,
    )
    draw(
        page.CONFUSION_FIGURE, figures.confusion_heatmap, overall[metrics.CONFUSION_MATRIX], spec.class_names
    )
    picked = eval_samples(examples.uri, artifacts.serving_model_dir(model.uri), samples)
    if picked:
        draw(page.SAMPLES_FIGURE, figures.samples_grid, picked, spec)
    history_path = os.path.join(model_run.uri, artifacts.HISTORY_FILE)
    history = []
    if tf.io.gfile.exists(history_path):
        history = json.loads(storage.read_file(history_path, binary=False))[artifacts.HISTORY_EPOCHS]
        draw(page.TRAINING_FIGURE, figures.training_curves, history)
    draw(page.DATA_FIGURE, figures.data_summary, split_counts, class_pixels)

    report = {
        "pipeline_name": pipeline_name,
        "model_uri": model.uri,
        "dataset": spec.name,
        "class_names": list(spec.class_names),
        "decision": decision_of(blessing, evaluation, pushed_model),
        "evaluation": {
            "overall": {
                **overall,
                metrics.CONFUSION_MATRIX: np.asarray(overall[metrics.CONFUSION_MATRIX]).astype(int).tolist(),
            },
            "slices": [
                {k: v for k, v in s.items() if k != metrics.CONFUSION_MATRIX} for s in scores["slices"]
            ],
            # Against the blessed baseline, class by class (None on a run without one).
            "baseline_class_iou": scores["baseline_class_iou"],
            "min_class_pixels": scores["min_class_pixels"],
            "guard_failed": scores["guard_failed"],
        },
        "split_counts": split_counts,
        # The data gate's decision (anomalies, drift since the previous span), when it was given.
        "data_gate": read_decision(gate_decision.uri) if gate_decision is not None else None,
        # The serving validation's verdict and figures, when it was given.
        "serving_validation": validation_of(infra_blessing) if infra_blessing is not None else None,
        "class_pixels": class_pixels,
        # What ingestion counted and warned of (None for Examples made before it did).
        "ingestion": ingestion_of(examples),
        "history": history,
        "figures": figs,
    }
    storage.write_file(os.path.join(out_dir, REPORT_JSON), json.dumps(report, indent=1, default=str))
    storage.write_file(os.path.join(out_dir, INDEX), page.render(report))
    return report


def _figures_named(report_json: str) -> set:
    """The figure files a ``report.json`` names; none if there is no report there yet."""
    if not tf.io.gfile.exists(report_json):
        return set()
    return set(json.loads(storage.read_file(report_json, binary=False)).get("figures", {}).values())


def publish(report_dir: str, publish_dir: str) -> None:
    """Publishes the report in ``report_dir`` to ``publish_dir``; readers get whole files.

    One mechanism for local disk and object stores, which cannot swap directories: figures are
    named by their content (``figure_name``), so a run's figures never overwrite the ones an
    earlier page names. They are copied first, then ``report.json``, then ``index.html``, each
    replaced whole (``storage.replace_file``), so whichever page or JSON a reader gets, every
    figure it names is there when it gets it. Only then are the figures named by neither this
    report nor the previous one removed. So, with one publish at a time, a page's figures stay
    until the second publish after the one that wrote the page ends: a reader gets every image
    of the page it loaded if it asks for them before then.

    Not guaranteed: ``index.html`` and ``report.json`` read during a publish may be of two runs
    (each names its model); and publishes that overlap (two runs publishing to one directory at
    the same moment) may each remove figures that only the other names, leaving a page that
    names missing figures until the next publish.
    """
    current = set(
        json.loads(storage.read_file(os.path.join(report_dir, REPORT_JSON), binary=False))["figures"].values()
    )
    keep = current | _figures_named(os.path.join(publish_dir, REPORT_JSON))
    tf.io.gfile.makedirs(publish_dir)
    for name in [*sorted(current), REPORT_JSON, INDEX]:
        storage.replace_file(os.path.join(report_dir, name), os.path.join(publish_dir, name))
    for name in tf.io.gfile.listdir(publish_dir):
        if name.endswith(FIGURE_SUFFIX) and name not in keep:
            tf.io.gfile.remove(os.path.join(publish_dir, name))


def ingestion_of(examples: types.Artifact):
    """What ingestion recorded on the Examples (``artifacts.PIXELS_PROPERTY`` and the two beside
    it), under ``page.INGESTION_PIXELS``, ``INGESTION_UNREAD`` and ``INGESTION_WARNINGS``; None
    for Examples without them."""
    pixels = examples.get_string_custom_property(artifacts.PIXELS_PROPERTY)
    if not pixels:
        return None
    unread = examples.get_string_custom_property(artifacts.UNREAD_FILES_PROPERTY)
    warnings = examples.get_string_custom_property(artifacts.DATA_WARNINGS_PROPERTY)
    return {
        page.INGESTION_PIXELS: json.loads(pixels),
        page.INGESTION_UNREAD: json.loads(unread or "{}"),
        page.INGESTION_WARNINGS: json.loads(warnings or "[]"),
    }


def validation_of(infra_blessing: types.Artifact) -> dict:
    """The serving validation's ``validation.json`` (``serving/validation.py``'s figures); for
    TFX's InfraValidator, which writes none, its verdict alone."""
    path = os.path.join(infra_blessing.uri, artifacts.VALIDATION_FILE)
    if tf.io.gfile.exists(path):
        return json.loads(storage.read_file(path, binary=False))
    return {"validated": bool(infra_blessing.get_int_custom_property(artifacts.BLESSED))}


def read_decision(gate_uri: str) -> dict:
    """What the report shows of the data gate's ``decision.json``."""
    decision = json.loads(storage.read_file(os.path.join(gate_uri, DECISION_FILE), binary=False))
    return {key: decision.get(key) for key in ("anomalies", "drift", "drift_note")}


@component
def RunReportGen(  # noqa: N802 - TFX component names are classes.
    examples: InputArtifact[standard_artifacts.Examples],
    transform_graph: InputArtifact[standard_artifacts.TransformGraph],
    model: InputArtifact[standard_artifacts.Model],
    model_run: InputArtifact[standard_artifacts.ModelRun],
    evaluation: InputArtifact[standard_artifacts.ModelEvaluation],
    blessing: InputArtifact[standard_artifacts.ModelBlessing],
    pushed_model: InputArtifact[standard_artifacts.PushedModel],
    report: OutputArtifact[RunReport],
    publish_dir: Parameter[str],
    title: Parameter[str],
    samples: Parameter[int] = ReportConfig.samples,
    gate_decision: InputArtifact[DataGateDecision] = None,
    infra_blessing: InputArtifact[standard_artifacts.InfraBlessing] = None,
):
    """Builds the run report (headed ``title``) and publishes it to ``publish_dir``.

    ``title``, not ``pipeline_name``: TFX's Airflow launcher reserves that execution property.
    """
    build(report.uri, title, examples, transform_graph, model, model_run, evaluation, blessing,
          pushed_model, samples, gate_decision, infra_blessing)  # fmt: skip
    if publish_dir:
        publish(report.uri, publish_dir)
