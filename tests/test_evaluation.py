"""Evaluator and ServingPusher: VOC scores in TFMA, blessing, atomic versioned pushes, warm-up."""

import html
import io
import json
import math
import os
import re
from decimal import ROUND_HALF_UP, Decimal

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_analysis as tfma
import tf_keras
from ml_metadata.metadata_store import metadata_store
from PIL import Image
from tensorflow_model_analysis.metrics import metric_types
from tensorflow_model_analysis.view import util as view_util
from tensorflow_model_analysis.writers import metrics_plots_and_validations_writer
from tfx import v1 as tfx

from components.run_report import eval_results
from components.run_report.component import INDEX, REPORT_JSON, RunReport, RunReportGen
from components.serving_pusher.component import ServingPusher
from components.serving_validator.component import NOT_BLESSED_BY_EVALUATOR
from core import artifacts, dataset_spec, features, metrics, paths, signatures, storage
from core import config as config_lib
from core.dataset_spec import VOC_CLASS_NAMES, VOC_SPEC
from evaluation import iou, tfma_metrics, verdict
from pipeline import local_runner, resolvers
from pipeline.pipeline import validation_and_push
from serving import layout, warmup
from tests import reference
from tests.conftest import feature, predicted_pairs, read_examples, transform_dir
from tests.helpers import browser
from tests.helpers.ram_store import files_under, ram_root, read_bytes
from trainer import export, tta
from trainer.export import SERVING_DEFAULT
from transform import palette

RNG = np.random.default_rng(0)
VOC_CLASSES = VOC_SPEC.num_classes


def _random_pair(h=37, w=53, void_fraction=0.2):
    truth = RNG.integers(0, VOC_CLASSES, (h, w)).astype(np.uint8)
    truth[RNG.random((h, w)) < void_fraction] = features.IGNORE_LABEL
    return truth, RNG.integers(0, VOC_CLASSES, (h, w)).astype(np.uint8)


def test_scores_equal_the_per_class_reference():
    pairs = [_random_pair() for _ in range(5)]
    matrix = sum(iou.confusion_matrix(t, p, VOC_CLASSES) for t, p in pairs)
    ours, ref = iou.scores(matrix), reference.scores(pairs)
    np.testing.assert_allclose(ours["class_iou"], ref["class_iou"], rtol=0, atol=1e-12)
    for key in ("mean_iou", "pixel_accuracy", "frequency_weighted_iou"):
        assert ours[key] == pytest.approx(ref[key], abs=1e-12)
    # A class absent from labels and predictions has no IoU and is left out of the mean.
    truth = np.array([[0, 0], [1, 255]], np.uint8)
    scores = iou.scores(iou.confusion_matrix(truth, np.array([[0, 1], [1, 7]], np.uint8), VOC_CLASSES))
    assert scores["class_iou"][:2].tolist() == [0.5, 0.5] and np.isnan(scores["class_iou"][2:]).all()
    assert scores["mean_iou"] == 0.5 and scores["pixel_accuracy"] == pytest.approx(2 / 3)
    # Ids outside the classes (and void, for labels) are errors, not silently dropped pixels.
    with pytest.raises(ValueError, match="class ids must be in"):
        iou.confusion_matrix(truth, np.full((2, 2), VOC_CLASSES, np.uint8), VOC_CLASSES)
    with pytest.raises(ValueError, match="class ids must be in"):
        iou.confusion_matrix(np.full((2, 2), 30, np.uint8), np.zeros((2, 2), np.uint8), VOC_CLASSES)
    with pytest.raises(ValueError, match=r"class ids must be in \[0, 255\]"):
        iou.confusion_matrix(truth.astype(np.int64), np.full((2, 2), 256, np.int64), VOC_CLASSES)


def _extracts(truth: np.ndarray, predicted: np.ndarray, pad: int = 3) -> dict:
    """Extracts shaped as TFMA builds them for the Evaluator: the raw mask PNG as a feature, and
    the model's padded ``class_ids`` with the true height and width."""
    h, w = truth.shape
    padded = np.full((h + pad, w + pad), features.IGNORE_LABEL, np.uint8)
    padded[:h, :w] = predicted
    return {
        "features": {
            features.MASK_KEY: np.array([palette.encode_palette_png(truth)], dtype=object),
            features.FILENAME_KEY: np.array([b"2007_000032"], dtype=object),
        },
        "predictions": {"class_ids": padded, "height": np.int64(h), "width": np.int64(w)},
    }


def _tfma_image_confusion(truth: np.ndarray, predicted: np.ndarray, pad: int = 3) -> np.ndarray:
    """Runs the Evaluator's preprocessor on one image pair."""
    preprocessor = tfma_metrics._ImageConfusion(VOC_CLASSES, features.IGNORE_LABEL)
    [matrix] = list(preprocessor.process(_extracts(truth, predicted, pad)))
    return matrix


