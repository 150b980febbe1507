"""What ingestion says of data that cannot teach what the user expects: pixels per class, the
ignored share, classes without a train pixel, files no source reads. Small in-memory inputs; the
Beam job's sums over real records are checked in test_ingest.py and test_folder_ingest.py."""

import dataclasses
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from ml_metadata.proto import metadata_store_pb2

from components.run_report import page
from components.segmentation_example_gen import beam_ingest, pixels, sources
from core import artifacts, dataset_spec, features
from core.dataset_spec import DatasetSpec
from pipeline import progress

TRAIN, EVAL = features.TRAIN_SPLIT, features.EVAL_SPLIT
# A binary mask saved as 0/255: read without values, 255 is the ignore label.
LESIONS = DatasetSpec(
    name="lesions", layout="folders", class_names=("background", "lesion"), mask_encoding="grey"
)
PARTS = DatasetSpec(
    name="parts", layout="folders", class_names=("background", "head", "body"), mask_encoding="grey"
)


def _histogram(**pixels_by_id):
    counts = np.zeros(256, np.int64)
    for key, n in pixels_by_id.items():
        counts[int(key.lstrip("c"))] = n
    return counts


def test_census_names_each_splits_pixels_by_class_and_counts_the_ignored_apart():
    found = pixels.census(PARTS, {TRAIN: _histogram(c0=70, c2=20, c255=10)})
    assert found == {
        TRAIN: {pixels.CLASSES: {"background": 70, "head": 0, "body": 20}, pixels.IGNORED: 10},
        EVAL: {pixels.CLASSES: {"background": 0, "head": 0, "body": 0}, pixels.IGNORED: 0},
    }
    assert pixels.labelled(found[TRAIN]) == 90 and pixels.ignored_fraction(found[TRAIN]) == 0.1
    assert pixels.ignored_fraction(found[EVAL]) == 0.0  # no record written: no pixel, no share


def test_a_binary_mask_read_without_values_fails_naming_the_cause_and_the_fix():
    found = pixels.census(LESIONS, {TRAIN: _histogram(c0=100, c255=300), EVAL: _histogram(c0=5, c1=5)})
    warnings, error, fails = pixels.judge(LESIONS, found, 0.5)
    fix = "`values: {0: background, 255: lesion}` in the dataset spec"
    assert fails == pixels.MOSTLY_IGNORED and error == (
        "75.0% of the train split's mask pixels (300 of 400) are ignored, above "
        "ingest.max_ignored_fraction=0.5: the model would learn from the other 25.0% alone. Binary "
        "masks saved as 0/255 read so, as 255 is the ignore label of dataset lesions: if 255 marks a "
        f"class, map it: {fix}. If the pixels are meant to be ignored, raise "
        "ingest.max_ignored_fraction (1 turns the check off)."
    )
    assert warnings == [
        "class 'lesion' (id 1) of dataset lesions has no labelled pixel in the train split: the model "
        "cannot learn it. Add train images that show it, or take it out of the dataset spec "
        "(class_names, and values mapping its mask values to another class or to ignore). If the masks "
        f"mark it with 255 (a binary mask saved as 0/255), 255 is read as ignored: {fix}."
    ]
    # The knob: at the threshold the ignored share passes (above it, it fails), and these masks,
    # background alone where not ignored, fail on that next; 1 turns both checks off.
    assert pixels.judge(LESIONS, found, 0.74).error.startswith("75.0% of the train split's")
    assert pixels.judge(LESIONS, found, 0.75).fails == pixels.BACKGROUND_ONLY
    assert pixels.judge(LESIONS, found, 1.0) == pixels.Findings(warnings)
    some = pixels.census(LESIONS, {TRAIN: _histogram(c0=99, c1=1, c255=300)})
    assert pixels.judge(LESIONS, some, 0.75) == pixels.Findings([])
    # With the value map, the same masks have lesions, and nothing is said.
    mapped = pixels.census(LESIONS, {TRAIN: _histogram(c0=100, c1=300)})
    assert pixels.judge(LESIONS, mapped, 0.5) == pixels.Findings([], None, None)


