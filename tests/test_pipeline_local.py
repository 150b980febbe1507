"""The pipeline on LocalDagRunner with SQLite ML Metadata and Beam DirectRunner (multi_processing,
one worker process per Beam component: our code unpickled and run in a process of Beam's; two
workers of one Beam job are ingestion's, in test_ingest.py, and cost a minute more here).

One pipeline run (``first_run``) is shared by the tests that read its outputs; it is recorded
as it was right after the run, so tests that run the pipeline again (rerun, gate, changed
files) can come before or after them. The gate and changed-file runs stop before training
(at the failing gate, or a partial run up to the component under test), so they neither push
nor change the baseline that the rerun test's Evaluator resolves, and the one that edits a
file puts it back, bytes and mtime.
"""

import glob
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_analysis as tfma
import tensorflow_transform as tft
from ml_metadata.proto import metadata_store_pb2
from PIL import Image

from components.data_gate.component import DataGateDecision
from components.segmentation_example_gen import sources
from components.segmentation_inferrer.component import SegmentationMasks
from core import artifacts, features, paths
from core import config as config_lib
from core.dataset_spec import VOC_SPEC
from datasets import synthetic_voc
from pipeline import local_runner, logs, resolvers
from serving import client
from serving.server import Server
from tests.conftest import MAX_SIDE, feature, png_indices, read_examples
from tests.helpers import browser, mlmd, unlabelled
from trainer import warm_start
from transform import preprocessing

pytestmark = pytest.mark.slow
NODES = [
    "SegmentationExampleGen", "StatisticsGen", "DatasetSchemaGen", "ExampleValidator",
    resolvers.PREVIOUS_SPAN_RESOLVER_ID, "DataGate", resolvers.SPAN_WINDOW_RESOLVER_ID, "Transform",
    "Trainer", resolvers.BASELINE_RESOLVER_ID, "Evaluator", "ServingValidator", "ServingPusher",
    "RunReportGen", "SegmentationInferrer",
]  # fmt: skip
# Every node but the Resolvers, which resolve again on every run: a run on unchanged data is a
# cache hit for each of these.
CACHEABLE = [node for node in NODES if not node.endswith("_resolver")]
# The module's data arrives as spans (``data.voc_root`` is a span pattern); the first run reads
# span 1.
SPAN_DIR = "span-{SPAN}"
CLI = os.path.join(os.path.dirname(sys.executable), "deeplab-tfx")
# The most lines `deeplab-tfx run` may print (issue 17: the whole `make demo` in 80 lines).
TERMINAL_LINES = 80


def _store(cfg):
    return mlmd.store(cfg.metadata_path)


def states_by_node(cfg):
    """{node: [state of each execution, oldest first]} read back from ML Metadata."""
    store = _store(cfg)
    out = {}
    for ctx in store.get_contexts_by_type("node"):
        executions = sorted(store.get_executions_by_context(ctx.id), key=lambda e: e.id)
        out[ctx.name.split(".")[-1]] = [
            metadata_store_pb2.Execution.State.Name(e.last_known_state) for e in executions
        ]
    return out


def latest_outputs(cfg) -> dict:
    """{artifact type: newest artifact of that type} read back from ML Metadata."""
    store = _store(cfg)
    out = {}
    for artifact_type in store.get_artifact_types():
        artifacts = store.get_artifacts_by_type(artifact_type.name)
        if artifacts:
            out[artifact_type.name] = max(artifacts, key=lambda a: a.id)
    return out


def latest_output_uri(cfg, type_name):
    return latest_outputs(cfg)[type_name].uri


@pytest.fixture(scope="module")
def run_overrides(dataset_dir, tmp_path_factory):
    """The ``--set`` overrides of the tiny config that every run of this module uses."""
    root = tmp_path_factory.mktemp("pipeline")
    shutil.copytree(dataset_dir, root / "data" / SPAN_DIR.replace("{SPAN}", "1"))
    pattern = str(root / "data" / SPAN_DIR)
    # Span 1 of the unlabelled images the pushed model segments (SegmentationInferrer).
    jpegs = sorted(glob.glob(os.path.join(dataset_dir, "VOCdevkit", "VOC2012", "JPEGImages", "*.jpg")))[:3]
    unlabelled.make_folder(str(root / "unlabelled" / SPAN_DIR.replace("{SPAN}", "1")), jpegs)
    return [
        f"inference.images={root / 'unlabelled' / SPAN_DIR}",
        "inference.overlay=true",
        "inference.max_rejected_fraction=0.5",  # 2 of its 7 files are not images that decode
        f"data.voc_root={pattern}",
        f"data.sbd_root={pattern}",
        f"pipeline_root={root / 'run'}",
        # The pipeline's wiring is under test here; learning is in test_training.py.
        "trainer.train_steps=4",
        "trainer.steps_per_epoch=2",
        # A 4-step model cannot reach the demo's threshold; blessing is tested in
        # test_evaluation.py with a trained and an untrained model.
        "evaluator.min_mean_iou=0.0",
        # The config's multi_processing, with one worker process per Beam component (above).
        "beam.direct_num_workers=1",
    ]