def test_void_pixels_change_nothing():
    truth, predicted = _random_pair(void_fraction=0.0)
    void = RNG.random(truth.shape) < 0.3
    with_void = np.where(void, features.IGNORE_LABEL, truth).astype(np.uint8)
    scrambled = np.where(void, RNG.integers(0, VOC_CLASSES, truth.shape), predicted).astype(np.uint8)
    # Whatever the model predicts under void pixels, the matrix is that of the other pixels.
    expected = iou.confusion_matrix(truth[~void], predicted[~void], VOC_CLASSES)
    np.testing.assert_array_equal(_tfma_image_confusion(with_void, predicted), expected)
    np.testing.assert_array_equal(_tfma_image_confusion(with_void, scrambled), expected)
    assert expected.sum() == (~void).sum()


def test_mask_and_prediction_of_different_sizes_name_the_file():
    truth, _ = _random_pair()
    extracts = {
        "features": {
            features.MASK_KEY: np.array([palette.encode_palette_png(truth)], dtype=object),
            features.FILENAME_KEY: np.array([b"2007_000032"], dtype=object),
        },
        "predictions": {"class_ids": truth, "height": np.int64(37), "width": np.int64(52)},
    }
    preprocessor = tfma_metrics._ImageConfusion(VOC_CLASSES, features.IGNORE_LABEL)
    with pytest.raises(ValueError, match=r"2007_000032: mask is 53x37 but the prediction is 52x37"):
        list(preprocessor.process(extracts))


def test_a_model_of_another_datasets_classes_is_named_not_scored():
    # A pipeline run on one dataset after another resolves the other's blessed model as baseline.
    truth = np.zeros((4, 6), np.uint8)
    predicted = truth.copy()
    predicted[1, 2] = 5
    extracts = _extracts(truth, predicted, 0)
    says = r"2007_000032: the model predicts class id 5 but the dataset has 3 classes: it was trained on"
    says += r" another dataset\. Run each dataset as a pipeline of its own"
    with pytest.raises(ValueError, match=says):
        list(tfma_metrics._ImageConfusion(3, features.IGNORE_LABEL).process(extracts))
    predicted[1, 2] = 2
    [matrix] = tfma_metrics._ImageConfusion(3, features.IGNORE_LABEL).process(_extracts(truth, predicted, 0))
    assert matrix.tolist() == [[23, 0, 1], [0, 0, 0], [0, 0, 0]]


def _reference_matrix(pairs) -> np.ndarray:
    """Pixel counts ``[truth, prediction]`` over the non-void pixels, one ``np.add.at`` per image
    (no ``bincount``, which ``evaluation.iou`` uses)."""
    matrix = np.zeros((VOC_CLASSES, VOC_CLASSES), np.int64)
    for truth, predicted in pairs:
        valid = truth != features.IGNORE_LABEL
        np.add.at(matrix, (truth[valid].astype(int), predicted[valid].astype(int)), 1)
    return matrix


MULTI_CLASS_PLOT = "multiClassConfusionMatrixAtThresholds"  # TFMA's JSON name of the plot proto


def _plot_matrix(plot: dict) -> np.ndarray:
    """The ``[C, C]`` matrix of a plot as ``load_eval_result`` and the TFMA widget hold it:
    proto JSON, where fields equal to 0 (class 0, an empty cell) are left out."""
    [at_threshold] = plot[MULTI_CLASS_PLOT]["matrices"]
    assert at_threshold.get("threshold", 0.0) == 0.0
    matrix = np.zeros((VOC_CLASSES, VOC_CLASSES), np.int64)
    for entry in at_threshold["entries"]:
        count = entry.get("numWeightedExamples", 0.0)
        assert count == int(count), entry
        matrix[entry.get("actualClassId", 0), entry.get("predictedClassId", 0)] += int(count)
    return matrix


def _evaluate_one_slice(extracts: list) -> dict:
    """Our metrics (VOC's classes) on one slice."""
    return run_metrics([cls(num_classes=VOC_CLASSES) for cls in tfma_metrics.METRIC_CLASSES], extracts)


def run_metrics(metrics: list, extracts: list) -> dict:
    """``metrics`` on one slice, run as TFMA's evaluator runs them: each computation's
    preprocessor and combiner over the examples, then the derived computations in order."""
    computations, seen = [], set()
    for metric in metrics:
        for computation in metric.computations(model_names=[""]):
            if tuple(computation.keys) not in seen:  # TFMA runs shared computations once
                seen.add(tuple(computation.keys))
                computations.append(computation)
    out = {}
    for computation in computations:
        if isinstance(computation, metric_types.MetricComputation):
            [preprocessor] = computation.preprocessors
            combiner = computation.combiner
            accumulator = combiner.create_accumulator()
            for example in extracts:
                accumulator = combiner.add_input(accumulator, list(preprocessor.process(example)))
            out.update(combiner.extract_output(accumulator))
    for computation in computations:
        if isinstance(computation, metric_types.DerivedMetricComputation):
            out.update(computation.result(out))
    return out


