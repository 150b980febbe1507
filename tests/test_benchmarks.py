"""The README's benchmark table is the JSON's, and the scaling fit says what it should."""

import json
import os

import numpy as np
import pytest

from benchmarks import baselines, demo_figures, learning, scaling, suite_time, summary

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def _readme_block(start: str, end: str) -> str:
    """The README's generated block between its ``start`` and ``end`` markers, both included."""
    with open(README) as f:
        text = f.read()
    return text[text.index(start) : text.index(end) + len(end)]


def test_readme_table_matches_the_results_files():
    results = summary.load()
    assert {"ingest_throughput", "palette_decode", "iou_metric", "serving_latency"} <= set(results)
    block = _readme_block(summary.START, summary.END)
    assert block == summary.render(
        results
    ), "README is stale: run `python -m benchmarks.summary --write README.md`"


@pytest.mark.parametrize("name", sorted(summary.BLOCKS))
def test_readme_blocks_beside_their_features_match_the_results_files(name):
    results = summary.load()
    assert name in results, f"benchmarks/results/{name}.json is missing"
    start, end, rendered = summary.BLOCKS[name]
    assert _readme_block(start, end) == rendered(
        results[name]
    ), "README is stale: run `python -m benchmarks.summary --write README.md`"


def test_readme_demo_figures_match_the_committed_demo_run():
    figures = demo_figures.load()
    assert figures["benchmark"] == "demo" and figures["decision"]["blessed"] is True
    block = _readme_block(demo_figures.START, demo_figures.END)
    assert block == demo_figures.render(
        figures
    ), "README is stale: run `python -m benchmarks.demo_figures --write README.md --from demo/figures.json`"
    assert f"**{figures['evaluation']['mean_iou']:.4f}**" in block


def test_readme_suite_figures_match_the_committed_clean_clone_run():
    figures = suite_time.load()
    assert figures["benchmark"] == "suite" and figures["budget_seconds"] == suite_time.BUDGET_SECONDS
    block = _readme_block(suite_time.START, suite_time.END)
    assert block == suite_time.render(
        figures
    ), "README is stale: run `python -m benchmarks.suite_time --write README.md --from .ci/suite-time.json`"


# What `make test` printed, cut down: ruff, pytest's durations table and closing line.
MAKE_TEST_LOG = """.venv/bin/ruff check .
All checks passed!
============================= slowest 3 durations ==============================
192.15s setup    tests/test_pipeline_local.py::test_the_terminal_shows_progress
132.50s call     tests/test_training.py::test_killed_training_resumes_from_its_backup
0.01s teardown tests/test_x.py::test_y[a-b]
=========== 2 failed, 388 passed, 1 skipped, 1 error in 819.74s (0:13:39) ============
2026-12-06 22:29:55.995016: I tensorflow/core/util/port.cc:113] oneDNN custom operations are on.
"""


def test_the_suite_time_is_read_from_the_log_and_judged_against_the_budget(tmp_path, capsys):
    log = tmp_path / "make-test.log"
    log.write_text(MAKE_TEST_LOG)
    figures = suite_time.record(852, 0, str(log), str(tmp_path / "suite-time.json"))
    assert figures["counts"] == {"failed": 2, "passed": 388, "skipped": 1, "error": 1}
    assert figures["pytest_seconds"] == 819.74 and figures["seconds"] == 852
    assert figures["slowest"] == [
        [192.15, "setup", "tests/test_pipeline_local.py::test_the_terminal_shows_progress"],
        [132.5, "call", "tests/test_training.py::test_killed_training_resumes_from_its_backup"],
        [0.01, "teardown", "tests/test_x.py::test_y[a-b]"],
    ]  # fmt: skip
    assert capsys.readouterr().out == (
        "== make test passed in 14m12s, install included: within the suite's 15m00s budget\n"
    )
    assert suite_time.verdict(901, 2) == (
        "== make test FAILED (exit 2) in 15m01s, install included: OVER the suite's 15m00s budget"
    )
    assert suite_time.verdict(60, 0, install=False) == (
        "== make test passed in 1m00s, no install needed: within the suite's 15m00s budget"
    )
    rendered = suite_time.render(figures)
    assert "**14m12s** (budget 15m00s), pytest 13m40s: 2 failed, 388 passed, 1 skipped, 1 error" in rendered
    assert (
        "| `tests/test_training.py::test_killed_training_resumes_from_its_backup` | call | 132.5 |"
        in rendered
    )