@pytest.fixture(scope="module")
def run_config(run_overrides):
    return config_lib.load_config("tiny", run_overrides).resolved(paths.PROJECT_ROOT, os.getcwd())


def span_roots(cfg, span: int) -> tuple:
    """The VOC and SBD roots of ``span``."""
    return cfg.data.voc_root.replace("{SPAN}", str(span)), cfg.data.sbd_root.replace("{SPAN}", str(span))


def _cli_run(overrides):
    """``deeplab-tfx run --config tiny --set ...`` as a user runs it, in its own process."""
    args = [arg for override in overrides for arg in ("--set", override)]
    command = [CLI, "run", "--config", "tiny", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=1200)


@pytest.fixture(scope="module")
def first_run(run_config, run_overrides):
    """The first run of the pipeline, through the CLI, as it was right after it: what the
    terminal showed, states, outputs and the published report."""
    result = _cli_run(run_overrides)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    with open(os.path.join(run_config.report_dir(), "report.json")) as f:
        published = json.load(f)
    return {
        "out": result.stdout,
        "err": result.stderr,
        "states": states_by_node(run_config),
        "outputs": latest_outputs(run_config),
        "published_report": published,
    }


def test_the_terminal_shows_progress_and_the_log_file_the_detail(run_config, first_run):
    out, err = first_run["out"], first_run["err"]
    lines = out.splitlines()
    assert len(lines) + len(err.splitlines()) <= TERMINAL_LINES, out + err
    # stderr names the log, first and last, so that it is found whether one reads the top or
    # the bottom; nothing else goes there in a run that succeeds.
    log = re.match(r"deeplab-tfx run: full log in (\S+)\n", err).group(1)
    assert err == f"deeplab-tfx run: full log in {log}\n" * 2
    assert re.fullmatch(r"run-\d{8}-\d{6}-\d+\.log", os.path.basename(log))
    assert os.path.dirname(log) == os.path.join(run_config.pipeline_root, logs.LOG_DIR)
    for node in NODES:
        assert re.search(rf"^\[[\d:]+\] {node}: started$", out, re.M), node
        assert re.search(rf"^\[[\d:]+\] {node}: complete in [\d.]+ s$", out, re.M), node
    # Training: one line per epoch with the figures (2 epochs of 2 steps).
    epoch = r"^ +Trainer epoch (\d)/2: step (\d)/4, loss [\d.]+, eval mean IoU [\d.]+, .* so far, ETA "
    epochs = re.findall(epoch, out, re.M)
    assert epochs == [("1", "2"), ("2", "4")]
    for noise in ("FutureWarning", "cuda", "INFO", "WARNING", "custom_properties"):
        assert noise not in out, noise
    with open(log) as f:
        detail = f.read()
    # TFX's INFO, TF's C++ start-up lines, library warnings, the Trainer's own log lines and
    # Keras' per-epoch figures are all there.
    assert re.search(r"INFO absl: Component Trainer is running\.", detail)
    assert "cpu_feature_guard.cc" in detail
    assert "FutureWarning" in detail
    training = r"INFO trainer\.training: training mobilenetv2/OS\d+ at 128 px on voc \(21 classes\): 4 steps"
    assert re.search(training, detail)
    assert re.search(r"INFO trainer\.callbacks: epoch 2: \{'loss': ", detail)
    # What the terminal showed is in the log too.
    assert [line for line in lines if line not in detail] == []


