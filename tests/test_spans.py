"""Span patterns resolved as TFX's ExampleGen resolves them: numbers, dates, versions, widths."""

import os

import numpy as np
import pytest
import tensorflow as tf

from components.segmentation_example_gen import driver, spans, spec
from core import features
from core.dataset_spec import VOC_SPEC
from evaluation import tfma_metrics
from trainer import data as data_lib
from trainer import training


def _folders(root, *names):
    for name in names:
        os.makedirs(os.path.join(root, name))


def test_the_newest_span_or_the_one_asked_for(tmp_path):
    _folders(tmp_path, "span-1", "span-3", "span-x", "span-12")
    (tmp_path / "span-7").write_text("a file, not a span")
    pattern = f"{tmp_path}/span-{{SPAN}}"
    assert spans.resolve({"voc_root": pattern, "sbd_root": None}) == spans.Span(
        12, None, {"voc_root": f"{tmp_path}/span-12", "sbd_root": None}
    )
    assert spans.resolve({"voc_root": pattern}, 3).roots == {"voc_root": f"{tmp_path}/span-3"}
    with pytest.raises(spans.SpanError, match=r"span 2 is not under .*: found spans \[1, 3, 12\]"):
        spans.resolve({"voc_root": pattern}, 2)
    # No specs: span 0, as before spans.
    assert spans.resolve({"voc_root": str(tmp_path)}) == spans.Span(0, None, {"voc_root": str(tmp_path)})


def test_dates_and_versions(tmp_path):
    _folders(tmp_path, "2026-12-01/v1", "2026-12-01/v2", "2026-12-05/v1")
    pattern = f"{tmp_path}/{{YYYY}}-{{MM}}-{{DD}}/v{{VERSION}}"
    # TFX's convention: a date's span number is its days since 1970-01-01.
    newest = spans.resolve({"root": pattern})
    assert (newest.span, newest.version) == (spans.date_to_span(2026, 12, 5), 1)
    backfill = spans.resolve({"root": pattern}, spans.date_to_span(2026, 12, 1))
    assert backfill.version == 2 and backfill.roots == {"root": f"{tmp_path}/2026-12-01/v2"}
    # A folder that matches the pattern but is no date stops the run, naming it.
    _folders(tmp_path, "2026-13-01/v1")
    with pytest.raises(spans.SpanError, match=r"2026-13-01/v1' is not a date: month must be in 1..12"):
        spans.resolve({"root": pattern})


def test_widths_and_zero_padding_read_the_folder_as_named(tmp_path):
    _folders(tmp_path, "span-001", "span-002", "span-10")
    # {SPAN:3}: exactly three digits; the folder is read as it is named.
    assert spans.resolve({"root": f"{tmp_path}/span-{{SPAN:3}}"}).roots == {"root": f"{tmp_path}/span-002"}
    assert spans.resolve({"root": f"{tmp_path}/span-{{SPAN}}"}).roots == {"root": f"{tmp_path}/span-10"}
    assert spans.locate(f"{tmp_path}/span-{{SPAN}}", 1, None) == f"{tmp_path}/span-001"
    _folders(tmp_path, "span-1")
    with pytest.raises(spans.SpanError, match="are both span 1"):
        spans.available(f"{tmp_path}/span-{{SPAN}}")


def test_roots_must_agree_and_patterns_follow_tfx_rules(tmp_path):
    _folders(tmp_path, "voc/span-1", "voc/span-2", "sbd/span-1")
    roots = {"voc_root": f"{tmp_path}/voc/span-{{SPAN}}", "sbd_root": f"{tmp_path}/sbd/span-{{SPAN}}"}
    # The newest span under every root: SBD has no span 2 yet.
    assert spans.resolve(roots).span == 1
    for bad, reason in (
        ("/d/{SPAN}/{YYYY}-{MM}-{DD}", "exclusive"),
        ("/d/{YYYY}-{MM}", "needs all of"),
        ("/d/v{VERSION}", "needs {SPAN} or a date"),
        ("/d/{SPAN}/{SPAN}", "more than once"),
    ):
        with pytest.raises(spans.SpanError, match=reason):
            spans.check_pattern(bad)


def test_the_executor_never_guesses_a_span(tmp_path):
    _folders(tmp_path, "span-4")
    props = {spec.VOC_ROOT_KEY: f"{tmp_path}/span-{{SPAN}}", spec.SBD_ROOT_KEY: "", spec.DATA_ROOT_KEY: ""}
    # The driver did not run (no span): a patterned root is an error, not span 0.
    with pytest.raises(spans.SpanError, match="no span was resolved before the executor ran"):
        driver.roots_of(props)
    assert driver.roots_of({**props, spec.SPAN_KEY: 4})[spec.VOC_ROOT_KEY] == f"{tmp_path}/span-4"
    with pytest.raises(spans.SpanError, match="span 5, version None is not under"):
        driver.roots_of({**props, spec.SPAN_KEY: 5})


def test_an_exempt_class_cannot_fail_its_guard():
    # Class 2 has 30 labelled pixels: exempt at a floor of 100, whatever the model predicts.
    good = np.array([[1000, 0, 0], [0, 500, 0], [0, 0, 30]])
    lost = np.array([[1000, 0, 0], [0, 500, 0], [30, 0, 0]])
    assert tfma_metrics.guarded_iou(good, 2, 100) == tfma_metrics.guarded_iou(lost, 2, 100) == 0.0
    assert tfma_metrics.guarded_iou(good, 2, 10) == 1.0 and tfma_metrics.guarded_iou(lost, 2, 10) == 0.0
    assert tfma_metrics.guarded_iou(lost, 0, 100) == pytest.approx(1000 / 1030)


def _records(path, ids):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path, options="GZIP") as writer:
        for i in ids:
            example = tf.train.Example()
            example.features.feature[features.FILENAME_KEY].bytes_list.value.append(i.encode())
            writer.write(example.SerializeToString())


def test_an_id_that_is_eval_in_any_span_never_trains(tmp_path):
    """Two spans whose lists disagree: ``b`` is eval in span 1 and train in span 2."""
    layout = {"span1": {"train": ["a", "c"], "eval": ["b"]}, "span2": {"train": ["b", "d"], "eval": ["e"]}}
    for span, splits in layout.items():
        for split, ids in splits.items():
            _records(str(tmp_path / span / f"Split-{split}" / "data.gz"), ids)
    files = {s: [str(tmp_path / span / f"Split-{s}" / "*") for span in layout] for s in ("train", "eval")}
    job = training.TrainingJob(
        train_files=files["train"], eval_files=files["eval"], transform_output="", serving_model_dir="",
        model_run_dir="", train_steps=1, dataset=VOC_SPEC,
    )  # fmt: skip
    held_out = training.eval_ids_of_other_spans(job)
    assert held_out == [b"b", b"e"]
    spec = {features.FILENAME_KEY: tf.io.FixedLenFeature([], tf.string)}
    train = tf.data.TFRecordDataset(
        sorted(tf.io.gfile.glob(files["train"][0]) + tf.io.gfile.glob(files["train"][1])), "GZIP"
    )
    kept = train.filter(data_lib.id_not_in(held_out)).map(
        lambda r: tf.io.parse_single_example(r, spec)[features.FILENAME_KEY]
    )
    assert sorted(kept.as_numpy_iterator()) == [b"a", b"c", b"d"]
    # One span: ingestion already keeps its splits apart, nothing to hold out (and no pass over eval).
    single = training.TrainingJob(**{**job.__dict__, "train_files": files["train"][:1]})
    assert training.eval_ids_of_other_spans(single) == []
