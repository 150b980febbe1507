"""Everything after ingestion follows the dataset spec: Transform, the model head, the Trainer's
export, the Evaluator's metrics, the report's colours, the pushed model and its server.

Tiny on purpose: 32 px images, 3 and 20 classes (a VOC test covers 21 everywhere else), a
MobileNetV2 of width 0.35 trained for 2 steps. The Transform graph is analyzed in memory from a
handful of examples that hold only the image and the mask, the two features Transform reads.
"""

import dataclasses
import io
import json
import logging
import os

import apache_beam as beam
import grpc
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_analysis as tfma
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
import tf_keras as keras
from PIL import Image
from tensorflow_model_analysis.metrics import metric_specs, metric_types
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io, schema_utils
from tfx import v1 as tfx

from components.run_report import figures, page
from core import artifacts, dataset_spec, features, metrics, signatures
from core import config as config_lib
from core.config import EvaluatorConfig, TrainerConfig
from core.dataset_spec import VOC_SPEC
from evaluation import eval_config, tfma_metrics
from serving import client, layout, warmup
from serving.server import Server
from tests.test_evaluation import _extracts, run_metrics
from trainer import export, run_fn, training
from transform import palette, preprocessing

SIDE = 32  # images are SIDE wide and 3/4 of it high: the longer side needs no resize
THREE = dataset_spec.DatasetSpec(
    name="three", layout=dataset_spec.FOLDERS, mask_encoding=dataset_spec.GREY,
    class_names=("background", "cat", "dog"), colours=((0, 0, 0), (200, 30, 40), (20, 90, 250)),
)  # fmt: skip
TRANSFORM_GRAPH = "transform_graph"
# As the schema has them: one value each.
RAW_SPEC = {
    features.IMAGE_KEY: tf.io.FixedLenFeature([1], tf.string),
    features.MASK_KEY: tf.io.FixedLenFeature([1], tf.string),
}
TINY = dict(
    backbone="mobilenetv2", width=0.35, backbone_weights="", aspp_filters=8, decoder_filters=8,
    low_level_filters=8, batch_size_per_replica=2, train_steps=2, steps_per_epoch=2, shuffle_buffer=4,
    with_probabilities=True, class_weights=True,
)  # fmt: skip