def test_first_run_executes_every_component_once(run_config, first_run):
    out = first_run["out"]
    assert "deeplab-tfx run: Trainer: best eval mean IoU" in out
    assert f"blessed; pushed as version 1 to {run_config.serving_model_dir()}/1" in out
    assert f"report: {run_config.report_dir()}/index.html" in out
    # Progress, component by component, with the outputs worth seeing.
    for node in ("SegmentationExampleGen", "Transform", "Trainer", "Evaluator", "ServingPusher"):
        assert re.search(rf"\] {node}: started\n(.*\n)*?\[[\d:]+\] {node}: complete in [\d.]+ s", out), node
    assert re.search(r"Examples: \S+ \(span=1, num_examples_train=\d+, num_examples_eval=\d+\)", out)
    assert re.search(r"PushedModel: \S+ \(pushed=1, pushed_version=1\)", out)
    assert first_run["states"] == {n: ["COMPLETE"] for n in NODES}
    uri = {kind: artifact.uri for kind, artifact in first_run["outputs"].items()}
    examples_uri = uri["Examples"]
    assert first_run["outputs"]["Examples"].properties["span"].int_value == 1
    planned = sources.count_by_split(sources.plan_items(*span_roots(run_config, 1)))
    for split, n in planned.items():
        assert len(read_examples(examples_uri, split)) == n
    decision = json.load(open(os.path.join(uri[DataGateDecision.TYPE_NAME], "decision.json")))
    # A first span: nothing to compare with (drift None), and no anomalies.
    assert decision == {
        "passed": True, "allow_anomalies": False, "anomalies": {}, "accept_drift_of_span": -1, "drift": None,
        "drift_note": "span 1 is the first span the gate passed: no earlier span to compare with",
    }  # fmt: skip
    # Transform's analyzers counted the train split's pixels, class by class.
    expected = np.zeros(256, np.int64)
    for example in read_examples(examples_uri, features.TRAIN_SPLIT):
        ids = png_indices(feature(example, features.MASK_KEY)[0])
        expected += np.bincount(ids.ravel(), minlength=256)
    graph = tft.TFTransformOutput(uri["TransformGraph"])
    counts = preprocessing.read_class_counts(graph, VOC_SPEC.num_classes)
    assert {t: n for t, n in counts.items() if n} == {str(c): int(n) for c, n in enumerate(expected) if n}
    # The Trainer trained for the configured steps and exported a model that serves masks at
    # each image's own size.
    history = json.load(open(os.path.join(uri["ModelRun"], "history.json")))
    assert [row["step"] for row in history["epochs"]] == [2, 4]
    model_dir = os.path.join(uri["Model"], "Format-Serving")
    serve = tf.saved_model.load(model_dir).signatures["serving_default"]
    example = read_examples(examples_uri, features.EVAL_SPLIT)[0]
    out = serve(images=tf.constant([feature(example, features.IMAGE_KEY)[0]]))
    size = (feature(example, features.HEIGHT_KEY)[0], feature(example, features.WIDTH_KEY)[0])
    assert out["class_ids"].shape[1:] == size


def test_report_renders_and_shows_the_evaluators_numbers(run_config, first_run, tmp_path):
    report_dir = first_run["outputs"]["deeplab_tfx.RunReport"].uri
    dom = browser.render(os.path.join(report_dir, "index.html"), tmp_path)
    loaded = re.search(r'data-images-total="(\d+)" data-images-loaded="(\d+)"', dom)
    assert loaded, dom[:2000]
    assert loaded.group(1) == loaded.group(2) == "5", "every figure decodes in the browser"
    result = tfma.load_eval_result(first_run["outputs"]["ModelEvaluation"].uri)
    overall = dict(result.slicing_metrics)[()][""]
    shown = {
        key: re.search(f'id="{key}">([^<]+)<', dom).group(1)
        for key in ("mean-iou", "pixel-accuracy", "fw-iou")
    }
    assert shown == {
        "mean-iou": f"{overall['']['mean_iou']['doubleValue']:.4f}",
        "pixel-accuracy": f"{overall['']['pixel_accuracy']['doubleValue']:.4f}",
        "fw-iou": f"{overall['']['frequency_weighted_iou']['doubleValue']:.4f}",
    }
    for c, name in enumerate(VOC_SPEC.class_names):
        cell = re.search(f'data-class="{name}"><td>{c}</td><td>{name}</td><td[^>]*>([^<]+)<', dom).group(1)
        value = overall.get(f"classId:{c}", {}).get("class_iou", {}).get("doubleValue")
        assert cell == ("n/a" if value is None else f"{value:.4f}"), name
    assert re.search(r'id="pushed-version">1<', dom)
    # report.json carries the unrounded numbers, equal to TFMA's; the run published it.
    report = json.load(open(os.path.join(report_dir, "report.json")))
    assert first_run["published_report"] == report
    # The gate's findings: a first span, nothing to compare with.
    assert (
        report["data_gate"]["drift_note"]
        == "span 1 is the first span the gate passed: no earlier span to compare with"
    )
    assert re.search(r"id=\"drift-note\">Drift: span 1 is the first span the gate passed", dom)
    assert report["evaluation"]["overall"]["mean_iou"] == overall[""]["mean_iou"]["doubleValue"]
    assert report["decision"] == {
        "blessed": True, "reasons": [], "pushed_version": 1,
        "pushed_destination": os.path.join(run_config.serving_model_dir(), "1"),
    }  # fmt: skip
    # Before the push, TF's bundle loader loaded it in a child process, replayed the warm-up
    # records and answered the eval examples with the masks the Evaluator scored.
    validation = report["serving_validation"]
    assert validation["validated"] and validation["pixels"] > 0
    # The Evaluator's batches of 8 and the server's requests of 1 may break a tie otherwise.
    assert (
        validation["differing_pixels"]
        <= run_config.infra_validator.max_mask_disagreement * validation["pixels"]
    )
    requests = run_config.pusher.warmup_requests + run_config.infra_validator.num_examples
    assert validation["num_requests"] == requests
    assert (
        0 < validation["latency_p50_ms"] <= validation["latency_p99_ms"] and validation["peak_memory_mb"] > 0
    )
    assert re.search(
        r"id=.serving-validation.>Loaded by TF's SavedModel bundle loader in <b>[\d.]+ s</b>", dom
    )
    for name in ("class_iou", "confusion_matrix", "samples", "training_curves", "data"):
        with Image.open(os.path.join(report_dir, report["figures"][name])) as figure:
            assert figure.size[0] > 300 and np.asarray(figure.convert("L")).std() > 5, name


