"""Folder datasets (CIHP, Oxford-IIIT Pet, any spec): planning, mask decoding, the Beam ingest."""

import dataclasses
import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from PIL import Image

from components.segmentation_example_gen import beam_ingest, pixels, records, sources
from core import artifacts, dataset_spec, features
from core import config as config_lib
from core.dataset_spec import DatasetSpec
from datasets import synthetic_folders
from tests.conftest import feature, png_indices, read_examples

SIDE = 64
NUM_IMAGES = 12
CIHP = config_lib.load_dataset_spec("cihp")
PET = config_lib.load_dataset_spec("oxford_pet")
# Oxford's trimap values -> class ids of the shipped spec (background 0, pet 1), written out again.
TRIMAP_IDS = {1: 1, 2: 0, 3: 255}


def _spec(**overrides):
    """A small folders spec for planning and decoding: 3 classes, grey ids, img/ + ann/."""
    fields = dict(
        name="parts",
        layout="folders",
        class_names=("background", "head", "body"),
        mask_encoding="grey",
        images_dir="img",
        masks_dir="ann",
        eval_fraction=0.3,
    )
    return DatasetSpec(**{**fields, **overrides})


def _png(array, mode, palette=None) -> bytes:
    img = Image.fromarray(np.asarray(array, np.uint8), mode)
    if palette is not None:
        img.putpalette(np.asarray(palette, np.uint8).reshape(-1).tolist())
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _write(path, data: bytes):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def _write_folders(root, ids, suffix=".jpg", spec=None):
    """4x4 images and grey masks (class 1 everywhere) named by ``ids``."""
    spec = spec or _spec()
    for image_id in ids:
        image = Image.new("RGB", (4, 4), (200, 30, 30))
        buf = io.BytesIO()
        image.save(buf, format="PNG" if suffix == ".png" else "JPEG")
        _write(os.path.join(root, spec.images_dir, image_id + suffix), buf.getvalue())
        _write(os.path.join(root, spec.masks_dir, f"{image_id}.png"), _png(np.ones((4, 4)), "L"))


def _in_eval(image_id, fraction):
    """The hash split written out again: the first 16 hex digits of the id's SHA-256 as a fraction."""
    return int(hashlib.sha256(image_id.encode()).hexdigest()[:16], 16) < fraction * 2**64


def _splits(items):
    return {item.image_id: item.split for item in items}


def _first_words(path):
    with open(path) as f:
        return sorted(line.split()[0] for line in f if line.strip())


@pytest.fixture(scope="module")
def cihp_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("cihp"))
    synthetic_folders.make_cihp(out, NUM_IMAGES, seed=1, max_side=SIDE, workers=1)
    return out


@pytest.fixture(scope="module")
def pet_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("pet"))
    synthetic_folders.make_oxford_pet(out, NUM_IMAGES, seed=2, max_side=SIDE, workers=1)
    return out


# Planning


def test_hash_split_is_by_sha256_of_the_id_and_holds_when_ids_are_added(tmp_path):
    spec, root = _spec(), str(tmp_path)
    first = [f"img{n:03d}" for n in range(20)]
    _write_folders(root, first)
    items = sources.plan_folders(spec, root)
    expected = {i: features.EVAL_SPLIT if _in_eval(i, 0.3) else features.TRAIN_SPLIT for i in first}
    assert _splits(items) == expected
    assert set(expected.values()) == set(features.SPLITS)
    eval_ids = sorted(i for i, s in expected.items() if s == features.EVAL_SPLIT)
    assert [item.image_id for item in items] == eval_ids + sorted(set(first) - set(eval_ids))
    assert items[0] == sources.WorkItem(
        eval_ids[0],
        "parts",
        features.EVAL_SPLIT,
        os.path.join(root, "img", f"{eval_ids[0]}.jpg"),
        os.path.join(root, "ann", f"{eval_ids[0]}.png"),
    )
    assert sources.plan_folders(spec, root) == items, "the same plan every time"

    _write_folders(root, [f"new{n:03d}" for n in range(20)])
    later = _splits(sources.plan_folders(spec, root))
    assert len(later) == 40 and {i: later[i] for i in first} == expected, "no id moves when ids are added"