@pytest.mark.parametrize(
    "class_names, background, fix",
    [
        (
            ("lesion", "background"), "background",
            "`values: {0: background, 255: lesion}` in the dataset spec",
        ),
        (("healthy", "lesion"), "lesion", "`values: {0: lesion, 255: healthy}` in the dataset spec"),
        (
            ("healthy", "lesion"), None,
            "`values` in the dataset spec mapping each mask value to its class, 255 to the class it marks",
        ),
    ],
    ids=["background second", "background named", "no background"],
)  # fmt: skip
def test_the_value_map_named_sends_0_to_the_background_and_255_to_the_other_class(
    class_names, background, fix
):
    spec = dataclasses.replace(LESIONS, class_names=class_names, background_class=background)
    found = pixels.census(spec, {TRAIN: _histogram(c0=1, c1=1, c255=3)})
    assert pixels.judge(spec, found, 0.5).error == (
        "60.0% of the train split's mask pixels (3 of 5) are ignored, above ingest.max_ignored_fraction=0.5: "
        "the model would learn from the other 40.0% alone. Binary masks saved as 0/255 read so, as 255 is "
        f"the ignore label of dataset lesions: if 255 marks a class, map it: {fix}. If the pixels are meant "
        "to be ignored, raise ingest.max_ignored_fraction (1 turns the check off)."
    )


def test_a_train_split_of_background_alone_fails_naming_the_cause_and_the_fix():
    # Binary masks whose lesions were saved as 255, a few of them: all the rest is background.
    found = pixels.census(LESIONS, {TRAIN: _histogram(c0=90, c255=10), EVAL: _histogram(c0=5, c1=5)})
    findings = pixels.judge(LESIONS, found, 0.5)
    assert findings.fails == pixels.BACKGROUND_ONLY
    assert findings.error == (
        "Every labelled pixel of the train split (90) is of the background class 'background' of dataset "
        "lesions: the model would learn to predict 'background' everywhere, and nothing else. If the masks "
        "mark the objects with 255 (a binary mask saved as 0/255), 255 is read as ignored: `values: "
        "{0: background, 255: lesion}` in the dataset spec. If the train split is meant to show no object, "
        "set ingest.max_ignored_fraction=1 (it turns this check off, and the ignored share's)."
    )
    assert [w.split(":")[0] for w in findings.warnings] == [
        "class 'lesion' (id 1) of dataset lesions has no labelled pixel in the train split"
    ]
    # Nothing ignored: the objects' values are read as the background, or there are none.
    plain = pixels.census(PARTS, {TRAIN: _histogram(c0=100)})
    assert pixels.judge(PARTS, plain, 0.5).error == (
        "Every labelled pixel of the train split (100) is of the background class 'background' of dataset "
        "parts: the model would learn to predict 'background' everywhere, and nothing else. The masks' "
        "object values are likely read as the background or as ignored: check the dataset spec's values "
        "and ignore_label against the values the masks hold. If the train split is meant to show no "
        "object, set ingest.max_ignored_fraction=1 (it turns this check off, and the ignored share's)."
    )
    # The knob at 1 lets a span of negatives through, with its warning; one object pixel does too.
    assert pixels.judge(PARTS, plain, 1.0) == pixels.Findings(pixels.judge(PARTS, plain, 0.5).warnings)
    assert pixels.judge(PARTS, pixels.census(PARTS, {TRAIN: _histogram(c0=100, c1=1)}), 0.5).error is None
    # The background of the spec, wherever it is; without one, every class is an object.
    last = dataclasses.replace(PARTS, background_class="body")
    assert pixels.judge(last, pixels.census(last, {TRAIN: _histogram(c2=100)}), 0.5).fails == (
        pixels.BACKGROUND_ONLY
    )
    assert pixels.judge(last, plain, 0.5).error is None
    none = dataclasses.replace(PARTS, background_class=None)
    assert pixels.judge(none, plain, 0.5).error is None
    # Mostly ignored says it first: the one error, its cause the same.
    mostly = pixels.census(LESIONS, {TRAIN: _histogram(c0=10, c255=90)})
    assert pixels.judge(LESIONS, mostly, 0.5).fails == pixels.MOSTLY_IGNORED