def _upstream(store, artifact_id) -> list:
    """``[(execution type, [(input type, artifact id)])]`` walking producers back from an artifact."""
    path, frontier, seen = [], [artifact_id], set()
    while frontier:
        current = frontier.pop()
        producers = [e.execution_id for e in store.get_events_by_artifact_ids([current])
                     if e.type == metadata_store_pb2.Event.OUTPUT]  # fmt: skip
        for execution in store.get_executions_by_id(producers):
            if execution.id in seen:
                continue
            seen.add(execution.id)
            inputs = [e.artifact_id for e in store.get_events_by_execution_ids([execution.id])
                      if e.type == metadata_store_pb2.Event.INPUT]  # fmt: skip
            kinds = [
                (store.get_artifact_types_by_id([a.type_id])[0].name, a.id)
                for a in store.get_artifacts_by_id(inputs)
            ]
            path.append((store.get_execution_types_by_id([execution.type_id])[0].name, kinds))
            frontier += inputs
    return path


def test_lineage_from_the_pushed_model_to_the_ingested_examples(run_config, first_run):
    store = _store(run_config)
    pushed, examples, model = (first_run["outputs"][t] for t in ("PushedModel", "Examples", "Model"))
    lineage = dict(_upstream(store, pushed.id))
    pusher = next(kinds for name, kinds in lineage.items() if name.endswith("ServingPusher"))
    assert ("Model", model.id) in pusher and ("Examples", examples.id) in pusher
    assert any(kind == "InfraBlessing" for kind, _ in pusher)
    trainer = next(kinds for name, kinds in lineage.items() if name.endswith("Trainer"))
    assert ("Examples", examples.id) in trainer
    # ... and back to the ingestion that wrote those examples, and nothing before it.
    assert any(name.endswith("SegmentationExampleGen") for name in lineage)
    assert {name.split(".")[-1] for name in lineage} >= {"ServingPusher", "Evaluator", "Trainer", "Transform"}