def test_split_lists_with_four_columns_give_their_first_words(pet_dir):
    annotations = os.path.join(pet_dir, "annotations")
    with open(os.path.join(annotations, "trainval.txt")) as f:
        assert all(len(line.split()) == 4 for line in f)
    items = sources.plan_folders(PET, pet_dir)
    assert sorted(i.image_id for i in items if i.split == features.TRAIN_SPLIT) == _first_words(
        os.path.join(annotations, "trainval.txt")
    )
    assert sorted(i.image_id for i in items if i.split == features.EVAL_SPLIT) == _first_words(
        os.path.join(annotations, "test.txt")
    )
    assert {i.source for i in items} == {"oxford_pet"}
    assert all(os.path.exists(i.image_path) and os.path.exists(i.mask_path) for i in items)


def test_an_id_in_both_lists_is_refused_naming_both_files(pet_dir, tmp_path):
    root = str(tmp_path / "pet")
    shutil.copytree(pet_dir, root)
    train, test = (os.path.join(root, "annotations", name) for name in ("trainval.txt", "test.txt"))
    leaked = _first_words(test)[0]
    with open(train, "a") as f:
        f.write(f"{leaked} 1 1 1\n")
    with pytest.raises(sources.ListFileError) as e:
        sources.plan_folders(PET, root)
    assert str(e.value) == (
        f"1 ids are listed in both {train} and {test} ({leaked}): an eval id must never reach train; "
        "list each id in one of them"
    )


def test_two_images_of_one_stem_are_refused(tmp_path):
    root = str(tmp_path)
    _write_folders(root, ["a", "b"])
    _write_folders(root, ["a"], suffix=".png")
    with pytest.raises(sources.ListFileError, match=r"^a\.jpg and a\.png in .*/img have one stem"):
        sources.plan_folders(_spec(), root)


def test_a_split_the_hash_leaves_empty_is_refused_before_any_work(tmp_path):
    _write_folders(str(tmp_path), ["only"])
    with pytest.raises(sources.ListFileError, match="split (eval|train) is empty: of the 1 images in"):
        sources.plan_folders(_spec(), str(tmp_path))


def test_an_image_without_mask_and_a_listed_id_without_image_are_missing_files(tmp_path, pet_dir):
    root = str(tmp_path / "parts")
    _write_folders(root, [f"img{n:03d}" for n in range(10)])
    os.remove(os.path.join(root, "ann", "img004.png"))
    item = next(i for i in sources.plan_folders(_spec(), root) if i.image_id == "img004")
    with pytest.raises(records.Rejected) as e:
        records.build_example(item, _spec())
    assert (e.value.kind, e.value.reason) == (records.MISSING_FILE, f"{item.mask_path}: file does not exist")

    pets = str(tmp_path / "pet")
    shutil.copytree(pet_dir, pets)
    gone = _first_words(os.path.join(pets, "annotations", "test.txt"))[0]
    os.remove(os.path.join(pets, "images", f"{gone}.jpg"))
    item = next(i for i in sources.plan_folders(PET, pets) if i.image_id == gone)
    with pytest.raises(records.Rejected) as e:
        records.build_example(item, PET)
    path = os.path.join(pets, "images", f"{gone}.jpg")
    assert (e.value.kind, e.value.reason) == (records.MISSING_FILE, f"{path}: file does not exist")


def test_fingerprint_follows_the_folders(tmp_path):
    root, spec = str(tmp_path), _spec()
    _write_folders(root, [f"img{n:03d}" for n in range(10)])
    before = sources.fingerprint(None, None, spec, root)
    assert sources.fingerprint(None, None, spec, root) == before
    mask = os.path.join(root, "ann", "img003.png")
    os.utime(mask, ns=(1, 1))
    touched = sources.fingerprint(None, None, spec, root)
    _write_folders(root, ["img999"])
    added = sources.fingerprint(None, None, spec, root)
    assert len({before, touched, added}) == 3 and added.startswith("ids:11,")


# Decoding masks as the spec says


RGB_SPEC = _spec(
    mask_encoding="rgb", colours=((0, 0, 0), (255, 0, 0), (0, 0, 255)), ignore_colour=(255, 255, 255)
)
RGB_COLOURS = {0: (0, 0, 0), 1: (255, 0, 0), 2: (0, 0, 255), 255: (255, 255, 255)}


def _random(values, seed=0, shape=(6, 9)):
    return np.random.default_rng(seed).choice(np.asarray(values, np.uint8), size=shape)