def _tfma_widget_table(viewer, tmp_path, rows: int) -> list:
    """The rows of cells TFMA's own plot widget shows for ``tfma.view.render_plot``'s viewer.

    The page does what TFMA's Jupyter extension does (``static/index.js``, ``PlotView``): loads
    ``vulcanized_tfma.js``, creates a ``tfma-nb-plot`` and gives it the viewer's ``config`` and
    ``data``. Headless Chromium runs it; the script reads the visible text of each cell of the
    multi-class confusion matrix out of the shadow DOM. The widget renders its rows in chunks
    (Polymer's ``dom-repeat``), so the script reads them once all ``rows`` are there (header
    included), or after 60 s of virtual time, rather than after a fixed delay that a busy machine
    can outrun.
    """
    script = os.path.join(os.path.dirname(tfma.__file__), "static", "vulcanized_tfma.js")
    widget = json.dumps({"config": viewer.config, "data": viewer.data})
    page = tmp_path / "tfma_plot.html"
    page.write_text(f"""<!doctype html><html><head><meta charset="utf-8"></head><body>
<pre id="out">not rendered</pre>
<script src="file://{script}"></script>
<script>
const widget = {widget};
const plot = document.createElement("tfma-nb-plot");
document.body.appendChild(plot);
setTimeout(() => {{ plot.config = widget.config; plot.data = widget.data; }}, 0);
function find(root, selector) {{
  const found = [...root.querySelectorAll(selector)];
  for (const node of root.querySelectorAll("*")) {{
    if (node.shadowRoot) found.push(...find(node.shadowRoot, selector));
  }}
  return found;
}}
let waited = 0;
function read() {{
  const rows = [];
  for (const matrix of find(document, "tfma-multi-class-confusion-matrix-at-thresholds")) {{
    for (const row of find(matrix.shadowRoot, "div.row")) {{
      rows.push([...row.querySelectorAll(":scope > div.cell")].map((cell) =>
        [...cell.querySelectorAll(":scope > div")]
          .filter((part) => !part.hidden && getComputedStyle(part).display != "none")
          .map((part) => part.textContent.trim()).join("")));
    }}
  }}
  if (rows.length < {rows} && waited < 60000) {{ waited += 250; setTimeout(read, 250); return; }}
  document.getElementById("out").textContent = JSON.stringify(rows);
}}
setTimeout(read, 250);
</script></body></html>""")
    dom = browser.render(str(page), tmp_path, virtual_ms=65000)
    shown = re.search(r'<pre id="out">(.*?)</pre>', dom, re.S)
    assert shown and shown.group(1) != "not rendered", dom[:2000]
    return json.loads(html.unescape(shown.group(1)))


def _tfma_widget_count(count: int) -> str:
    """A count as TFMA's widget writes it (``vulcanized_tfma.js``, the matrix's ``computeMatrix_``):
    as is below 1000, else 3 significant groups with k, M, G... (``toFixed(2)``: half up)."""
    if count < 1000:
        return str(count)
    group = math.floor(math.log10(count) / 3)
    scaled = Decimal(count / 1000**group).quantize(Decimal("0.01"), ROUND_HALF_UP)
    return f"{scaled}{' kMGTPE'[group]}"


def test_the_confusion_matrix_is_a_plot_that_tfmas_viewer_shows(tmp_path):
    pairs = [_random_pair() for _ in range(4)]
    # One large image, mostly background, so that some cells pass 1000 pixels.
    truth, predicted = np.zeros((240, 320), np.uint8), np.zeros((240, 320), np.uint8)
    truth[100:200, 50:250], predicted[90:190, 60:260] = 15, 15
    truth[0:5], predicted[230:] = features.IGNORE_LABEL, 7
    pairs.append((truth, predicted))
    expected = _reference_matrix(pairs)

    out = _evaluate_one_slice([_extracts(t, p) for t, p in pairs])
    plots = {key: value for key, value in out.items() if isinstance(key, metric_types.PlotKey)}
    assert list(plots) == [metric_types.PlotKey(metrics.CONFUSION_MATRIX)], "one plot"
    # Not also a metric (TFMA does not write metrics whose names start with "_"). PlotKey and
    # MetricKey compare as tuples, so the type is what tells them apart.
    public = {(type(key), key.name) for key in out if not key.name.startswith("_")}
    assert public == {
        (metric_types.MetricKey, metrics.MEAN_IOU), (metric_types.MetricKey, metrics.CLASS_IOU),
        (metric_types.MetricKey, metrics.PIXEL_ACCURACY),
        (metric_types.MetricKey, metrics.FREQUENCY_WEIGHTED_IOU),
        (metric_types.PlotKey, metrics.CONFUSION_MATRIX),
    }  # fmt: skip

    # Through TFMA's writer (the plots file) and reader (load_eval_result) to its viewer.
    written = metrics_plots_and_validations_writer.convert_slice_plots_to_proto(((), plots), None)
    loaded = tfma.EvalResult(
        slicing_metrics=[], plots=[view_util.convert_plots_proto_to_dict(written)], attributions=[],
        config=tfma.EvalConfig(), data_location="", file_format="", model_location="",
    )  # fmt: skip
    np.testing.assert_array_equal(_plot_matrix(dict(loaded.plots)[()][""][""]), expected)
    viewer = tfma.view.render_plot(loaded)
    np.testing.assert_array_equal(_plot_matrix(viewer.data), expected)

    # TFMA's widget draws it: a row per true class, its total, then a cell per predicted class.
    header, *rows = _tfma_widget_table(viewer, tmp_path, rows=1 + VOC_CLASSES)
    assert header[:2] == ["Class Id", "Total"]
    classes = [int(c) for c in header[2:]]
    assert sorted(classes) == list(range(VOC_CLASSES))
    shown = {int(row[0]): row[1:] for row in rows}
    assert sorted(shown) == list(range(VOC_CLASSES))
    for c, row in shown.items():
        want = [_tfma_widget_count(expected[c].sum())]
        want += [_tfma_widget_count(expected[c, p]) if expected[c, p] else "" for p in classes]
        assert row == want, c
    assert _tfma_widget_count(expected[0, 0]).endswith("k")