def test_an_eval_split_mostly_ignored_is_a_warning():
    found = pixels.census(PARTS, {TRAIN: _histogram(c0=5, c1=3, c2=2), EVAL: _histogram(c0=1, c1=1, c255=6)})
    assert pixels.judge(PARTS, found, 0.5) == pixels.Findings(
        [
            "75.0% of the eval split's mask pixels (6 of 8) are ignored, above "
            "ingest.max_ignored_fraction=0.5: its scores would measure the other 25.0% alone. Binary "
            "masks saved as 0/255 read so, as 255 is the ignore label of dataset parts: if 255 marks a "
            "class, map it: `values` in the dataset spec mapping each mask value to its class, 255 to "
            "the class it marks."
        ]
    )
    # The same threshold: at it, nothing is said.
    assert pixels.judge(PARTS, found, 0.75) == pixels.Findings([])


@pytest.mark.parametrize(
    "spec, cause",
    [
        (
            DatasetSpec(
                name="scenes", layout="folders", class_names=("a", "b"), mask_encoding="grey",
                ignore_label=0, values={1: "a", 2: "b", 3: "ignore"},
            ),
            "Dataset scenes reads mask values [0, 3] as ignored: if they mark a class, map them to it in the "
            "dataset spec's values.",
        ),
        (
            DatasetSpec(
                name="painted", layout="folders", class_names=("a", "b"), mask_encoding="rgb",
                colours=((0, 0, 0), (255, 0, 0)), ignore_colour=(255, 255, 255),
            ),
            "Dataset painted reads its ignore colour [255, 255, 255] as ignored: if it marks a class, "
            "give that class the colour in the spec's colours.",
        ),
        (
            DatasetSpec(name="pets", layout="folders", class_names=("a", "b"), values={1: "a", 2: "b"}),
            "Binary masks saved as 0/255 read so, as 255 is the ignore label of dataset pets: if 255 marks a "
            "class, map it: add `255: <class>` to the dataset spec's values.",
        ),
        (
            PARTS,
            "Binary masks saved as 0/255 read so, as 255 is the ignore label of dataset parts: if 255 "
            "marks a class, map it: `values` in the dataset spec mapping each mask value to its class, "
            "255 to the class it marks.",
        ),
    ],
    ids=["ignored values", "ignore colour", "value map without 255", "three classes"],
)  # fmt: skip
def test_the_cause_named_follows_how_the_spec_reads_ignored_pixels(spec, cause):
    found = pixels.census(spec, {TRAIN: _histogram(c0=1, c1=1, c255=3)})
    error = pixels.judge(spec, found, 0.5).error
    assert error.startswith("60.0% of the train split's mask pixels (3 of 5) are ignored")
    assert f"alone. {cause} If the pixels" in error


def test_classes_without_a_train_pixel_are_one_warning_naming_them_all():
    spec = DatasetSpec(
        name="many", layout="folders", class_names=tuple(f"k{i}" for i in range(14)), mask_encoding="grey"
    )
    warnings, error, fails = pixels.judge(spec, pixels.census(spec, {TRAIN: _histogram(c0=5, c3=5)}), 0.5)
    assert error is None and fails is None
    assert warnings == [
        "classes 'k1', 'k2', 'k4', 'k5', 'k6', 'k7', 'k8', 'k9', 'k10', 'k11' and 2 more (ids 1, 2, 4, "
        "5, 6, 7, 8, 9, 10, 11, ...) of dataset many have no labelled pixel in the train split: the model "
        "cannot learn them. Add train images that show them, or take them out of the dataset spec "
        "(class_names, and values mapping their mask values to another class or to ignore)."
    ]
    # Eval has no say: a class missing there has an n/a IoU, not an unlearnable one.
    every = {TRAIN: _histogram(**{f"c{i}": 1 for i in range(14)})}
    assert pixels.judge(spec, pixels.census(spec, every), 0.5) == pixels.Findings([])