def test_fit_recovers_a_line_and_flags_growth_that_is_not_one():
    sizes = [250, 500, 1000, 2000]
    line = scaling.fit(sizes, [3.0 + 0.01 * n for n in sizes])
    assert line["slope_seconds_per_image"] == pytest.approx(0.01)
    assert line["intercept_seconds"] == pytest.approx(3.0)
    assert line["r_squared"] == 1.0 and line["linear"]
    quadratic = scaling.fit(sizes, [1e-5 * n * n for n in sizes])
    assert not quadratic["linear"] and quadratic["largest_residual_fraction"] > 0.1
    np.testing.assert_array_less(quadratic["r_squared"], 1.0)


def _curve(*points) -> dict:
    keys = ("step", "cpu_seconds", "wall_seconds", "mean_iou")
    return {"curve": [dict(zip(keys, point, strict=True)) for point in points]}


def _learning_figures() -> dict:
    """Two recipes' curves, and a third that could not run."""
    return {
        "ours": _curve((10, 8.0, 6.0, 0.1), (25, 20.0, 15.0, 0.3), (100, 70.0, 50.0, 0.6)),
        "tutorial": _curve((10, 30.0, 20.0, 0.2), (25, 65.0, 40.0, 0.25)),
        "keras_hub": {"unavailable": "not installed"},
    }


def test_learning_compares_recipes_at_equal_steps_and_equal_cpu_seconds():
    figures = _learning_figures()
    assert learning.at_equal_steps(figures) == {
        "10": {"ours": 0.1, "tutorial": 0.2},
        "25": {"ours": 0.3, "tutorial": 0.25},
    }
    assert learning.at_equal_cpu(figures, [5, 60, 150]) == {
        "5": {"ours": None, "tutorial": None},
        "60": {"ours": 0.3, "tutorial": 0.2},
        "150": {"ours": 0.6, "tutorial": 0.25},
    }


def test_learning_rows_give_each_dataset_its_baselines_and_our_best_within_each_budget():
    figures = _learning_figures()
    section = {
        "dataset": {"train_images": 510, "eval_images": 90, "image_size": 128},
        "baselines": {"majority_class": 0.04, "colour_lookup": 0.2},
        "target": learning.target(0.2),
        "figures": figures,
        "at_equal_cpu_seconds": learning.at_equal_cpu(figures, [5, 60]),
    }
    rows = summary._learning({"batch": 8, "datasets": {"hard/voc": section}})
    assert [row[1:] for row in rows] == [
        ("best mean IoU within 5 CPU-s", "ours n/a", "colour lookup 0.200, majority class 0.040, "
         "TF tutorial U-Net n/a", "", "bar >= 0.600"),
        ("best mean IoU within 60 CPU-s", "ours 0.300", "TF tutorial U-Net 0.200",
         "ours +0.100 vs lookup", ""),
    ]  # fmt: skip
    assert rows[0][0] == "learning, hard/voc (510 train / 90 eval), 128 px batch 8, random init"


def test_learning_target_halves_the_lookups_error_or_asks_090_above_080():
    assert learning.target(0.2) == 0.6
    assert learning.target(0.8) == 0.9
    assert learning.target(0.81) == 0.9


def test_colour_lookup_predicts_each_bins_majority_class_and_the_majority_elsewhere():
    lookup = baselines.ColourLookup(num_classes=3, levels=16)
    image = np.array([[[0, 0, 0], [0, 0, 0], [5, 5, 5], [255, 0, 0]]], np.float32)  # one row
    labels = np.array([[1, 1, 2, 255]], np.uint8)  # bin (0,0,0): 1, 1, 2; red: void, not counted
    lookup.add(image, labels)
    table = lookup.table()
    assert table[0] == 1  # the bin of black holds two 1s and one 2
    np.testing.assert_array_equal(
        lookup.predict(np.array([[[15, 15, 15], [16, 0, 0], [255, 0, 0]]], np.uint8), table),
        [[1, 1, 1]],  # 15 bins with 0; (16,0,0) and red were never seen: the majority class, 1
    )
    assert baselines.majority_class([labels, np.array([[2, 2, 2]], np.uint8)], 3) == 2