def test_the_pushed_model_segments_the_spans_unlabelled_images_with_lineage(run_config, first_run):
    """SegmentationInferrer, after the pusher, on Beam's multi-processing DirectRunner: version 1,
    just pushed, drew a mask for every image of the unlabelled folder's span 1, each equal to
    ``serving_default``'s for that image alone, the damaged image and the text file in the dead
    letter; ML Metadata leads from the masks to the model, its push and the span's Examples."""
    masks = first_run["outputs"][SegmentationMasks.TYPE_NAME]
    folder = run_config.inference.images.replace("{SPAN}", "1")
    every = sorted(os.path.join(root, name) for root, _, names in os.walk(folder) for name in names)
    damaged, not_image = (os.path.join(folder, name) for name in (unlabelled.DAMAGED, unlabelled.NOT_IMAGE))
    good = [path for path in every if path not in (damaged, not_image)]
    assert len(good) == 5
    unlabelled.check_outputs(masks.uri, os.path.join(run_config.serving_model_dir(), "1"), good, overlay=True)
    assert unlabelled.rejected(masks.uri) == {damaged: "corrupt_image", not_image: "not_an_image"}
    props = {name: mlmd.int_property(masks, name) for name in ("num_masks", "num_rejected", "model_version")}
    assert props == {"num_masks": 5, "num_rejected": 2, "model_version": 1}
    assert masks.custom_properties[artifacts.IMAGES].string_value == folder
    assert re.search(
        rf"SegmentationMasks: {re.escape(masks.uri)} \(num_rejected=2, num_masks=5\)", first_run["out"]
    )
    store = _store(run_config)
    [producer] = [e.execution_id for e in store.get_events_by_artifact_ids([masks.id])
                  if e.type == metadata_store_pb2.Event.OUTPUT]  # fmt: skip
    [execution] = store.get_executions_by_id([producer])
    took = {
        (key, a.id)
        for key in ("model", "pushed_model", "examples")
        for a in mlmd.inputs(store, execution, key)
    }
    outputs = first_run["outputs"]
    assert took == {
        ("model", outputs["Model"].id),
        ("pushed_model", outputs["PushedModel"].id),
        ("examples", outputs["Examples"].id),
    }


def test_the_pushed_model_answers_over_grpc(run_config, first_run):
    server = Server(run_config.pusher.model_name, run_config.serving_model_dir(), port=0)
    server.start()
    try:
        example = read_examples(first_run["outputs"]["Examples"].uri, features.EVAL_SPLIT)[0]
        image = feature(example, features.IMAGE_KEY)[0]
        grpc_client = client.GrpcClient(f"127.0.0.1:{server.port}", run_config.pusher.model_name)
        version, [mask] = grpc_client.predict([image])
        grpc_client.close()
    finally:
        server.stop()
    assert version == 1
    size = (feature(example, features.HEIGHT_KEY)[0], feature(example, features.WIDTH_KEY)[0])
    serve = tf.saved_model.load(os.path.join(run_config.serving_model_dir(), "1")).signatures[
        "serving_default"
    ]
    expected = serve(images=tf.constant([image]))["class_ids"][0].numpy()
    assert mask.shape == size
    np.testing.assert_array_equal(mask, expected[: size[0], : size[1]])


def test_a_run_with_no_new_data_is_a_cache_hit_end_to_end(run_config, first_run, capsys):
    """The next scheduled run, before any new span: every component is served from cache (the
    Evaluator too: its baseline is the newest blessed model older than the cached candidate, none,
    as on the first run), nothing is retrained or pushed, and one line says so."""
    before = states_by_node(run_config)
    assert local_runner.run(run_config) == 0
    states = states_by_node(run_config)
    assert {n: states[n][len(before[n]) :] for n in CACHEABLE} == {n: ["CACHED"] for n in CACHEABLE}
    assert latest_outputs(run_config)["Model"].id == first_run["outputs"]["Model"].id
    out = capsys.readouterr().out
    assert re.search(r"\] Transform: cached in [\d.]+ s", out)
    assert out.splitlines()[-1] == (
        "deeplab-tfx run: no new data since the last run (span 1, same files, same config): every "
        "component was a cache hit; nothing retrained, nothing pushed"
    )
    assert sorted(os.listdir(run_config.serving_model_dir())) == ["1"]