def _painted(ids):
    return np.asarray([RGB_COLOURS[int(i)] for i in ids.ravel()], np.uint8).reshape(*ids.shape, 3)


def _decode_cases():
    """(name, spec, mask PNG, expected ids)."""
    ids3 = _random([0, 1, 2, 255])
    cihp = _random(list(range(20)) + [255], seed=1)
    trimap = _random([1, 2, 3], seed=2)
    colour_palette = np.zeros((256, 3), np.uint8)
    colour_palette[list(RGB_COLOURS)] = list(RGB_COLOURS.values())
    # A palette PNG's colours say nothing for a palette or grey spec: read by index.
    odd_palette = np.random.default_rng(3).integers(0, 256, (256, 3))
    return [
        ("grey ids", CIHP, _png(cihp, "L"), cihp),
        ("grey ids as palette indices", CIHP, _png(cihp, "P", odd_palette), cihp),
        ("trimap values", PET, _png(trimap, "L"), np.vectorize(TRIMAP_IDS.get)(trimap)),
        ("rgb colours", RGB_SPEC, _png(_painted(ids3), "RGB"), ids3),
        ("rgba colours", RGB_SPEC, _png(np.dstack([_painted(ids3), np.full(ids3.shape, 255)]), "RGBA"), ids3),
        ("palette png painted in the colours", RGB_SPEC, _png(ids3, "P", colour_palette), ids3),
        ("palette indices", _spec(mask_encoding="palette"), _png(ids3, "P", odd_palette), ids3),
        ("palette spec, grey values", _spec(mask_encoding="palette"), _png(ids3, "L"), ids3),
    ]


@pytest.mark.parametrize("name, spec, png, expected", _decode_cases(), ids=[c[0] for c in _decode_cases()])
def test_masks_decode_pixel_exact_to_class_ids(name, spec, png, expected):
    ids, counts = records.decode_mask("m.png", png, spec)
    np.testing.assert_array_equal(ids, expected)
    assert ids.dtype == np.uint8
    np.testing.assert_array_equal(counts, np.bincount(expected.ravel(), minlength=256))


@pytest.mark.parametrize(
    "spec, png, kind, reason",
    [
        (
            CIHP,
            _png(np.pad(np.full((1, 3), 37), ((0, 3), (0, 1))), "L"),
            records.OUT_OF_PALETTE,
            "m.png: 3 pixels are not a cihp class or void: grey 37 "
            "(dataset cihp allows mask values 0-19, 255)",
        ),
        (
            PET,
            _png(np.pad(np.ones((2, 2)), 1), "L"),
            records.OUT_OF_PALETTE,
            "m.png: 12 pixels are not a oxford_pet class or void: grey 0 "
            "(dataset oxford_pet allows mask values 1-3, 255)",
        ),
        (
            RGB_SPEC,
            _png(np.dstack([np.full((2, 2), 9), np.zeros((2, 2)), np.zeros((2, 2))]), "RGB"),
            records.OUT_OF_PALETTE,
            "m.png: 4 pixels have colours outside the parts palette: RGB(9, 0, 0) (dataset parts allows the "
            "colours of its 3 classes and void RGB(255, 255, 255))",
        ),
        (
            CIHP,
            _png(np.zeros((2, 2, 3)), "RGB"),
            records.CORRUPT_MASK,
            "m.png: is an RGB PNG, but the masks of dataset cihp are 8-bit grey PNGs of values "
            "(mask_encoding: grey)",
        ),
        (
            RGB_SPEC,
            _png(np.zeros((2, 2)), "L"),
            records.CORRUPT_MASK,
            "m.png: is an 8-bit grey PNG, but the masks of dataset parts are RGB PNGs in the classes' "
            "colours (mask_encoding: rgb)",
        ),
    ],
    ids=["grey value no class", "trimap value no class", "colour no class", "rgb for grey", "grey for rgb"],
)
def test_bad_values_and_wrong_encodings_are_rejected_naming_file_value_and_spec(spec, png, kind, reason):
    with pytest.raises(records.Rejected) as e:
        records.decode_mask("m.png", png, spec)
    assert (e.value.kind, e.value.reason) == (kind, reason)


# The Beam job on make-dataset's outputs


def _pipeline(mode: str):
    args = ["--runner=DirectRunner", f"--direct_running_mode={mode}"]
    if mode == "multi_processing":
        args.append("--direct_num_workers=2")
    return lambda: beam.Pipeline(options=PipelineOptions(args))