def test_the_table_gives_each_class_its_share_of_the_labelled_and_the_ignored_theirs_of_all():
    found = pixels.census(LESIONS, {TRAIN: _histogram(c0=60, c1=20, c255=20)})
    assert pixels.rows(found) == [
        pixels.Row(0, "background", "background", ((60, 0.75), (0, None))),
        pixels.Row(1, "lesion", "lesion", ((20, 0.25), (0, None))),
        pixels.Row(None, pixels.IGNORED, "(ignored)", ((20, 0.2), (0, None))),
    ]


def test_the_pixel_sums_add_histograms_however_the_runner_splits_them():
    """``SumPixels``' methods as a runner calls them (Beam's CombinePerKey runs them per split):
    inputs added into accumulators, accumulators merged, one list of 256 ints out."""
    sums = beam_ingest.SumPixels()
    first = sums.add_input(sums.create_accumulator(), _histogram(c0=3, c255=1))
    first = sums.add_input(first, _histogram(c0=4, c1=5))
    second = sums.add_input(sums.create_accumulator(), _histogram(c1=2, c254=7))
    empty = sums.create_accumulator()
    merged = sums.merge_accumulators([first, empty, second])
    out = sums.extract_output(merged)
    assert type(out) is list and len(out) == 256 and all(type(n) is int for n in out)
    assert out[:2] + out[254:] == [7, 7, 7, 1] and sum(out) == 22
    # Merging makes a new total: the accumulators merged are as they were.
    assert first[[0, 1, 255]].tolist() == [7, 5, 1] and not empty.any()
    assert sums.extract_output(sums.merge_accumulators([])) == [0] * 256