def _jpeg(rng) -> bytes:
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (SIDE * 3 // 4, SIDE, 3), dtype=np.uint8)).save(out, "JPEG")
    return out.getvalue()


def _examples(spec, count: int, seed: int) -> list:
    """``count`` (image, mask indices) pairs: every index 0-255 occurs, so classes, ignored (255)
    and indices that are no class of ``spec`` (N-254) are all there."""
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(count):
        indices = rng.integers(0, 256, (SIDE * 3 // 4, SIDE)).astype(np.uint8)
        indices.flat[:256] = np.arange(256)
        pairs.append((_jpeg(rng), indices))
    return pairs


def _instances(spec, pairs) -> list:
    return [
        {features.IMAGE_KEY: [jpeg], features.MASK_KEY: [palette.encode_palette_png(ids, spec.palette())]}
        for jpeg, ids in pairs
    ]


def _analyze(spec, pairs, out: str) -> tft.TFTransformOutput:
    """The Transform component's analysis of ``pairs``, with the spec's class count as the
    pipeline passes it (``custom_config["num_classes"]``)."""
    custom_config = {"image_size": SIDE, preprocessing.NUM_CLASSES_KEY: spec.num_classes}
    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(RAW_SPEC))
    graph = os.path.join(out, TRANSFORM_GRAPH)
    with beam.Pipeline() as p, tft_beam.Context(temp_dir=os.path.join(out, "tmp"), force_tf_compat_v1=False):
        data = p | beam.Create(_instances(spec, pairs))
        transform_fn = (data, metadata) | tft_beam.AnalyzeDataset(
            lambda inputs: preprocessing.preprocessing_fn(inputs, custom_config)
        )
        _ = transform_fn | tft_beam.WriteTransformFn(graph)
    metadata_io.write_metadata(metadata, os.path.join(graph, "metadata"))
    return tft.TFTransformOutput(graph)


def _transform(tft_output, instances) -> dict:
    raw = {key: tf.constant([i[key] for i in instances]) for key in RAW_SPEC}  # [batch, 1]
    return tft_output.transform_features_layer()(raw)


# Transform


@pytest.mark.slow
@pytest.mark.parametrize("spec", [THREE, config_lib.load_dataset_spec("cihp")], ids=["3", "20"])
def test_preprocessing_fn_reads_the_spec_classes(spec, tmp_path):
    n = spec.num_classes
    pairs = _examples(spec, 3, seed=n)
    tft_output = _analyze(spec, pairs, str(tmp_path))
    labels = _transform(tft_output, _instances(spec, pairs))[features.LABEL].numpy()
    height = SIDE * 3 // 4
    for label, (_, indices) in zip(labels, pairs, strict=True):
        expected = np.full((SIDE, SIDE), features.IGNORE_LABEL)
        expected[:height] = np.where((indices < n) | (indices == 255), indices, features.IGNORE_LABEL)
        np.testing.assert_array_equal(label, expected)
    every = np.bincount(np.concatenate([ids.ravel() for _, ids in pairs]), minlength=256)
    counts = preprocessing.read_class_counts(tft_output, n)
    assert counts == {
        **{str(c): int(every[c]) for c in range(n)},
        "255": int(every[255]),
        features.OUT_OF_PALETTE_TOKEN: int(every[n:255].sum()),
    }


@pytest.mark.parametrize("value", [1, 256, "3", True])
def test_a_class_count_transform_cannot_work_with_is_refused(value):
    with pytest.raises(ValueError, match=r"custom_config\['num_classes'\]=.* integer in \[2, 255\]"):
        preprocessing.num_classes_of({"num_classes": value})


def test_masks_decode_for_any_class_count_at_the_edges():
    indices = np.array([[0, 1, 2, 3, 253, 254, 255]], np.uint8)
    png = tf.constant(palette.encode_palette_png(indices))
    for n, want in ((2, [0, 1, 255, 255, 255, 255, 255]), (254, [0, 1, 2, 3, 253, 255, 255]),
                    (255, [0, 1, 2, 3, 253, 254, 255])):  # fmt: skip
        ids, no_class = tf.function(preprocessing.decode_mask)(png, n)
        np.testing.assert_array_equal(ids.numpy(), [want])
        assert int(no_class) == sum(1 for v in indices[0] if n <= v < 255)


# Model and Trainer


def test_the_head_the_mean_iou_and_the_class_weights_have_n_classes():
    config = TrainerConfig(**TINY)
    net = training.build_model(config, SIDE, replicas=1, images_normalized=False, num_classes=3)
    assert net.output_shape == (None, SIDE, SIDE, 3)
    training.compile_model(net, config, total_steps=10)
    net.evaluate(np.zeros((1, SIDE, SIDE, 3), np.float32), np.full((1, SIDE, SIDE), 2), verbose=0)
    [mean_iou] = [m for m in net.metrics if m.name == metrics.MEAN_IOU]
    assert mean_iou.num_classes == 3
    with pytest.raises(ValueError, match="21 class weights for a model of 3 classes"):
        training.compile_model(net, config, 10, class_weights=[1.0] * dataset_spec.VOC_SPEC.num_classes)


def _write_examples(spec, uri: str, splits: dict) -> None:
    """An Examples artifact as ingestion writes one: GZIP TFRecords per split, and the spec."""
    for split, pairs in splits.items():
        os.makedirs(os.path.join(uri, f"Split-{split}"))
        path = os.path.join(uri, f"Split-{split}", "data_tfrecord-00000-of-00001.gz")
        with tf.io.TFRecordWriter(path, "GZIP") as writer:
            for instance in _instances(spec, pairs):
                feature = {
                    k: tf.train.Feature(bytes_list=tf.train.BytesList(value=v)) for k, v in instance.items()
                }
                writer.write(
                    tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
                )
    dataset_spec.write(spec, uri)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``(spec, model dir, eval JPEGs)``: run_fn on a 3-class Examples artifact, 2 steps."""
    root = tmp_path_factory.mktemp("three_classes")
    examples_uri = str(root / "examples")
    pairs = {"train": _examples(THREE, 4, seed=1), "eval": _examples(THREE, 2, seed=2)}
    _write_examples(THREE, examples_uri, pairs)
    _analyze(THREE, pairs["train"], str(root))
    fn_args = tfx.components.FnArgs(
        train_files=[os.path.join(examples_uri, "Split-train", "*")],
        eval_files=[os.path.join(examples_uri, "Split-eval", "*")],
        transform_output=str(root / TRANSFORM_GRAPH),
        serving_model_dir=str(root / "model"),
        model_run_dir=str(root / "run"),
        train_steps=2,
        custom_config={run_fn.TRAINER_KEY: TINY},
    )
    run_fn.run_fn(fn_args)
    return str(root / "model"), [jpeg for jpeg, _ in pairs["eval"]]


@pytest.mark.slow
def test_run_fn_exports_the_spec_of_its_examples(trained):
    model_dir, jpegs = trained
    assert dataset_spec.read(os.path.join(model_dir, artifacts.ASSETS_EXTRA)) == THREE
    assert dataset_spec.of_model(model_dir) == THREE
    out = tf.saved_model.load(model_dir).signatures[signatures.SERVING_DEFAULT](images=tf.constant(jpegs))
    ids = out[signatures.CLASS_IDS].numpy()
    assert ids.shape == (2, SIDE * 3 // 4, SIDE) and ids.max() < THREE.num_classes
    assert out[signatures.PROBABILITIES].shape[-1] == THREE.num_classes


def test_an_export_with_another_datasets_classes_is_refused(tmp_path):
    net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="the model predicts 3 classes but dataset 'voc' has 21"):
        export.export(net, None, str(tmp_path), VOC_SPEC)
    assert not os.listdir(tmp_path), "nothing exported"


@pytest.mark.slow
def test_the_pushed_version_carries_its_classes_to_the_server_and_predict(trained, tmp_path, caplog):
    model_dir, jpegs = trained
    base = str(tmp_path / "serving" / "pets")
    logs = warmup.prediction_logs(jpegs[:1], "pets")
    assert layout.push(model_dir, base, "model/1", lambda d: warmup.write(d, logs)) == (1, True)
    version = os.path.join(base, "1")
    # The spec and the warm-up requests side by side in assets.extra, both whole.
    assert dataset_spec.read(os.path.join(version, artifacts.ASSETS_EXTRA)) == THREE
    assert len(warmup.read(version)) == 1
    # The server says which classes it serves, and answers ids of those classes over gRPC.
    server = Server("pets", base, port=0, poll_seconds=0.2)
    with caplog.at_level(logging.INFO):
        server.start()
    try:
        assert "model pets version 1 AVAILABLE" in caplog.text
        assert "dataset 'three', 3 classes: background, cat, dog" in caplog.text
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "pets"
            request.inputs[signatures.IMAGES].CopyFrom(tf.make_tensor_proto(jpegs, dtype=tf.string))
            response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request)
        ids = tf.make_ndarray(response.outputs[signatures.CLASS_IDS])
        assert ids.shape == (2, SIDE * 3 // 4, SIDE) and ids.max() < THREE.num_classes
    finally:
        server.stop()
    # predict: the masks in the model's colours, whichever way the spec is found.
    assert client.prediction_spec(base, None, None, VOC_SPEC) == THREE
    assert client.prediction_spec(base, None, 1, VOC_SPEC) == THREE
    with pytest.raises(
        ValueError, match=r"--dataset cihp has classes .* predicts \['background', 'cat', 'dog'\]"
    ):
        client.prediction_spec(base, "cihp", None, VOC_SPEC)
    with pytest.raises(FileNotFoundError, match="no complete version 7"):
        client.prediction_spec(base, None, 7, VOC_SPEC)
    assert client.prediction_spec(None, "oxford_pet", None, VOC_SPEC).name == "oxford_pet"
    assert client.prediction_spec(None, None, None, THREE) == THREE  # the caller's fallback
    mask = ids[0]
    mask_path, overlay_path = client.write_results("in/cat.jpg", jpegs[0], mask, str(tmp_path / "out"), THREE)
    with Image.open(mask_path) as png:
        assert png.mode == "P"
        np.testing.assert_array_equal(np.asarray(png), mask)
        np.testing.assert_array_equal(np.asarray(png.getpalette(), np.uint8).reshape(-1, 3), THREE.palette())
    assert os.path.exists(overlay_path)
    with pytest.raises(ValueError, match=r"class id 2, but 'oxford_pet' has 2 classes"):
        client.write_results("in/cat.jpg", jpegs[0], np.full_like(mask, 2), str(tmp_path / "out"),
                             config_lib.load_dataset_spec("oxford_pet"))  # fmt: skip


# Evaluator


def test_the_eval_config_has_the_spec_classes_and_names():
    pets = config_lib.load_dataset_spec("oxford_pet")
    config = eval_config.make_eval_config(EvaluatorConfig(), pets)
    ours = [
        m for spec in config.metrics_specs for m in spec.metrics if m.module == eval_config.METRICS_MODULE
    ]
    guards = [m for m in ours if m.class_name == tfma_metrics.SegmentationClassIoUGuard.__name__]
    scores = [m for m in ours if m not in guards]
    assert [m.class_name for m in scores] == [cls.__name__ for cls in tfma_metrics.METRIC_CLASSES]
    for metric in scores:
        assert json.loads(metric.config) == {"num_classes": 2, "class_names": ["background", "pet"]}
    # One per-class guard per class of the spec, named for it.
    floor = EvaluatorConfig.min_class_pixels
    assert [json.loads(g.config) for g in guards] == [
        {"name": f"class_iou_guard/{name}", "num_classes": 2, "class_names": ["background", "pet"],
         "class_id": c, "min_pixels": floor}
        for c, name in enumerate(["background", "pet"])
    ]  # fmt: skip
    assert eval_config.class_names(config) == ("background", "pet")
    # The metrics TFMA builds from that config score exactly 2 classes.
    truth = np.array([[0, 0, 1], [1, 1, 255]], np.uint8)
    predicted = np.array([[0, 1, 1], [1, 1, 0]], np.uint8)
    out = run_metrics([metric_specs.metric_instance(m) for m in ours], [_extracts(truth, predicted)])
    # Two and three labelled pixels: both classes are under the guard's floor, exempt (0.0).
    guarded = {k.name: v for k, v in out.items() if k.name.startswith("class_iou_guard/")}
    assert guarded == {"class_iou_guard/background": 0.0, "class_iou_guard/pet": 0.0}
    low = eval_config.make_eval_config(EvaluatorConfig(min_class_pixels=1), pets)
    low_guards = [m for s in low.metrics_specs for m in s.metrics if m.class_name == guards[0].class_name]
    out_low = run_metrics(
        [metric_specs.metric_instance(m) for m in low_guards], [_extracts(truth, predicted)]
    )
    assert {k.name: v for k, v in out_low.items() if k.name.startswith("class_iou_guard/")} == {
        "class_iou_guard/background": 0.5,
        "class_iou_guard/pet": 0.75,
    }
    class_iou = {k.sub_key.class_id: v for k, v in out.items() if k.name == metrics.CLASS_IOU and k.sub_key}
    assert class_iou == {0: 0.5, 1: 0.75}
    [plot] = [v for k, v in out.items() if isinstance(k, metric_types.PlotKey)]
    cells = {
        (e.actual_class_id, e.predicted_class_id): e.num_weighted_examples for e in plot.matrices[0].entries
    }
    assert cells == {(0, 0): 1, (0, 1): 1, (1, 0): 0, (1, 1): 3}
    # A label the spec does not have is an error, not a dropped pixel.
    with pytest.raises(ValueError, match=r"class ids must be in \[0, 2\) or 255"):
        run_metrics(
            [metric_specs.metric_instance(scores[0])], [_extracts(np.full((2, 2), 2, np.uint8), truth[:, :2])]
        )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "num_classes=None cannot work"),
        ({"num_classes": 3, "class_names": ["a", "b"]}, "2 names for num_classes=3"),
    ],
)
def test_a_metric_without_the_spec_classes_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tfma_metrics.SegmentationMeanIoU(**kwargs)


def test_the_eval_config_without_a_spec_is_vocs():
    config = eval_config.make_eval_config(EvaluatorConfig(), VOC_SPEC)
    assert eval_config.class_names(config) == dataset_spec.VOC_CLASS_NAMES
    with pytest.raises(ValueError, match="not made by make_eval_config"):
        eval_config.class_names(tfma.EvalConfig())


# Run report


def test_report_figures_and_page_use_the_spec_colours_and_names():
    pets = config_lib.load_dataset_spec("oxford_pet")
    colours = pets.palette()
    image = np.full((2, 3, 3), 100, np.uint8)
    truth = np.array([[0, 1, 255], [1, 1, 0]], np.uint8)
    predicted = np.array([[1, 1, 0], [0, 1, 255]], np.uint8)
    shown, truth_rgb, predicted_rgb, over = figures.sample_panels(image, truth, predicted, pets)
    np.testing.assert_array_equal(truth_rgb, colours[truth])
    np.testing.assert_array_equal(predicted_rgb[0, 0], [255, 170, 0])  # the spec's "pet"
    np.testing.assert_array_equal(predicted_rgb[1, 2], colours[255])
    # Over the image: half the class colour where the pet is, the image itself elsewhere.
    np.testing.assert_array_equal(over[0, 0], [177, 135, 50])
    np.testing.assert_array_equal(over[0, 2], image[0, 2])
    np.testing.assert_array_equal(over[1, 2], image[1, 2])
    assert shown is image
    with pytest.raises(ValueError, match=r"palette must be \[256, 3\] uint8"):
        palette.colorize(truth, pets.class_colours())
    # The IoU bars are painted in the classes' colours.
    bars = np.asarray(Image.open(io.BytesIO(figures.class_iou_bars([0.9, 0.6], 0.75, pets))).convert("RGB"))
    assert (bars == [255, 170, 0]).all(-1).sum() > 100
    with pytest.raises(ValueError, match="a 3x3 confusion matrix for 2 class names"):
        figures.confusion_heatmap(np.ones((3, 3)), pets.class_names)
    overall = {"examples": 2, "mean_iou": 0.75, "pixel_accuracy": 0.8, "frequency_weighted_iou": 0.7,
               "class_iou": [0.9, 0.6]}  # fmt: skip
    html = page.render({
        "pipeline_name": "pets", "model_uri": "m", "dataset": pets.name,
        "class_names": list(pets.class_names), "decision": {"blessed": False, "reasons": []}, "figures": {},
        "evaluation": {"overall": overall, "slices": [
            {"feature": features.CLASSES_PRESENT_KEY, "value": 1, "examples": 2, "mean_iou": 0.5,
             "pixel_accuracy": 0.5}]},
    })  # fmt: skip
    assert "<tr data-class='pet'><td>1</td><td>pet</td><td class='num'>0.6000</td></tr>" in html
    assert "<td>1 (pet)</td>" in html and 'id="dataset">oxford_pet</b> (2 classes)' in html
    # With the pet as the spec's background, the overlay paints what was background instead.
    as_background = dataclasses.replace(pets, background_class="pet")
    over = figures.sample_panels(image, truth, predicted, as_background)[3]
    np.testing.assert_array_equal(over[0, 0], image[0, 0])
    np.testing.assert_array_equal(over[0, 2], [50, 50, 50])  # "background", black at half


def test_the_report_reads_what_ingestion_recorded_on_the_examples():
    from components.run_report import component as report_component
    from components.segmentation_example_gen import beam_ingest, executor

    examples = tfx.types.standard_artifacts.Examples()
    assert report_component.ingestion_of(examples) is None  # Examples made before ingestion counted
    census = {"train": {"classes": {"a": 1, "b": 0}, "ignored": 3}}
    unread = {"/d/img": {"count": 1, "names": ["x.tif"]}}
    summary = beam_ingest.IngestSummary(
        splits={}, rejected=[], seconds=0.0, listed=0, rejected_fraction=0.0, max_rejected_fraction=0.0,
        counters={}, max_ignored_fraction=0.5, pixels=census, unread_files=unread, warnings=["class 'b' ..."],
    )  # fmt: skip
    executor.record_findings(examples, summary)
    assert report_component.ingestion_of(examples) == {
        page.INGESTION_PIXELS: census,
        page.INGESTION_UNREAD: unread,
        page.INGESTION_WARNINGS: ["class 'b' ..."],
    }