def _ingest(spec, root, out, mode="in_memory", **kwargs):
    examples = os.path.join(out, "examples")
    summary = beam_ingest.run(
        _pipeline(mode),
        None,
        None,
        examples,
        os.path.join(out, "rejected"),
        dataset=spec,
        data_root=root,
        **kwargs,
    )
    return summary, examples


def _grey(path):
    img = Image.open(path)
    assert img.mode == "L"
    return np.asarray(img)


def _check_records(examples, spec, root, expected_splits, mask_ids):
    """Every record against its source files: bytes, format, size, source, mask ids, present."""
    with open(os.path.join(examples, artifacts.SPEC_FILE)) as f:
        assert f.read() == spec.to_json()
    assert dataset_spec.of_examples(examples) == spec
    for split, ids in expected_splits.items():
        got = {feature(e, features.FILENAME_KEY)[0].decode(): e for e in read_examples(examples, split)}
        assert sorted(got) == sorted(ids)
        for image_id, example in got.items():
            image = next(
                os.path.join(root, spec.images_dir, n)
                for n in os.listdir(os.path.join(root, spec.images_dir))
                if os.path.splitext(n)[0] == image_id
            )
            with open(image, "rb") as f:
                assert feature(example, features.IMAGE_KEY) == [f.read()]
            fmt = b"png" if image.endswith(".png") else b"jpeg"
            assert feature(example, features.IMAGE_FORMAT_KEY) == [fmt]
            assert feature(example, features.SOURCE_KEY) == [spec.name.encode()]
            expected = mask_ids(_grey(os.path.join(root, spec.masks_dir, f"{image_id}.png")))
            stored = feature(example, features.MASK_KEY)[0]
            np.testing.assert_array_equal(png_indices(stored), expected)
            assert Image.open(io.BytesIO(stored)).getpalette() == spec.palette().reshape(-1).tolist()
            h, w = expected.shape
            assert (feature(example, features.HEIGHT_KEY), feature(example, features.WIDTH_KEY)) == ([h], [w])
            present = sorted(int(c) for c in np.unique(expected) if 0 < c < spec.num_classes)
            assert feature(example, features.CLASSES_PRESENT_KEY) == present


def _pixels_of(spec, root, splits, mask_ids):
    """Each split's pixels per class and ignored, summed here from the source masks."""
    found = {}
    for split, ids in splits.items():
        counts = sum(
            np.bincount(
                mask_ids(_grey(os.path.join(root, spec.masks_dir, f"{i}.png"))).ravel(), minlength=256
            )
            for i in ids
        )
        found[split] = {
            pixels.CLASSES: {name: int(counts[c]) for c, name in enumerate(spec.class_names)},
            pixels.IGNORED: int(counts[255]),
        }
    return found


def test_cihp_ingest_is_exact_and_dead_letters_a_bad_value(cihp_dir, tmp_path):
    root = str(tmp_path / "cihp")
    shutil.copytree(cihp_dir, root)
    stems = sorted(os.path.splitext(n)[0] for n in os.listdir(os.path.join(root, "Images")))
    assert len(stems) == NUM_IMAGES
    splits = {
        s: [i for i in stems if (s == features.EVAL_SPLIT) == _in_eval(i, CIHP.eval_fraction)]
        for s in features.SPLITS
    }
    assert {s: len(ids) for s, ids in splits.items()} == {"train": 11, "eval": 1}
    bad, as_png = splits[features.TRAIN_SPLIT][:2]
    bad_mask = os.path.join(root, "Category_ids", f"{bad}.png")
    values = _grey(bad_mask).copy()
    values[0, :2] = 37
    _write(bad_mask, _png(values, "L"))
    jpeg = os.path.join(root, "Images", f"{as_png}.jpg")
    Image.open(jpeg).save(os.path.join(root, "Images", f"{as_png}.png"))
    os.remove(jpeg)

    summary, examples = _ingest(CIHP, root, str(tmp_path / "out"), max_rejected_fraction=0.1)
    assert summary.splits == {"train": 10, "eval": 1}
    assert summary.rejected == [
        {
            "id": bad,
            "source": "cihp",
            "split": "train",
            "kind": records.OUT_OF_PALETTE,
            "reason": f"{bad_mask}: 2 pixels are not a cihp class or void: grey 37 "
            "(dataset cihp allows mask values 0-19, 255)",
        }
    ]
    splits[features.TRAIN_SPLIT].remove(bad)
    _check_records(examples, CIHP, root, splits, lambda grey: grey)
    # Pixels per class of the written records only (the rejected mask is not counted).
    assert summary.pixels == _pixels_of(CIHP, root, splits, lambda grey: grey)