# Evaluator -> ServingPusher on LocalDagRunner, judging given models through Importers


def _judge(root, examples_uri, model_dir, tag, validate_serving=True, **evaluator):
    """One run of Resolver -> Evaluator -> (ServingValidator ->) ServingPusher on ``model_dir``;
    returns its config."""
    overrides = [f"pipeline_root={root}", "beam.direct_running_mode=in_memory", "evaluator.batch_size=1"]
    overrides += [] if validate_serving else ["infra_validator.runtime=none"]
    overrides += [f"evaluator.{k}={v}" for k, v in evaluator.items()]
    cfg = config_lib.load_config("tiny", overrides)
    examples = tfx.dsl.Importer(
        source_uri=examples_uri,
        artifact_type=tfx.types.standard_artifacts.Examples,
        properties={"split_names": json.dumps(list(features.SPLITS))},
    ).with_id("examples")
    schema = tfx.dsl.Importer(
        source_uri=os.path.dirname(paths.project_file(cfg.validation.schema_path)),
        artifact_type=tfx.types.standard_artifacts.Schema,
    ).with_id("schema")
    # Model artifacts hold the SavedModel under Format-Serving, as the Trainer writes it.
    model = tfx.dsl.Importer(
        source_uri=os.path.dirname(model_dir), artifact_type=tfx.types.standard_artifacts.Model
    ).with_id(f"model_{tag}")
    nodes = [examples, schema, model]
    channels = (examples.outputs["result"], schema.outputs["result"], model.outputs["result"])
    # The newest blessed model: these runs import given models, so "older than the candidate"
    # (the pipeline's rule) would follow the order the Importers first saw them in.
    baseline = resolvers.latest_blessed_model(resolvers.BASELINE_RESOLVER_ID)
    nodes += [baseline, *validation_and_push(cfg, *channels, baseline)]
    db = os.path.join(root, "metadata.sqlite")
    metadata = tfx.orchestration.metadata.sqlite_metadata_connection_config(db)
    pipeline = tfx.dsl.Pipeline(
        pipeline_name="judge", pipeline_root=root, components=nodes, enable_cache=False,
        metadata_connection_config=metadata, beam_pipeline_args=cfg.beam_pipeline_args(),
    )  # fmt: skip
    tfx.orchestration.LocalDagRunner().run(pipeline)
    store = metadata_store.MetadataStore(metadata)
    latest = {
        kind: max(store.get_artifacts_by_type(kind), key=lambda a: a.id, default=None)
        for kind in ("ModelEvaluation", "ModelBlessing", "InfraBlessing", "PushedModel")
    }
    return cfg, latest


def _props(artifact):
    return {k: getattr(v, v.WhichOneof("value")) for k, v in artifact.custom_properties.items()}


def _push_and_report_on_ram(root: str, inputs: dict, db: str) -> None:
    """Importers of ``inputs`` (on ``root``) -> ServingPusher -> RunReportGen, all writing to ``root``.

    LocalDagRunner runs these Python-function components in this process, where ``ram://`` lives.
    """
    importers = {
        "examples": tfx.types.standard_artifacts.Examples,
        "transform_graph": tfx.types.standard_artifacts.TransformGraph,
        "model": tfx.types.standard_artifacts.Model,
        "model_run": tfx.types.standard_artifacts.ModelRun,
        "evaluation": tfx.types.standard_artifacts.ModelEvaluation,
        "blessing": tfx.types.standard_artifacts.ModelBlessing,
        "infra_blessing": tfx.types.standard_artifacts.InfraBlessing,
    }
    nodes = {
        key: tfx.dsl.Importer(
            source_uri=inputs[key], artifact_type=kind, properties=inputs.get(f"{key}_properties"),
            custom_properties=inputs.get(f"{key}_custom_properties"),
        ).with_id(key)
        for key, kind in importers.items()
    }  # fmt: skip
    given = {key: node.outputs["result"] for key, node in nodes.items()}
    pusher = ServingPusher(
        model=given["model"], model_blessing=given["blessing"], evaluation=given["evaluation"],
        examples=given["examples"], infra_blessing=given["infra_blessing"],
        model_base_path=f"{root}/serving/deeplab", model_name="deeplab",
        warmup_requests=4,
    )  # fmt: skip
    report = RunReportGen(
        examples=given["examples"], transform_graph=given["transform_graph"], model=given["model"],
        model_run=given["model_run"], evaluation=given["evaluation"], blessing=given["blessing"],
        pushed_model=pusher.outputs["pushed_model"], publish_dir=f"{root}/pipeline/report",
        title="object store", samples=2,
    )  # fmt: skip
    pipeline = tfx.dsl.Pipeline(
        pipeline_name="object_store", pipeline_root=f"{root}/pipeline", enable_cache=False,
        components=[*nodes.values(), pusher, report],
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(db),
    )  # fmt: skip
    tfx.orchestration.LocalDagRunner().run(pipeline)