def test_the_pixel_sums_are_read_back_then_deleted(tmp_path):
    rows = [{"split": TRAIN, "pixels": _histogram(c0=7, c255=2).tolist()}]
    (tmp_path / beam_ingest.PIXELS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    sums = beam_ingest.read_pixels(str(tmp_path))
    assert list(sums) == [TRAIN] and sums[TRAIN][[0, 1, 255]].tolist() == [7, 0, 2]
    assert os.listdir(tmp_path) == [], "summary.json holds the numbers, by class name"


# Files no source reads


def _touch(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "wb").close()


def test_files_of_a_suffix_no_source_reads_are_counted_and_named(tmp_path):
    root = str(tmp_path)
    images, masks = os.path.join(root, "img"), os.path.join(root, "ann")
    for name in ("a.jpg", "b.PNG", "c.jpeg", "d.gif", "e.tif", "f.bmp", "g.webp", "h.heic", "notes.txt",
                 ".DS_Store", "thumbs/x.jpg"):  # fmt: skip
        _touch(os.path.join(images, name))
    for name in ("a.png", "b.png", "c.png", "d.png", "b.jpg"):
        _touch(os.path.join(masks, name))
    # b and c fall in eval by the hash of the id at 0.5, a in train.
    spec = dataclasses.replace(PARTS, images_dir="img", masks_dir="ann", eval_fraction=0.5)
    found = sources.unread_files(spec, root)
    assert found == [
        sources.Unread(images, "image", (".jpg", ".jpeg", ".png"), ("d.gif", "e.tif", "f.bmp", "g.webp",
                                                                    "h.heic", "notes.txt")),
        sources.Unread(masks, "mask", (".png",), ("b.jpg",)),
    ]  # fmt: skip
    assert found[0].to_json() == {"count": 6, "names": ["d.gif", "e.tif", "f.bmp", "g.webp", "h.heic"]}
    assert found[0].warning() == (
        f"6 files in {images} are not read: their suffix is none of .jpg, .jpeg, .png, which images are "
        "read from (d.gif, e.tif, f.bmp, g.webp, h.heic and 1 more). Convert the images among them to "
        "one of those formats, or move them out of the folder."
    )
    assert found[1].warning() == (
        f"1 file in {masks} is not read: its suffix is none of .png, which masks are read from (b.jpg). "
        "Convert it to one of those formats if it is a mask, or move it out of the folder."
    )
    # Planning is as it was: the files it reads, paired by stem.
    assert {i.image_id: os.path.basename(i.mask_path) for i in sources.plan_folders(spec, root)} == {
        stem: f"{stem}.png" for stem in ("a", "b", "c")
    }
    # VOC's layout reads files by the ids of its lists and lists no folder.
    assert sources.unread_files(dataset_spec.VOC_SPEC, root) == []


def test_an_object_store_is_asked_of_no_file_with_a_suffix(monkeypatch):
    """gs:// lists a folder as ``name/``: a metadata call per unread file (thousands of ``.tif``)
    would say nothing. ram:// lists folders without the slash, so a name without a suffix is asked."""
    root = "ram://unread_files"
    tf.io.gfile.makedirs(f"{root}/img/sub")
    for name in ("img/a.jpg", "img/b.tif", "img/c.bmp", "img/README", "ann/a.png"):
        with tf.io.gfile.GFile(f"{root}/{name}", "w") as f:
            f.write("x")
    asked = []
    isdir = tf.io.gfile.isdir
    monkeypatch.setattr(tf.io.gfile, "isdir", lambda path: asked.append(path) or isdir(path))
    spec = dataclasses.replace(PARTS, images_dir="img", masks_dir="ann")
    found = sources.unread_files(spec, root)
    assert found == [
        sources.Unread(f"{root}/img", "image", (".jpg", ".jpeg", ".png"), ("README", "b.tif", "c.bmp"))
    ]
    # The two folders (do they exist?), and the two names without a suffix, one of them a folder.
    assert asked == [f"{root}/img", f"{root}/img/README", f"{root}/img/sub", f"{root}/ann"]
    # A listing's "name/" is a folder, and a name with a suffix a file, without asking.
    monkeypatch.setattr(tf.io.gfile, "isdir", lambda path: pytest.fail(f"asked {path}"))
    assert sources._is_folder("gs://bucket/img", "thumbs/") is True
    assert sources._is_folder("gs://bucket/img", "x.tif") is False
    assert sources._is_folder("/gcs/bucket/img", "x.tif") is False


# Where a person reads them


def test_the_run_output_shows_the_warnings_under_the_examples():
    props = {artifacts.DATA_WARNINGS_PROPERTY: metadata_store_pb2.Value(string_value=json.dumps(["x", "y"]))}
    assert progress.warning_lines(props) == ["warning: x", "warning: y"]
    empty = {artifacts.DATA_WARNINGS_PROPERTY: metadata_store_pb2.Value(string_value="[]")}
    assert progress.warning_lines(empty) == [] and progress.warning_lines({}) == []


def test_the_report_page_shows_pixels_per_class_the_ignored_share_and_the_warnings():
    census = pixels.census(LESIONS, {TRAIN: _histogram(c0=60, c1=20, c255=20), EVAL: _histogram(c0=3, c1=1)})
    section = page._ingestion_section(
        {
            page.INGESTION_PIXELS: census,
            page.INGESTION_WARNINGS: ["class <x> & more"],
            page.INGESTION_UNREAD: {
                "/d/img": sources.Unread("/d/img", "image", (".png",), ("a.gif",)).to_json()
            },
        }
    )
    assert "<li>class &lt;x&gt; &amp; more</li>" in section
    assert "<b id='ignored-share'>20.00%</b> of the train split's mask pixels" in section
    assert (
        "<tr data-class='lesion'><td>1</td><td>lesion</td><td class='num'>20</td><td class='num'>25.00%</td>"
        "<td class='num'>1</td><td class='num'>25.00%</td></tr>"
    ) in section
    assert (
        "<tr data-class='ignored'><td></td><td>(ignored)</td><td class='num'>20</td>"
        "<td class='num'>20.00%</td><td class='num'>0</td><td class='num'>0.00%</td></tr>"
    ) in section
    assert "<tr><td>/d/img</td><td class='num'>1</td><td>a.gif</td></tr>" in section
    assert page._ingestion_section(None) == ""