def test_oxford_pet_ingest_is_exact(pet_dir, tmp_path):
    annotations = os.path.join(pet_dir, "annotations")
    splits = {
        features.TRAIN_SPLIT: _first_words(os.path.join(annotations, "trainval.txt")),
        features.EVAL_SPLIT: _first_words(os.path.join(annotations, "test.txt")),
    }
    # In Beam's worker processes, as the pipeline's default config runs it: the folders source
    # and the value map are pickled to them (the pipeline tests of the folder formats run Beam
    # in memory).
    summary, examples = _ingest(PET, pet_dir, str(tmp_path / "out"), mode="multi_processing")
    assert summary.splits == {"train": 9, "eval": 3} and summary.rejected == []
    _check_records(examples, PET, pet_dir, splits, np.vectorize(TRIMAP_IDS.get))
    # Summed over worker processes: the trimaps' pets, backgrounds and (ignored) borders.
    assert summary.pixels == _pixels_of(PET, pet_dir, splits, np.vectorize(TRIMAP_IDS.get))
    assert 0 < pixels.ignored_fraction(summary.pixels["train"]) < 0.5 and summary.warnings == []
    assert summary.unread_files == {}
    # The next run into the same place starts without it: no stale spec may describe other records.
    beam_ingest.remove_previous_outputs(examples, str(tmp_path / "out" / "rejected"))
    assert os.listdir(examples) == []


def _lesions(root):
    """Six scans whose binary masks are saved as 0/255, three in each split, and their spec
    without ``values``: 255 is the ignore label, so they read as background and ignore only."""
    spec = _spec(name="lesions", class_names=("background", "lesion"))
    ids = [f"scan{n}" for n in range(6)]
    _write_folders(root, ids)
    mask = np.zeros((4, 4))
    mask[:3, :] = 255  # 12 of 16 pixels "lesion"
    for image_id in ids:
        _write(os.path.join(root, "ann", f"{image_id}.png"), _png(mask, "L"))
    splits = {s: [i for i in ids if (s == features.EVAL_SPLIT) == _in_eval(i, 0.3)] for s in features.SPLITS}
    assert {s: len(v) for s, v in splits.items()} == {"train": 3, "eval": 3}
    return spec


def test_binary_masks_read_without_values_fail_the_run_naming_the_fix(tmp_path):
    """A 0/255 mask read with 255 as the ignore label: background and ignore only. The run
    fails after the report, naming the cause and the value map; a stray file is named too."""
    root = str(tmp_path / "lesions")
    spec = _lesions(root)
    _write(os.path.join(root, "img", "scan6.tif"), b"II*\x00")
    out = tmp_path / "out"
    with pytest.raises(beam_ingest.MostlyIgnoredError) as e:
        _ingest(spec, root, str(out))
    fix = "`values: {0: background, 255: lesion}` in the dataset spec"
    assert str(e.value) == (
        "SegmentationExampleGen: 75.0% of the train split's mask pixels (36 of 48) are ignored, above "
        "ingest.max_ignored_fraction=0.5: the model would learn from the other 25.0% alone. Binary masks "
        "saved as 0/255 read so, as 255 is the ignore label of dataset lesions: if 255 marks a class, map "
        f"it: {fix}. If the pixels are meant to be ignored, raise ingest.max_ignored_fraction (1 turns the "
        f"check off). Pixels per class: {out / 'rejected' / 'report.md'}"
    )
    summary = json.loads((out / "rejected" / "summary.json").read_text())
    assert summary["pixels"] == {
        "train": {"classes": {"background": 12, "lesion": 0}, "ignored": 36},
        "eval": {"classes": {"background": 12, "lesion": 0}, "ignored": 36},
    }
    images = os.path.join(root, "img")
    assert summary["unread_files"] == {images: {"count": 1, "names": ["scan6.tif"]}}
    assert [w.split(":")[0] for w in summary["warnings"]] == [
        f"1 file in {images} is not read",
        "class 'lesion' (id 1) of dataset lesions has no labelled pixel in the train split",
        "75.0% of the eval split's mask pixels (36 of 48) are ignored, above ingest.max_ignored_fraction=0.5",
    ]
    assert summary["warnings"][0].endswith("or move it out of the folder.")
    assert summary["warnings"][1].endswith(f"255 is read as ignored: {fix}.")
    report = (out / "rejected" / "report.md").read_text()
    # The ignored row has no id: ignored pixels may come from several values, 255 or not.
    assert (
        "| 1 | lesion | 0 (0.00%) | 0 (0.00%) |" in report
        and "|  | (ignored) | 36 (75.00%) | 36 (75.00%) |" in report
    )
    assert f"- warning: {summary['warnings'][1]}" in report
    # Nothing says the records are good: no spec beside them, and the pixel sums are folded in.
    assert sorted(os.listdir(out / "examples")) == ["Split-eval", "Split-train"]
    assert sorted(os.listdir(out / "rejected")) == ["rejected.jsonl", "report.md", "summary.json"]
    # The fix named: with the value map, the same mask is a lesion where it holds 255.
    item = sources.plan_folders(spec, root)[0]
    fixed = dataclasses.replace(spec, values={0: "background", 255: "lesion"})
    _, counts = records.build_record(item, fixed)
    assert counts[[0, 1, 255]].tolist() == [4, 12, 0]


