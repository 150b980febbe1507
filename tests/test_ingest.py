"""SegmentationExampleGen's Beam job on DirectRunner: exact splits, pixel-exact masks, dead letter."""

import json
import os
import shutil

import apache_beam as beam
import numpy as np
import pytest
import scipy.io
from apache_beam.options.pipeline_options import PipelineOptions
from PIL import Image

from components.segmentation_example_gen import beam_ingest, pixels, records, sources
from core import artifacts, dataset_spec, features
from core.dataset_spec import VOC_SPEC
from tests.conftest import feature, png_indices, read_examples, read_list, sbd_path, voc_path

pytestmark = pytest.mark.slow


def _pipeline(mode="in_memory"):
    args = ["--runner=DirectRunner", f"--direct_running_mode={mode}"]
    if mode == "multi_processing":
        args.append("--direct_num_workers=2")
    return lambda: beam.Pipeline(options=PipelineOptions(args))


def _ingest(root, out, mode="in_memory", **kwargs):
    return beam_ingest.run(
        _pipeline(mode),
        root,
        root,
        os.path.join(out, "examples"),
        os.path.join(out, "rejected"),
        dataset=VOC_SPEC,
        **kwargs,
    )


def expected_splits(root):
    """The train_aug rule written out again from the list files, independently of sources.py."""
    seg = voc_path(root, "ImageSets", "Segmentation")
    voc_train, voc_val = set(read_list(f"{seg}/train.txt")), set(read_list(f"{seg}/val.txt"))
    sbd = set(read_list(sbd_path(root, "train.txt"))) | set(read_list(sbd_path(root, "val.txt")))
    train = (voc_train | sbd) - voc_val
    source = {i: "voc" if i in voc_train else "sbd" for i in train}
    source.update({i: "voc" for i in voc_val})
    return train, voc_val, source