FIGURES = {"class_iou", "confusion_matrix", "data", "samples", "training_curves"}


def _check_push_and_report_on_an_object_store(local: dict, tmp_path) -> None:
    """The ServingPusher and RunReportGen components with every input and output on ``ram://``.

    ``local``: the Beam-made inputs (Beam cannot write ``ram://``), copied there first.
    """
    root = ram_root("components")
    split_counts = {s: len(read_examples(local["examples"], s)) for s in features.SPLITS}
    inputs = {key: f"{root}/in/{key}" for key in local}
    for key, path in local.items():
        storage.copy_tree(path, inputs[key])
    inputs.update(
        examples_properties={"split_names": json.dumps(list(features.SPLITS))},
        examples_custom_properties={f"num_examples_{s}": n for s, n in split_counts.items()},
        blessing_custom_properties={"blessed": 1},  # the Evaluator's, set on its artifact
        infra_blessing_custom_properties={"blessed": 1},  # the serving validation's
    )
    db = str(tmp_path / "object_store.sqlite")
    _push_and_report_on_ram(root, inputs, db)
    store_config = tfx.orchestration.metadata.sqlite_metadata_connection_config(db)
    store = metadata_store.MetadataStore(store_config)

    # The push: version 1 on the object store, complete, with its provenance and warm-up requests.
    base, [pushed] = f"{root}/serving/deeplab", store.get_artifacts_by_type("PushedModel")
    shown = (artifacts.PUSHED, artifacts.PUSHED_VERSION, artifacts.PUSHED_DESTINATION)
    assert {k: _props(pushed)[k] for k in shown} == {
        artifacts.PUSHED: 1, artifacts.PUSHED_VERSION: "1", artifacts.PUSHED_DESTINATION: f"{base}/1"
    }  # fmt: skip
    assert pushed.uri.startswith(f"{root}/pipeline/ServingPusher/")
    assert layout.versions(base) == [1] and layout.provenance(f"{base}/1") == {"source": inputs["model"]}
    model_files = files_under(os.path.join(local["model"], "Format-Serving"))
    assert files_under(f"{base}/1") == model_files | {warmup.WARMUP_FILE, layout.PROVENANCE_FILE}
    requests = [log.predict_log.request for log in warmup.read(f"{base}/1")]
    first_eval = read_examples(local["examples"], features.EVAL_SPLIT)[:4]
    sent = [tf.make_ndarray(r.inputs[signatures.IMAGES])[0] for r in requests]
    assert sent == [feature(e, features.IMAGE_KEY)[0] for e in first_eval]

    # The report, in the RunReport artifact and published: the Evaluator's numbers, the push,
    # and exactly the figures the page shows, each a PNG.
    [artifact] = store.get_artifacts_by_type(RunReport.TYPE_NAME)
    assert artifact.uri.startswith(f"{root}/pipeline/RunReportGen/")
    overall = dict(tfma.load_eval_result(inputs["evaluation"]).slicing_metrics)[()][""][""]
    publish_dir = f"{root}/pipeline/report"
    for where in (artifact.uri, publish_dir):
        report = json.loads(read_bytes(f"{where}/{REPORT_JSON}"))
        page = read_bytes(f"{where}/{INDEX}").decode()
        decision = {"blessed": True, "reasons": [], "pushed_version": 1, "pushed_destination": f"{base}/1"}
        assert report["decision"] == decision and re.search(r"id='pushed-version'>1<", page)
        assert report["model_uri"] == inputs["model"] and report["split_counts"] == split_counts
        assert report["evaluation"]["overall"]["mean_iou"] == overall["mean_iou"]["doubleValue"]
        assert set(report["figures"]) == FIGURES
        assert set(re.findall(r"src='([^']+)'", page)) == set(report["figures"].values())
        assert set(tf.io.gfile.listdir(where)) == {INDEX, REPORT_JSON, *report["figures"].values()}
        for name in report["figures"].values():
            with Image.open(io.BytesIO(read_bytes(f"{where}/{name}"))) as figure:
                assert figure.format == "PNG" and figure.size[0] > 300, name
    # `deeplab-tfx run`'s closing lines read the report on the object store too.
    lines = local_runner.run_summary(store_config, publish_dir)
    assert f"blessed; pushed as version 1 to {base}/1" in lines
    assert f"report: {publish_dir}/index.html" in lines
    assert any(line.startswith("Evaluator: mean IoU ") for line in lines), lines
    assert any(line.startswith("Trainer: best eval mean IoU ") for line in lines), lines


@pytest.fixture(scope="module")
def serving_copies(trained_model, untrained_model, tmp_path_factory):
    """The two models, each in a directory laid out like a Trainer's Model artifact."""
    out = tmp_path_factory.mktemp("models")
    copies = {}
    for tag, src in (("trained", trained_model[0]), ("untrained", untrained_model)):
        dst = out / tag / "Format-Serving"
        tf.io.gfile.makedirs(str(dst.parent))
        os.symlink(src, dst)
        copies[tag] = str(dst)
    return copies