def test_a_run_failing_on_its_rejections_says_nothing_of_what_the_rest_cannot_teach(tmp_path, caplog):
    """Too much rejected is the failure: the data the run would keep is not judged, so no class
    is said to be missing (it may be in the rejected records) and no other error is raised."""
    root = str(tmp_path / "lesions")
    spec = _lesions(root)
    _write(os.path.join(root, "ann", "scan0.png"), b"not a png")
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING), pytest.raises(beam_ingest.TooManyRejectedError) as e:
        _ingest(spec, root, str(out))
    assert type(e.value) is beam_ingest.TooManyRejectedError
    assert str(e.value).startswith("SegmentationExampleGen rejected 1 of 6 ids (16.67%)")
    summary = json.loads((out / "rejected" / "summary.json").read_text())
    # scan0 was in train: its two other scans are counted, and nothing is said of them.
    assert summary["pixels"]["train"] == {"classes": {"background": 8, "lesion": 0}, "ignored": 24}
    assert summary["warnings"] == []
    assert "- warning:" not in (out / "rejected" / "report.md").read_text()
    logged = [r.getMessage() for r in caplog.records if r.name == beam_ingest.__name__]
    assert len(logged) == 1 and logged[0].startswith("rejected scan0 (lesions): "), logged


def test_the_present_classes_are_every_class_but_the_specs_background(tmp_path):
    root = str(tmp_path)
    _write_folders(root, ["a", "b", "c"])
    _write(os.path.join(root, "ann", "a.png"), _png(np.array([[0, 1], [2, 255]]), "L"))
    _write(os.path.join(root, "img", "a.png"), _png(np.zeros((2, 2, 3)), "RGB"))
    os.remove(os.path.join(root, "img", "a.jpg"))
    for background, present in (("background", [1, 2]), ("body", [0, 1]), ("", [0, 1, 2])):
        spec = _spec(background_class=background, eval_fraction=0.5)
        item = next(i for i in sources.plan_folders(spec, root) if i.image_id == "a")
        example, counts = records.build_record(item, spec)
        assert feature(example, features.CLASSES_PRESENT_KEY) == present, background
        assert counts[[0, 1, 2, 255]].tolist() == [1, 1, 1, 1] and counts.sum() == 4


# The command


CLI = os.path.join(os.path.dirname(sys.executable), "deeplab-tfx")


def test_ingest_command_takes_a_folders_dataset_and_requires_its_root(pet_dir, tmp_path):
    out = str(tmp_path / "out")
    args = [CLI, "ingest", "--config", "tiny", "--set", "dataset=oxford_pet", "--output", out]
    refused = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2
    assert refused.stderr == (
        "deeplab-tfx ingest: --data-root (or data.root) is required for dataset oxford_pet (layout folders)\n"
    )
    ran = subprocess.run(
        [*args, "--data-root", pet_dir, "--direct-running-mode", "in_memory"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert json.loads(ran.stdout)["splits"] == {"train": 9, "eval": 3}
    assert dataset_spec.read(os.path.join(out, "examples")) == PET