def test_a_new_span_is_ingested_trained_warm_judged_and_pushed(
    run_config, run_overrides, first_run, tmp_path, capsys
):
    """Span 2 arrives (here a link to span 1's folder: the same images, so the same eval split)
    and the next scheduled run, warm-started, takes it: ingested, trained from the first run's
    model, judged against it, pushed as version 2; the run after it, with nothing new, is a cache
    hit. In a copy of the first run's ML Metadata and
    serving directory, and span 2 is taken away after, so the module's run stays as it was. That
    warm-starting then learns in a fraction of the steps is in test_warm_start.py."""
    root = tmp_path / "run"
    root.mkdir()
    shutil.copy(run_config.metadata_path, root / "metadata.sqlite")
    overrides = [
        *run_overrides, f"pipeline_root={root}", "trainer.warm_start=true",
        # Blessing is tested in test_evaluation.py; this run's model must be pushed.
        "evaluator.max_mean_iou_drop=1.0", "evaluator.max_class_iou_drop=1.0",
        # The multi-process Beam mode is the first run's; here the wiring across runs is tested.
        "beam.direct_running_mode=in_memory",
    ]  # fmt: skip
    cfg = config_lib.load_config("tiny", overrides).resolved(paths.PROJECT_ROOT, os.getcwd())
    shutil.copytree(run_config.serving_model_dir(), cfg.serving_model_dir())
    span_1, _ = span_roots(run_config, 1)
    span_2, _ = span_roots(run_config, 2)
    os.symlink(span_1, span_2)
    # The unlabelled images' span 2 arrives too: the new model segments it.
    unlabelled_1, unlabelled_2 = (cfg.inference.images.replace("{SPAN}", str(n)) for n in (1, 2))
    os.symlink(unlabelled_1, unlabelled_2)
    try:
        assert local_runner.run(cfg) == 0
        out = capsys.readouterr().out
        db = mlmd.store(cfg.metadata_path)
        runs = mlmd.executions(db)
        # And the next scheduled run, with nothing new since span 2: a cache hit end to end.
        assert local_runner.run(cfg) == 0
        last = capsys.readouterr().out.splitlines()[-1]
        assert last.startswith(
            "deeplab-tfx run: no new data since the last run (span 2, same files, same config)"
        )
        rerun = mlmd.executions(mlmd.store(cfg.metadata_path))
    finally:
        os.remove(span_2)
        os.remove(unlabelled_2)

    assert [mlmd.state(e) for e in runs["SegmentationExampleGen"]][-1] == "COMPLETE"
    [masks] = mlmd.outputs(db, runs["SegmentationInferrer"][-1], "masks")
    assert [mlmd.int_property(masks, key) for key in ("model_version", "num_masks")] == [2, 5]
    assert masks.custom_properties[artifacts.IMAGES].string_value == unlabelled_2
    # ML Metadata shows the spans each execution consumed: the Trainers', run by run.
    trained_on = [
        [mlmd.int_property(a, "span") for a in mlmd.inputs(db, e, "examples")]
        for e in runs["Trainer"]
    ]  # fmt: skip
    # The window (data.num_spans: 0, all): span 2's run trains on spans 1 and 2, and its Evaluator
    # scores both spans' eval splits.
    assert trained_on[0] == [1] and sorted(trained_on[-1]) == [1, 2]
    evaluated_on = [mlmd.int_property(a, "span") for a in mlmd.inputs(db, runs["Evaluator"][-1], "examples")]
    assert sorted(evaluated_on) == [1, 2]
    first_model = first_run["outputs"]["Model"]
    trainer, evaluator = runs["Trainer"][-1], runs["Evaluator"][-1]
    assert [a.id for a in mlmd.inputs(db, trainer, "base_model")] == [first_model.id]
    assert [a.id for a in mlmd.inputs(db, evaluator, "baseline_model")] == [first_model.id]
    [examples] = mlmd.outputs(db, runs["SegmentationExampleGen"][-1], "examples")
    first_examples = first_run["outputs"]["Examples"]
    for split in features.SPLITS:
        count = artifacts.num_examples(split)
        assert mlmd.int_property(examples, count) == mlmd.int_property(first_examples, count) > 0
    # Warm-started: its first evaluation is the first run's best one (the same weights, the
    # same eval images).
    [model_run] = mlmd.outputs(db, trainer, "model_run")
    warm = warm_start.read(model_run.uri)
    assert warm.warm_started and warm.base_model == os.path.join(first_model.uri, "Format-Serving")
    history = json.load(open(os.path.join(first_run["outputs"]["ModelRun"].uri, "history.json")))
    best = max(row["val_mean_iou"] for row in history["epochs"])
    assert warm.initial_mean_iou == pytest.approx(best, abs=1e-4)
    assert f"Trainer warm start from {warm.base_model}: eval mean IoU" in out
    assert re.search(r"Examples: \S+ \(span=2, num_examples_train=", out)
    assert f"blessed; pushed as version 2 to {cfg.serving_model_dir()}/2" in out
    assert sorted(os.listdir(cfg.serving_model_dir())) == ["1", "2"]
    assert {node: mlmd.state(rerun[node][-1]) for node in CACHEABLE} == dict.fromkeys(CACHEABLE, "CACHED")
    # Span 2 holds span 1's images: nothing drifted, and the gate says so.
    [gate] = mlmd.outputs(db, runs["DataGate"][-1], "decision")
    assert json.load(open(os.path.join(gate.uri, "decision.json")))["drift"] == {}
    # The report shows each class's IoU against the baseline's, and which classes the per-class
    # guard exempted (too few labelled pixels in the eval split).
    with open(os.path.join(cfg.report_dir(), "report.json")) as f:
        report = json.load(f)
    evaluation = report["evaluation"]
    page = open(os.path.join(cfg.report_dir(), "index.html")).read()
    # ... and what the gate found since the previous span.
    note = "no feature moved beyond validation.max_drift since the previous span"
    assert report["data_gate"] == {"anomalies": {}, "drift": {}, "drift_note": note}
    assert f"<p id='drift-note'>Drift: {note}</p>" in page
    labelled = np.asarray(evaluation["overall"]["confusion_matrix"]).sum(axis=1)
    floor = evaluation["min_class_pixels"]
    assert floor == cfg.evaluator.min_class_pixels
    for c, name in enumerate(VOC_SPEC.class_names):
        now, before = evaluation["overall"]["class_iou"][c], evaluation["baseline_class_iou"][c]
        change = "n/a" if now is None or before is None else f"{now - before:+.4f}"
        guard = f"exempt ({labelled[c]} px &lt; {floor})" if labelled[c] < floor else "held"
        cells = f"<td class='num change'>{change}</td><td>{guard}</td>"
        assert re.search(rf"data-class='{name}'>.*{re.escape(cells)}", page), name