@pytest.mark.slow
def test_blessing_pushing_and_scores(learning_data, trained_model, serving_copies, tmp_path):
    examples_uri, _ = learning_data
    root = str(tmp_path / "run")

    # 1. A freshly initialised model: no baseline yet, judged by min_mean_iou, and rejected.
    cfg, out = _judge(root, examples_uri, serving_copies["untrained"], "untrained")
    base = cfg.serving_model_dir()
    assert not _props(out["ModelBlessing"]).get("blessed")
    pushed = _props(out["PushedModel"])
    assert pushed[artifacts.PUSHED] == 0 and layout.versions(base) == []
    assert "mean IoU" in pushed[artifacts.NOT_PUSHED_REASON]
    assert "is below the required 0.5000 (evaluator.min_mean_iou)" in pushed[artifacts.NOT_PUSHED_REASON]
    infra = _props(out["InfraBlessing"])
    assert (infra[artifacts.BLESSED], infra[artifacts.NOT_VALIDATED_REASON]) == (0, NOT_BLESSED_BY_EVALUATOR)
    assert artifacts.LOAD_SECONDS not in infra and artifacts.PEAK_MEMORY_MB not in infra

    # 2. The trained model: blessed, pushed as version 1.
    cfg, out = _judge(root, examples_uri, serving_copies["trained"], "trained")
    assert _props(out["ModelBlessing"])["blessed"] == 1
    assert _props(out["PushedModel"])[artifacts.PUSHED_VERSION] == "1" and layout.versions(base) == [1]
    # ... after TF's bundle loader loaded it and answered the warm-up records and the eval
    # examples with the Evaluator's masks.
    validated = json.loads(
        storage.read_file(os.path.join(out["InfraBlessing"].uri, artifacts.VALIDATION_FILE))
    )
    assert _props(out["InfraBlessing"])[artifacts.BLESSED] == 1 and validated["validated"]
    assert validated["differing_pixels"] <= cfg.infra_validator.max_mask_disagreement * validated["pixels"]
    assert (
        validated["num_requests"] == cfg.pusher.warmup_requests + cfg.infra_validator.num_examples
        and validated["peak_memory_mb"] < cfg.infra_validator.max_memory_mb
    )
    # The same judgement, pushed and reported by the components on an object store.
    local = {
        "examples": examples_uri,
        "transform_graph": transform_dir(examples_uri),
        "model": os.path.dirname(serving_copies["trained"]),
        "model_run": os.path.join(os.path.dirname(trained_model[0]), "run"),
        "evaluation": out["ModelEvaluation"].uri,
        "blessing": out["ModelBlessing"].uri,
        "infra_blessing": out["InfraBlessing"].uri,
    }
    _check_push_and_report_on_an_object_store(local, tmp_path)

    # TFMA's scores and confusion-matrix plots (as users load them) equal the numpy references
    # on the same predictions.
    result = tfma.load_eval_result(out["ModelEvaluation"].uri)
    slices, plots = dict(result.slicing_metrics), dict(result.plots)
    eval_examples = read_examples(examples_uri, features.EVAL_SPLIT)
    pairs = predicted_pairs(serving_copies["trained"], eval_examples)
    sources = [feature(example, features.SOURCE_KEY)[0].decode() for example in eval_examples]
    present = [feature(example, features.CLASSES_PRESENT_KEY) for example in eval_examples]

    def check(slice_key, chosen):
        chosen_pairs = [p for p, keep in zip(pairs, chosen, strict=True) if keep]
        ref = reference.scores(chosen_pairs)
        got = slices[slice_key][""]
        assert got[""]["example_count"]["doubleValue"] == sum(chosen)
        for name in ("mean_iou", "pixel_accuracy", "frequency_weighted_iou"):
            assert got[""][name]["doubleValue"] == pytest.approx(ref[name], abs=1e-6), (slice_key, name)
        for c, value in enumerate(ref["class_iou"]):
            sub_key = f"classId:{c}"
            if np.isnan(value):
                assert sub_key not in got
            else:
                assert got[sub_key]["class_iou"]["doubleValue"] == pytest.approx(value, abs=1e-6)
        # The per-class guards: each class's IoU, 0.0 where the slice labels fewer pixels of it
        # than min_class_pixels (exempt).
        chosen_matrix = _reference_matrix(chosen_pairs)
        guards = {tfma_metrics.guard_name(name): c for c, name in enumerate(VOC_CLASS_NAMES)}
        for name, c in guards.items():
            exempt = chosen_matrix[c].sum() < config_lib.EvaluatorConfig.min_class_pixels
            want = 0.0 if exempt else ref["class_iou"][c]
            assert got[""][name]["doubleValue"] == pytest.approx(want, abs=1e-6), (slice_key, name)
        # The matrix is a plot only (TFMA's MultiClassConfusionMatrixAtThresholds), exact.
        scores = {"example_count", "mean_iou", "pixel_accuracy", "frequency_weighted_iou"}
        assert set(got[""]) == scores | set(guards)
        np.testing.assert_array_equal(_plot_matrix(plots[slice_key][""][""]), chosen_matrix)
        return ref

    overall = check((), [True] * len(pairs))
    assert overall["mean_iou"] >= 0.5
    matrix = _reference_matrix(pairs)
    tp, fp, fn, _ = reference.class_counts(pairs)
    np.testing.assert_array_equal(np.diag(matrix), tp)
    np.testing.assert_array_equal(matrix.sum(axis=0) - tp, fp)
    np.testing.assert_array_equal(matrix.sum(axis=1) - tp, fn)
    for source in sorted(set(sources)):
        check(((features.SOURCE_KEY, source),), [s == source for s in sources])
    person = VOC_CLASS_NAMES.index("person")
    if any(person in p for p in present):
        check(((features.CLASSES_PRESENT_KEY, person),), [person in p for p in present])
    # What TFMA's viewer is given for the overall slice and for a slice by source; the report
    # reads the same plot.
    np.testing.assert_array_equal(_plot_matrix(tfma.view.render_plot(result).data), matrix)
    source = sources[0]
    by_source = tfma.view.render_plot(result, tfma.SlicingSpec(feature_values={features.SOURCE_KEY: source}))
    assert by_source.config["sliceName"] == f"{features.SOURCE_KEY}:{source}"
    chosen = [p for p, s in zip(pairs, sources, strict=True) if s == source]
    np.testing.assert_array_equal(_plot_matrix(by_source.data), _reference_matrix(chosen))
    reported = eval_results.load(out["ModelEvaluation"].uri)["overall"]["confusion_matrix"]
    np.testing.assert_array_equal(reported, matrix)

    # The warm-up file: PredictionLog records of eval images that the signature accepts.
    version_dir = os.path.join(base, "1")
    logs = warmup.read(version_dir)
    assert len(logs) == cfg.pusher.warmup_requests
    served = tf.saved_model.load(version_dir).signatures[SERVING_DEFAULT]
    for log in logs:
        request = log.predict_log.request
        assert (request.model_spec.name, request.model_spec.signature_name) == ("deeplab", SERVING_DEFAULT)
        images = tf.make_ndarray(request.inputs[signatures.IMAGES])
        answer = served(images=tf.constant(images))
        width, height = Image.open(io.BytesIO(images[0])).size
        assert answer["class_ids"].shape == (1, height, width)

    # 3. The untrained model again, with the value threshold off: the change threshold against
    # the blessed baseline still rejects it, and version 1 stays the only one.
    cfg, out = _judge(root, examples_uri, serving_copies["untrained"], "untrained_again", min_mean_iou=0.0)
    reason = _props(out["PushedModel"])[artifacts.NOT_PUSHED_REASON]
    assert "below the baseline's" in reason and "max_mean_iou_drop" in reason, reason
    assert "min_mean_iou" not in reason
    assert layout.versions(base) == [1]
    # With a baseline TFMA's output holds two models, "candidate" and "baseline". TFMA reads
    # plots only for a named model then (metrics default to the candidate): the report names it.
    evaluation = out["ModelEvaluation"].uri
    assert tfma.load_eval_result(evaluation).plots == []
    baseline = dict(tfma.load_eval_result(evaluation, model_name=tfma.BASELINE_KEY).plots)
    np.testing.assert_array_equal(_plot_matrix(baseline[()][""][""]), matrix)  # the trained model's
    untrained = _reference_matrix(predicted_pairs(serving_copies["untrained"], eval_examples))
    np.testing.assert_array_equal(eval_results.load(evaluation)["overall"]["confusion_matrix"], untrained)

    # 4. The trained model with its best class collapsed into background, the mean IoU's change
    # threshold off: the per-class guard still refuses it, naming the class.
    labelled = matrix.sum(axis=1)
    trained_iou = metrics.class_iou(matrix)
    floor = cfg.evaluator.min_class_pixels
    guarded = [c for c in range(1, len(labelled)) if labelled[c] >= floor]
    lost = max(guarded, key=lambda c: trained_iou[c])
    assert trained_iou[lost] > cfg.evaluator.max_class_iou_drop
    collapsed = _collapsed(serving_copies["trained"], lost, tmp_path / "collapsed" / "Format-Serving")
    cfg, out = _judge(root, examples_uri, collapsed, "collapsed", max_mean_iou_drop=1.0)
    reasons = verdict.reasons(out["ModelEvaluation"].uri)
    name = VOC_CLASS_NAMES[lost]
    expected = (
        f"class {name!r}: its IoU is {trained_iou[lost]:.4f} below the baseline's (at most "
        f"{cfg.evaluator.max_class_iou_drop:.4f} allowed per class, evaluator.max_class_iou_drop)"
    )
    assert expected in reasons and not any("mean IoU" in r for r in reasons), reasons
    assert _props(out["PushedModel"])[artifacts.PUSHED] == 0 and layout.versions(base) == [1]
    # The report's per-class change: against the baseline, with the exempt classes named.
    scores = eval_results.load(out["ModelEvaluation"].uri)
    assert scores["min_class_pixels"] == floor
    before = [None if np.isnan(v) else pytest.approx(v, abs=1e-6) for v in trained_iou]
    assert scores["baseline_class_iou"] == before
    # The classes whose guard failed are those the reasons name; the report marks them.
    named = sorted(re.findall(r"^class '([^']+)': its IoU", "\n".join(reasons), re.M))
    assert scores["guard_failed"] == named and name in named
    assert scores["overall"]["class_iou"][lost] == 0.0 and name == scores["class_names"][lost]