@pytest.fixture(scope="module")
def ingested(dataset_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ingest"))
    return out, _ingest(dataset_dir, out)


def test_split_membership_and_counts_are_exact(dataset_dir, ingested):
    out, summary = ingested
    train, val, _ = expected_splits(dataset_dir)
    got = {
        split: [
            feature(e, features.FILENAME_KEY)[0].decode()
            for e in read_examples(os.path.join(out, "examples"), split)
        ]
        for split in features.SPLITS
    }
    assert sorted(got["train"]) == sorted(train) and len(got["train"]) == len(set(got["train"]))
    assert sorted(got["eval"]) == sorted(val) and len(got["eval"]) == len(set(got["eval"]))
    assert not set(got["train"]) & set(got["eval"])
    assert summary.splits == {"train": len(train), "eval": len(val)}
    assert summary.rejected == [] and summary.listed == len(train) + len(val)
    assert summary.counters == {"examples_eval": len(val), "examples_train": len(train)}
    # The overlap case that makes train_aug necessary is present and handled.
    sbd_train = set(read_list(sbd_path(dataset_dir, "train.txt")))
    assert sbd_train & val and not sbd_train & val & set(got["train"])


def test_every_mask_round_trips_pixel_exact(dataset_dir, ingested):
    out, summary = ingested
    sums = {split: np.zeros(256, np.int64) for split in features.SPLITS}
    _, _, source = expected_splits(dataset_dir)
    seen_void = seen_voc_overlap = 0
    sbd_ids = set(read_list(sbd_path(dataset_dir, "train.txt")) + read_list(sbd_path(dataset_dir, "val.txt")))
    for split in features.SPLITS:
        for example in read_examples(os.path.join(out, "examples"), split):
            image_id = feature(example, features.FILENAME_KEY)[0].decode()
            src = feature(example, features.SOURCE_KEY)[0].decode()
            assert src == source[image_id]
            ids = png_indices(feature(example, features.MASK_KEY)[0])
            if src == "voc":
                expected = np.asarray(
                    Image.open(voc_path(dataset_dir, "SegmentationClass", f"{image_id}.png"))
                )
                jpeg_path = voc_path(dataset_dir, "JPEGImages", f"{image_id}.jpg")
                seen_void += int((ids == features.IGNORE_LABEL).any())
                seen_voc_overlap += image_id in sbd_ids
            else:
                mat = scipy.io.loadmat(sbd_path(dataset_dir, "cls", f"{image_id}.mat"))
                expected = mat["GTcls"]["Segmentation"][0, 0]
                jpeg_path = sbd_path(dataset_dir, "img", f"{image_id}.jpg")
            np.testing.assert_array_equal(ids, expected, err_msg=image_id)
            sums[split] += np.bincount(np.asarray(expected, np.uint8).ravel(), minlength=256)
            with open(jpeg_path, "rb") as f:
                assert feature(example, features.IMAGE_KEY) == [f.read()]
            h, w = expected.shape
            assert feature(example, features.HEIGHT_KEY) == [h] and feature(example, features.WIDTH_KEY) == [
                w
            ]
            assert feature(example, features.CLASSES_PRESENT_KEY) == sorted(
                int(c) for c in np.unique(expected) if 0 < c < VOC_SPEC.num_classes
            )
    assert seen_void > 0, "255 must be kept"
    assert seen_voc_overlap > 0, "ids in both sources must come from VOC"
    # The job's pixels per class are the source masks', split by split, void apart.
    assert summary.pixels == {
        split: {
            pixels.CLASSES: {name: int(sums[split][c]) for c, name in enumerate(VOC_SPEC.class_names)},
            pixels.IGNORED: int(sums[split][features.IGNORE_LABEL]),
        }
        for split in features.SPLITS
    }
    assert 0 < pixels.ignored_fraction(summary.pixels["train"]) < 0.5


def test_voc_examples_carry_the_voc_spec(ingested, tmp_path):
    out, _ = ingested
    examples = os.path.join(out, "examples")
    assert sorted(os.listdir(examples)) == ["Split-eval", "Split-train", artifacts.SPEC_FILE]
    assert dataset_spec.read(examples) == VOC_SPEC
    # Examples made before specs travelled have none, and are VOC's.
    assert dataset_spec.read(str(tmp_path)) is None and dataset_spec.of_examples(str(tmp_path)) == VOC_SPEC


def test_report_files(ingested):
    out, summary = ingested
    with open(os.path.join(out, "rejected", "summary.json")) as f:
        assert json.load(f) == summary.to_json()
    assert os.path.getsize(os.path.join(out, "rejected", "rejected.jsonl")) == 0
    report = open(os.path.join(out, "rejected", "report.md")).read()
    assert "No record was rejected." in report
    # Pixels per class, each with its share of the labelled pixels of its split.
    train = summary.pixels["train"]
    person = train[pixels.CLASSES]["person"]
    row = f"| 15 | person | {person} ({100 * person / pixels.labelled(train):.2f}%) |"
    assert row in report, report
    # The job's pixel sums are in summary.json, their file gone; VOC's folders are not listed.
    assert sorted(os.listdir(os.path.join(out, "rejected"))) == [
        "rejected.jsonl",
        "report.md",
        "summary.json",
    ]
    assert summary.unread_files == {}


def _damage(root):
    """Breaks one id per kind of bad input; returns {id: kind}."""
    items = {i.image_id: i for i in sources.plan_items(root, root)}
    voc = sorted(i for i, it in items.items() if it.source == "voc")
    sbd = sorted(i for i, it in items.items() if it.source == "sbd")
    broken = {}

    def take(pool, kind):
        image_id = pool.pop(0)
        broken[image_id] = kind
        return items[image_id]

    it = take(voc, records.CORRUPT_IMAGE)
    data = open(it.image_path, "rb").read()
    open(it.image_path, "wb").write(data[: len(data) // 3])
    it = take(voc, records.CORRUPT_MASK)
    open(it.mask_path, "wb").write(b"\x89PNG\r\n\x1a\n" + bytes(50))
    it = take(voc, records.SIZE_MISMATCH)
    mask = Image.open(it.mask_path)
    mask.crop((0, 0, mask.size[0] - 2, mask.size[1])).save(it.mask_path)
    it = take(voc, records.OUT_OF_PALETTE)
    mask = np.asarray(Image.open(it.mask_path).convert("RGB")).copy()
    mask[0, 0] = (200, 10, 10)
    Image.fromarray(mask).save(it.mask_path)
    it = take(sbd, records.MISSING_FILE)
    os.remove(it.image_path)
    it = take(sbd, records.INVALID_LABEL)
    seg = scipy.io.loadmat(it.mask_path)["GTcls"]["Segmentation"][0, 0].copy()
    seg[-1, -1] = 99
    scipy.io.savemat(it.mask_path, {"GTcls": {"Segmentation": seg}})
    it = take(sbd, records.CORRUPT_MASK + "/mat")
    open(it.mask_path, "wb").write(b"not a mat file at all")
    return broken, items


def test_bad_records_go_to_the_dead_letter_with_reasons_and_counters(dataset_copy, tmp_path):
    broken, items = _damage(dataset_copy)
    summary = _ingest(dataset_copy, str(tmp_path), max_rejected_fraction=0.5)
    got = {row["id"]: row for row in summary.rejected}
    assert {i: r["kind"] for i, r in got.items()} == {i: k.split("/")[0] for i, k in broken.items()}
    for image_id, row in got.items():
        item = items[image_id]
        assert row["source"] == item.source and row["split"] == item.split
        assert item.image_path in row["reason"] or item.mask_path in row["reason"], row
    assert summary.counters["rejected_corrupt_mask"] == 2
    for kind in (
        records.CORRUPT_IMAGE,
        records.SIZE_MISMATCH,
        records.OUT_OF_PALETTE,
        records.MISSING_FILE,
        records.INVALID_LABEL,
    ):
        assert summary.counters[f"rejected_{kind}"] == 1, kind
    # Nothing is lost: every listed id is either written or dead-lettered.
    written = sum(summary.splits.values())
    assert written + len(broken) == len(items) == summary.listed
    for split in features.SPLITS:
        assert len(read_examples(str(tmp_path / "examples"), split)) == summary.splits[split]
    lines = open(tmp_path / "rejected" / "rejected.jsonl").read().splitlines()
    assert sorted(json.loads(line)["id"] for line in lines) == sorted(broken)
    report = open(tmp_path / "rejected" / "report.md").read()
    assert all(f"| {i} |" in report for i in broken)


def test_too_many_rejected_fails_the_run_but_keeps_the_report(dataset_copy, tmp_path):
    broken, items = _damage(dataset_copy)
    with pytest.raises(beam_ingest.TooManyRejectedError) as err:
        _ingest(dataset_copy, str(tmp_path), max_rejected_fraction=0.01)
    message = str(err.value)
    assert f"rejected {len(broken)} of {len(items)} ids" in message
    assert "corrupt_mask x2" in message and str(tmp_path / "rejected" / "report.md") in message
    assert len(json.load(open(tmp_path / "rejected" / "summary.json"))["rejected"]) == len(broken)


def test_unreadable_list_file_is_fatal_before_any_work(dataset_copy, tmp_path):
    val = sbd_path(dataset_copy, "val.txt")
    os.remove(val)
    os.mkdir(val)  # a directory where the list should be
    with pytest.raises(sources.ListFileError, match="cannot read split list .*val.txt"):
        _ingest(dataset_copy, str(tmp_path))
    assert not (tmp_path / "examples").exists()


def test_multi_processing_gives_the_same_records(dataset_dir, ingested, tmp_path):
    out, summary = ingested
    multi = _ingest(dataset_dir, str(tmp_path), mode="multi_processing", num_shards=3)
    assert multi.splits == summary.splits and multi.rejected == []
    assert len(os.listdir(tmp_path / "examples" / "Split-train")) == 3
    for split in features.SPLITS:
        a = _by_id(read_examples(os.path.join(out, "examples"), split))
        b = _by_id(read_examples(str(tmp_path / "examples"), split))
        assert a == b


def _by_id(examples):
    # Proto maps serialise in no fixed order across processes: compare contents, not bytes.
    return {
        feature(e, features.FILENAME_KEY)[0]: {k: feature(e, k) for k in e.features.feature} for e in examples
    }


def _ids_on_disk(out, split):
    return sorted(feature(e, features.FILENAME_KEY)[0].decode() for e in read_examples(out, split))


def test_a_programming_error_fails_the_run_naming_the_id_and_the_frame(dataset_dir, tmp_path, monkeypatch):
    # Fault injection: a bug (here a TypeError) while encoding one record must stop the run,
    # not become a dead-lettered record that passes below max_rejected_fraction.
    victim = sources.plan_items(dataset_dir, dataset_dir)[5]
    real_encode = records.encode

    def encode_with_a_bug(item, files, checked):
        if item.image_id == victim.image_id:
            raise TypeError("an injected bug")
        return real_encode(item, files, checked)

    monkeypatch.setattr(records, "encode", encode_with_a_bug)
    with pytest.raises(beam_ingest.UnexpectedRecordError) as err:
        _ingest(dataset_dir, str(tmp_path), max_rejected_fraction=0.5)
    message = str(err.value)
    assert f"{victim.image_id} ({victim.source}, {victim.split})" in message
    assert victim.image_path in message and victim.mask_path in message
    assert "TypeError: an injected bug" in message
    line = encode_with_a_bug.__code__.co_firstlineno + 2
    assert f"{__file__}:{line} in encode_with_a_bug" in message


def test_an_error_raised_inside_a_library_names_our_line_that_called_it():
    # The line to look at first is ours; the library's innermost frame comes after it.
    def ours():
        return np.reshape(np.arange(3), (2, 2))

    with pytest.raises(ValueError) as err:
        ours()
    where = beam_ingest._where(err.value)
    line = ours.__code__.co_firstlineno + 1
    assert where.startswith(f"{__file__}:{line} in ours (innermost frame: "), where
    assert f"{os.sep}numpy{os.sep}" in where.split("innermost frame: ")[1], where


def test_a_voc_val_id_with_broken_voc_files_is_rejected_and_its_sbd_copy_not_trained_on(
    dataset_copy, tmp_path
):
    seg = voc_path(dataset_copy, "ImageSets", "Segmentation")
    val = read_list(f"{seg}/val.txt")
    sbd = set(read_list(sbd_path(dataset_copy, "train.txt")) + read_list(sbd_path(dataset_copy, "val.txt")))
    missing, corrupt = [i for i in val if i in sbd][:2]
    os.remove(voc_path(dataset_copy, "JPEGImages", f"{missing}.jpg"))
    os.remove(voc_path(dataset_copy, "SegmentationClass", f"{missing}.png"))
    open(voc_path(dataset_copy, "SegmentationClass", f"{corrupt}.png"), "wb").write(b"\x89PNG\r\n\x1a\n")
    with open(f"{seg}/val.txt", "wb") as f:  # and the list saved with a BOM and CRLF, first id first
        f.write(("\ufeff" + "\r\n".join([missing] + [i for i in val if i != missing]) + "\r\n").encode())
    for image_id in (missing, corrupt):  # the SBD copies are intact and could be used
        assert os.path.exists(sbd_path(dataset_copy, "cls", f"{image_id}.mat"))

    summary = _ingest(dataset_copy, str(tmp_path), max_rejected_fraction=0.5)
    assert {(r["id"], r["source"], r["split"], r["kind"]) for r in summary.rejected} == {
        (missing, "voc", "eval", records.MISSING_FILE),
        (corrupt, "voc", "eval", records.CORRUPT_MASK),
    }
    examples = str(tmp_path / "examples")
    assert _ids_on_disk(examples, "eval") == sorted(set(val) - {missing, corrupt})
    assert not {missing, corrupt} & set(_ids_on_disk(examples, "train"))


def _empty(path):
    open(path, "w").close()


@pytest.mark.parametrize("case", ["empty val", "empty train", "train lists only val ids"])
def test_an_empty_split_fails_before_any_work_naming_the_lists(dataset_copy, tmp_path, case):
    seg = voc_path(dataset_copy, "ImageSets", "Segmentation")
    train_lists = [f"{seg}/train.txt", sbd_path(dataset_copy, "train.txt"), sbd_path(dataset_copy, "val.txt")]
    if case == "empty val":
        _empty(f"{seg}/val.txt")
        split, named = "eval", [f"{seg}/val.txt"]
    else:
        for path in train_lists:
            if case == "empty train":
                _empty(path)
            else:
                shutil.copyfile(f"{seg}/val.txt", path)
        split, named = "train", train_lists
    with pytest.raises(sources.ListFileError) as err:
        _ingest(dataset_copy, str(tmp_path))
    message = str(err.value)
    assert f"split {split} is empty" in message and all(path in message for path in named), message
    if case == "train lists only val ids":
        assert "every id they list is in VOC val" in message
    assert not (tmp_path / "examples").exists() and not (tmp_path / "rejected").exists()


def test_a_split_emptied_by_rejections_fails_the_run(dataset_copy, tmp_path):
    seg = voc_path(dataset_copy, "ImageSets", "Segmentation")
    val = read_list(f"{seg}/val.txt")
    for image_id in val:
        os.remove(voc_path(dataset_copy, "SegmentationClass", f"{image_id}.png"))
    message = f"split eval: all {len(val)} listed ids were rejected"
    with pytest.raises(beam_ingest.EmptySplitError, match=message):
        _ingest(dataset_copy, str(tmp_path), max_rejected_fraction=0.5)
    assert len(json.load(open(tmp_path / "rejected" / "summary.json"))["rejected"]) == len(val)