def test_a_span_that_drifted_stops_at_the_gate_naming_the_feature(
    run_config, run_overrides, first_run, tmp_path, capsys
):
    """Span 3 arrives with images twice the size of span 1's: the gate compares its statistics
    with the previous span's (TFDV's Jensen-Shannon comparator, as DistributionValidator runs it)
    and stops the run, naming the features that moved and by how much. Span 4 then holds span 1's
    images: the gate compares it with span 1, the last span it passed, and lets it through. Span 3
    is then accepted (``validation.accept_drift_of_span=3``, a backfill of span 3), and the next
    run with that config, on unchanged data, is a cache hit. Up to the gate, in a copy of the
    first run's ML Metadata; spans 3 and 4 are taken away after."""
    root = tmp_path / "run"
    root.mkdir()
    shutil.copy(run_config.metadata_path, root / "metadata.sqlite")
    overrides = [*run_overrides, f"pipeline_root={root}", "beam.direct_running_mode=in_memory"]
    cfg = config_lib.load_config("tiny", overrides).resolved(paths.PROJECT_ROOT, os.getcwd())
    accepted = config_lib.apply_overrides(cfg, ["data.span=3", "validation.accept_drift_of_span=3"])
    before = states_by_node(cfg)
    span_1, _ = span_roots(run_config, 1)
    span_3, _ = span_roots(run_config, 3)
    span_4, _ = span_roots(run_config, 4)
    synthetic_voc.make_dataset(span_3, num_images=12, seed=3, max_side=2 * MAX_SIDE, workers=1)

    def gate_run() -> tuple:
        """The gate's last execution, the span of its baseline statistics, and its decision."""
        db = mlmd.store(cfg.metadata_path)
        gate = mlmd.executions(db)["DataGate"][-1]
        [baseline] = mlmd.inputs(db, gate, "previous_statistics")
        [decision] = mlmd.outputs(db, gate, "decision") or [None]
        return mlmd.state(gate), mlmd.int_property(baseline, "span"), decision

    try:
        assert local_runner.run(cfg, to_nodes=["DataGate"]) == 1
        err = capsys.readouterr().err
        stopped = states_by_node(cfg)
        # Span 4 arrives with span 1's images: compared with the last span the gate passed (1),
        # not with the stopped span 3, it passes. (The window then leaves span 3 out:
        # tests/test_resolvers.py.)
        os.symlink(span_1, span_4)
        assert local_runner.run(cfg, to_nodes=["DataGate"]) == 0
        span_4_gate = gate_run()
        assert local_runner.run(accepted, to_nodes=["DataGate"]) == 0
        accepted_gate = gate_run()
        assert local_runner.run(accepted, to_nodes=["DataGate"]) == 0
        rerun_state, *_ = gate_run()
    finally:
        shutil.rmtree(span_3)
        if os.path.islink(span_4):
            os.remove(span_4)
    assert "deeplab-tfx run: FAILED in component DataGate" in err
    assert (
        "the span drifted from the previous one (Jensen-Shannon divergence above validation.max_drift)" in err
    )
    assert "If the change is real, accept it: validation.accept_drift_of_span=3" in err
    moved = re.findall(r"split (\w+): feature '([^']+)': .*Jensen-Shannon divergence .* is ([\d.]+)", err)
    assert {feature for _, feature, _ in moved} >= {features.HEIGHT_KEY, features.WIDTH_KEY}, err
    assert all(float(divergence) > cfg.validation.max_drift for *_, divergence in moved), moved
    assert stopped["DataGate"][-1] == "FAILED" and stopped["Transform"] == before["Transform"]

    state, baseline_span, decision = span_4_gate
    assert (state, baseline_span) == ("COMPLETE", 1)
    decision = json.load(open(os.path.join(decision.uri, "decision.json")))
    assert decision["passed"] is True and decision["drift"] == {}
    assert decision["drift_note"] == "no feature moved beyond validation.max_drift since the previous span"

    state, baseline_span, decision = accepted_gate
    assert (state, baseline_span) == ("COMPLETE", 1)
    decision = json.load(open(os.path.join(decision.uri, "decision.json")))
    assert decision["passed"] is True and decision["accept_drift_of_span"] == 3
    assert {row["feature"] for rows in decision["drift"].values() for row in rows} >= {features.HEIGHT_KEY}
    assert decision["drift_note"].startswith("accepted (validation.accept_drift_of_span=3): ")
    assert rerun_state == "CACHED"