def _collapsed(model_dir: str, class_id: int, out) -> str:
    """``model_dir``'s ``serving_examples`` with ``class_id`` predicted as background: a model
    that lost one class and kept the rest."""
    original = tf.saved_model.load(model_dir)
    serve = original.signatures[signatures.SERVING_EXAMPLES]

    class Collapsed(tf.Module):
        def __init__(self):
            super().__init__()
            self.original = original

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def __call__(self, examples):
            out = dict(serve(**{signatures.EXAMPLES: examples}))
            ids = out[signatures.CLASS_IDS]
            out[signatures.CLASS_IDS] = tf.where(ids == class_id, tf.zeros_like(ids), ids)
            return out

    module = Collapsed()
    tf.saved_model.save(module, str(out), signatures={signatures.SERVING_EXAMPLES: module.__call__})
    return str(out)


def _as_model_artifact(model_dir: str, out) -> str:
    """``model_dir`` linked into a directory laid out like a Trainer's Model artifact."""
    dst = out / "Format-Serving"
    tf.io.gfile.makedirs(str(out))
    os.symlink(model_dir, dst)
    return str(dst)


@pytest.mark.slow
def test_the_evaluator_scores_a_test_time_augmented_export_as_it_is_served(
    learning_data, trained_model, tmp_path
):
    """The model of ``trained_model`` exported as trained and with test-time augmentation (3
    scales, flip), judged one after the other by the Evaluator, the second against the first as
    its baseline with no drop allowed.

    What the code guarantees is asserted: TFMA scores exactly the masks each export serves, and
    the blessing follows those two scores. Which export scores higher is a property of the
    trained model, not of the code (on the generator's hard mode TTA loses: the README's
    `benchmarks/test_time_augmentation.py` figures), so it is printed as a measurement. That the
    averaged logits are each view's logits averaged is tests/test_tta.py's.
    """
    examples_uri, tft_output = learning_data
    plain_dir, _ = trained_model
    tta_dir = str(tmp_path / "tta")
    net = tf_keras.models.load_model(plain_dir, compile=False)
    views = tta.TestTimeAugmentation((0.75, 1.0, 1.25), flip=True)
    export.export(net, tft_output, tta_dir, dataset_spec.of_model(plain_dir), tta=views)

    eval_examples = read_examples(examples_uri, features.EVAL_SPLIT)
    plain_pairs = predicted_pairs(plain_dir, eval_examples)
    tta_pairs = predicted_pairs(tta_dir, eval_examples)
    changed = sum(int((p != t).sum()) for (_, p), (_, t) in zip(plain_pairs, tta_pairs, strict=True))
    assert changed > 0, "test-time augmentation changes the masks"

    root = str(tmp_path / "run")
    # The Evaluator under test, not the serving validation (test_blessing_pushing_and_scores').
    plain, tta_model = (
        _as_model_artifact(plain_dir, tmp_path / "plain"),
        _as_model_artifact(tta_dir, tmp_path / "t"),
    )
    _, out = _judge(root, examples_uri, plain, "plain", validate_serving=False, min_mean_iou=0.0)
    assert _props(out["ModelBlessing"])["blessed"] == 1
    _, out = _judge(
        root, examples_uri, tta_model, "tta", validate_serving=False, min_mean_iou=0.0, max_mean_iou_drop=0.0
    )
    evaluation = out["ModelEvaluation"].uri

    def mean_iou(model_name):
        overall = dict(tfma.load_eval_result(evaluation, model_name=model_name).slicing_metrics)[()]
        return overall[""][""]["mean_iou"]["doubleValue"]

    # TFMA scored exactly what is served (the served masks' numpy reference), for both models.
    tta_iou, plain_iou = mean_iou(tfma.CANDIDATE_KEY), mean_iou(tfma.BASELINE_KEY)
    assert tta_iou == pytest.approx(reference.scores(tta_pairs)["mean_iou"], abs=1e-6)
    assert plain_iou == pytest.approx(reference.scores(plain_pairs)["mean_iou"], abs=1e-6)
    # Both learned (an untrained model scores about 0.05): views averaged wrongly, or masks
    # served at the wrong place, would not keep a model of the blessing test's 0.5 there.
    assert min(tta_iou, plain_iou) >= 0.5, (tta_iou, plain_iou)
    # With no drop allowed, the blessing is exactly "not below the baseline" on those scores.
    blessed = _props(out["ModelBlessing"]).get("blessed", 0) == 1
    assert blessed == (tta_iou >= plain_iou), (tta_iou, plain_iou)
    reason = _props(out["PushedModel"]).get(artifacts.NOT_PUSHED_REASON, "")
    assert blessed or ("below the baseline's" in reason and "max_mean_iou_drop" in reason), reason
    print(f"eval split: mean IoU {plain_iou:.4f} plain, {tta_iou:.4f} with test-time augmentation")