def _records(directory, train, evals, size=4, num_classes=3):
    """A learning records directory: ``train`` (image, label) pairs at ``size`` px; ``evals``
    (original image, mask) pairs, their resized image a blank ``size`` px one."""
    import tensorflow as tf

    with tf.io.TFRecordWriter(os.path.join(directory, learning.TRAIN_FILE)) as writer:
        for image, label in train:
            record = {learning.IMAGE: learning._bytes(image.astype(np.float32)),
                      learning.LABEL: learning._bytes(label.astype(np.uint8))}  # fmt: skip
            writer.write(tf.train.Example(features=tf.train.Features(feature=record)).SerializeToString())
    with tf.io.TFRecordWriter(os.path.join(directory, learning.EVAL_FILE)) as writer:
        for original, mask in evals:
            record = {
                learning.IMAGE: learning._bytes(np.zeros([size, size, 3], np.float32)),
                learning.MASK: learning._bytes(mask.astype(np.uint8)),
                learning.ORIGINAL: learning._bytes(original.astype(np.uint8)),
                learning.HEIGHT: learning._int(mask.shape[0]), learning.WIDTH: learning._int(mask.shape[1]),
                learning.RESIZED_HEIGHT: learning._int(size), learning.RESIZED_WIDTH: learning._int(size),
            }  # fmt: skip
            writer.write(tf.train.Example(features=tf.train.Features(feature=record)).SerializeToString())
    with open(os.path.join(directory, learning.META_FILE), "w") as f:
        json.dump({"image_size": size, "num_classes": num_classes}, f)


def test_baselines_are_fitted_on_train_records_and_scored_on_original_eval_pixels(tmp_path):
    red, green = np.array([200, 0, 0]), np.array([0, 200, 0])
    # Train: red is class 1, green class 2, background (black) class 0 on half of each image.
    image = np.zeros([4, 4, 3])
    image[:, :2] = red
    label = np.zeros([4, 4])
    label[:, :2] = 1
    image2, label2 = np.zeros([4, 4, 3]), np.zeros([4, 4])
    image2[:1] = green
    label2[:1] = 2
    # Eval at another size: 8x8, left half red (class 1), a green row (class 2), a void pixel.
    original = np.zeros([8, 8, 3])
    original[:, :4] = red
    original[7, 4:] = green
    mask = np.zeros([8, 8])
    mask[:, :4] = 1
    mask[7, 4:] = 2
    mask[0, 7] = 255
    _records(str(tmp_path), [(image, label), (image2, label2)], [(original, mask)])
    scores = learning.score_baselines(str(tmp_path))
    # The lookup is exact; the majority class (0: 20 of 32 train pixels) gets class 0's IoU of
    # 27 / 63 and nothing else (mean over the three classes present in labels or predictions).
    assert scores == {"majority_class": round((27 / 63) / 3, 4), "colour_lookup": 1.0}
    # The true masks through stride 4 of a 4 px model (1x1 logits): the majority of the image.
    assert learning.resolution_estimate(str(tmp_path)) == round((32 / 63) / 3, 4)


def test_dataset_modes_are_difficulty_and_format():
    source = learning.DataSource.parse("easy/oxford_pet", num_images=40)
    assert (source.difficulty, source.fmt, source.num_images, source.name) == (
        "easy",
        "oxford_pet",
        40,
        "easy/oxford_pet",
    )
    with pytest.raises(ValueError, match="'hard/coco' is not <difficulty>/<format>"):
        learning.DataSource.parse("hard/coco")


def test_a_generated_dataset_is_analyzed_into_its_own_directory(monkeypatch):
    from benchmarks import fixtures

    calls = []
    monkeypatch.setattr(fixtures, "dataset", lambda *args, **kwargs: "/data/root")
    monkeypatch.setattr(fixtures, "analyzed_root", lambda *args, **kwargs: calls.append((args, kwargs)))
    fixtures.analyzed(40, 128, 300, "hard", "cihp")
    ((args, kwargs),) = calls
    assert args[0] == "/data/root" and args[1].name == "cihp" and args[2] == 128
    assert kwargs == {"out": os.path.join(fixtures.WORK, "analyzed_40_300px_at128_hard_cihp")}