def test_gate_stops_the_run_on_anomalies_unless_allowed(run_config, run_overrides, first_run, tmp_path):
    # A schema that admits only VOC-sourced images: the SBD records in train are anomalies.
    schema = open(paths.project_file(run_config.validation.schema_path)).read()
    strict = tmp_path / "schema.pbtxt"
    strict.write_text(schema.replace('  value: "sbd"\n', ""))
    cfg = config_lib.apply_overrides(run_config, [f"validation.schema_path={strict}"])
    before = states_by_node(cfg)

    # Through the CLI, quiet: the terminal still says which component failed, why, and where
    # the whole story is.
    result = _cli_run([*run_overrides, f"validation.schema_path={strict}"])
    assert result.returncode == 1
    err = result.stderr
    assert "DataGate stopped the run before Transform" in err
    assert "deeplab-tfx run: FAILED in component DataGate after" in err
    assert "split train: feature 'image/source'" in err and "split eval" not in err
    log = re.search(r"^deeplab-tfx run: full log in (\S+\.log)$", err, re.M).group(1)
    assert os.path.dirname(log) == os.path.join(run_config.pipeline_root, logs.LOG_DIR)
    with open(log) as f:
        assert "Traceback (most recent call last)" in f.read(), "the trace is in the log"
    assert "Traceback" not in err and len(result.stdout.splitlines() + err.splitlines()) <= TERMINAL_LINES
    states = states_by_node(cfg)
    assert states["SegmentationExampleGen"][-1] == "CACHED" and states["DataGate"][-1] == "FAILED"
    assert states["Transform"] == before["Transform"], "Transform must not start after the gate failed"

    # Allowed, the gate passes (what runs after it is the same wiring as in the first run).
    allowed = config_lib.apply_overrides(cfg, ["validation.allow_anomalies=true"])
    assert local_runner.run(allowed, to_nodes=["DataGate"]) == 0
    assert states_by_node(cfg)["DataGate"][-1] == "COMPLETE"
    decision = json.load(
        open(os.path.join(latest_output_uri(cfg, DataGateDecision.TYPE_NAME), "decision.json"))
    )
    assert decision["passed"] is True and list(decision["anomalies"]) == ["train"]
    assert decision["anomalies"]["train"][0]["feature"] == "image/source"


def test_changed_files_are_ingested_again(run_config, first_run):
    item = sources.plan_items(*span_roots(run_config, 1))[0]
    original, stat = open(item.image_path, "rb").read(), os.stat(item.image_path)
    try:
        Image.open(item.image_path).save(item.image_path, format="JPEG", quality=60)
        changed = open(item.image_path, "rb").read()
        assert changed != original
        # Up to ingestion only: what comes after it is the first run's wiring again.
        assert local_runner.run(run_config, to_nodes=["SegmentationExampleGen"]) == 0
    finally:  # the same bytes and mtime: the fingerprint of the first run again
        open(item.image_path, "wb").write(original)
        os.utime(item.image_path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    states = states_by_node(run_config)
    assert states["SegmentationExampleGen"][-1] == "COMPLETE", "the fingerprint changed, so no cache"
    examples = read_examples(latest_output_uri(run_config, "Examples"), item.split)
    [example] = [e for e in examples if feature(e, features.FILENAME_KEY) == [item.image_id.encode()]]
    assert feature(example, features.IMAGE_KEY) == [changed]
