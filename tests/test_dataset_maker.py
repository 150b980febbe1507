"""The generated datasets have the real archives' layouts, byte formats and id relations."""

import hashlib
import json
import os
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import scipy.io
import scipy.ndimage
from PIL import Image

from datasets import synthetic_folders, synthetic_voc
from pipeline import cli, dataset_spec, features
from tests.conftest import png_indices, read_list, sbd_path, sbd_segmentation, voc_path
from transform import palette


def test_lists_match_the_layout_and_overlap_like_the_real_data(dataset_dir):
    voc_train = set(read_list(voc_path(dataset_dir, "ImageSets", "Segmentation", "train.txt")))
    voc_val = set(read_list(voc_path(dataset_dir, "ImageSets", "Segmentation", "val.txt")))
    trainval = set(read_list(voc_path(dataset_dir, "ImageSets", "Segmentation", "trainval.txt")))
    sbd_train = set(read_list(sbd_path(dataset_dir, "train.txt")))
    sbd_val = set(read_list(sbd_path(dataset_dir, "val.txt")))
    assert trainval == voc_train | voc_val and not voc_train & voc_val
    assert not sbd_train & sbd_val
    assert voc_val & sbd_train, "some VOC val ids must sit in SBD train, as in the real data"
    assert voc_val & sbd_val
    assert voc_train & (sbd_train | sbd_val), "an id annotated by both sources"
    assert voc_train - sbd_train - sbd_val, "a VOC-only id"
    assert (sbd_train | sbd_val) - voc_train - voc_val, "SBD-only ids"


def test_voc_files_are_in_the_real_formats(dataset_dir):
    ids = read_list(voc_path(dataset_dir, "ImageSets", "Segmentation", "trainval.txt"))
    orientations = set()
    for image_id in ids:
        img = Image.open(voc_path(dataset_dir, "JPEGImages", f"{image_id}.jpg"))
        assert img.format == "JPEG" and img.mode == "RGB"
        orientations.add(img.size[0] > img.size[1])
        for folder in ("SegmentationClass", "SegmentationObject"):
            mask = Image.open(voc_path(dataset_dir, folder, f"{image_id}.png"))
            assert mask.format == "PNG" and mask.mode == "P" and mask.size == img.size
            pal = np.asarray(mask.getpalette()).reshape(-1, 3)
            np.testing.assert_array_equal(pal[:256], palette.VOC_COLORMAP)
        with open(voc_path(dataset_dir, "SegmentationClass", f"{image_id}.png"), "rb") as f:
            ids_ = png_indices(f.read())
        assert set(np.unique(ids_)) <= set(palette.VALID_INDICES)
        if (ids_ > 0).any():
            assert (ids_ == features.IGNORE_LABEL).any(), "objects have a void band"
        root = ET.parse(voc_path(dataset_dir, "Annotations", f"{image_id}.xml")).getroot()
        assert root.findtext("filename") == f"{image_id}.jpg"
        assert int(root.findtext("size/width")) == img.size[0]
        names = {o.findtext("name") for o in root.iter("object")}
        assert names == {dataset_spec.VOC_CLASS_NAMES[c] for c in np.unique(ids_) if 0 < c < 255}
    assert orientations == {True, False}, "both landscape and portrait images"


def test_sbd_mats_are_matlab_structs_as_sbd_ships_them(dataset_dir):
    ids = read_list(sbd_path(dataset_dir, "train.txt")) + read_list(sbd_path(dataset_dir, "val.txt"))
    for image_id in ids:
        cls = scipy.io.loadmat(sbd_path(dataset_dir, "cls", f"{image_id}.mat"))["GTcls"][0, 0]
        assert set(cls.dtype.names) == {"Segmentation", "Boundaries", "CategoriesPresent"}
        seg = cls["Segmentation"]
        img = Image.open(sbd_path(dataset_dir, "img", f"{image_id}.jpg"))
        assert seg.shape == (img.size[1], img.size[0]) and seg.dtype == np.uint8
        assert seg.max() < dataset_spec.VOC_SPEC.num_classes, "SBD has no void label"
        present = sorted(int(c) for c in np.unique(seg) if c > 0)
        assert sorted(np.asarray(cls["CategoriesPresent"]).ravel().tolist()) == present
        assert cls["Boundaries"].shape == (dataset_spec.VOC_SPEC.num_classes - 1, 1)
        inst = scipy.io.loadmat(sbd_path(dataset_dir, "inst", f"{image_id}.mat"))["GTinst"][0, 0]
        assert set(inst.dtype.names) == {"Segmentation", "Boundaries", "Categories"}
        assert inst["Segmentation"].max() == len(np.asarray(inst["Categories"]).ravel())


def test_shared_ids_have_the_same_image_and_compatible_masks(dataset_dir):
    voc_ids = set(read_list(voc_path(dataset_dir, "ImageSets", "Segmentation", "trainval.txt")))
    sbd_ids = set(read_list(sbd_path(dataset_dir, "train.txt")) + read_list(sbd_path(dataset_dir, "val.txt")))
    for image_id in sorted(voc_ids & sbd_ids):
        with (
            open(voc_path(dataset_dir, "JPEGImages", f"{image_id}.jpg"), "rb") as a,
            open(sbd_path(dataset_dir, "img", f"{image_id}.jpg"), "rb") as b,
        ):
            assert a.read() == b.read()
        with open(voc_path(dataset_dir, "SegmentationClass", f"{image_id}.png"), "rb") as f:
            voc = png_indices(f.read())
        sbd = sbd_segmentation(sbd_path(dataset_dir, "cls", f"{image_id}.mat"))
        labelled = voc != features.IGNORE_LABEL
        np.testing.assert_array_equal(voc[labelled], sbd[labelled])


def _tree_digest(root):
    digest = hashlib.sha256()
    for folder, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            if name.endswith(".mat"):  # MATLAB headers carry a creation timestamp
                continue
            with open(os.path.join(folder, name), "rb") as f:
                digest.update(name.encode() + f.read())
    return digest.hexdigest()


def test_same_seed_same_bytes(tmp_path):
    a = synthetic_voc.make_dataset(str(tmp_path / "a"), 12, seed=3, max_side=64, workers=1)
    b = synthetic_voc.make_dataset(str(tmp_path / "b"), 12, seed=3, max_side=64, workers=2)
    assert a == b
    assert _tree_digest(tmp_path / "a") == _tree_digest(tmp_path / "b")
    c = synthetic_voc.make_layout(12, seed=4)
    assert c != a


def test_default_size_is_voc_like(tmp_path):
    synthetic_voc.make_dataset(str(tmp_path), 8, seed=0, workers=1)
    sizes = {Image.open(p).size for p in (tmp_path / "VOCdevkit/VOC2012/JPEGImages").iterdir()}
    assert all(max(s) == 500 and min(s) >= 281 for s in sizes)


def test_too_few_images_is_refused():
    with pytest.raises(ValueError, match="at least 8"):
        synthetic_voc.make_layout(5, seed=0)


# The folder formats (make-dataset --format cihp | oxford_pet)


def _sha_eval(image_id, fraction):
    """The pipeline's hash split, written out again (sources.in_eval)."""
    return int(hashlib.sha256(image_id.encode()).hexdigest()[:16], 16) < fraction * 2**64


def _grey(path):
    img = Image.open(path)
    assert img.format == "PNG" and img.mode == "L"
    return np.asarray(img)


def test_cihp_format_grey_ids_and_a_hash_split_with_an_eval_id(tmp_path):
    layout = synthetic_folders.make_cihp(str(tmp_path), 12, seed=1, max_side=64, workers=1)
    assert (len(layout.train), len(layout.eval)) == (11, 1)
    assert [_sha_eval(i, 0.1) for i in layout.eval] == [True] and not any(
        _sha_eval(i, 0.1) for i in layout.train
    )
    assert sorted(os.listdir(tmp_path)) == ["Category_ids", "Images", "manifest.json"], "no split lists"
    assert sorted(os.listdir(tmp_path / "Images")) == [f"{i}.jpg" for i in layout.all_ids]
    assert all(len(i) == 7 and i.isdigit() for i in layout.all_ids)
    seen = set()
    for image_id in layout.all_ids:
        image = Image.open(tmp_path / "Images" / f"{image_id}.jpg")
        ids = _grey(tmp_path / "Category_ids" / f"{image_id}.png")
        assert image.format == "JPEG" and image.mode == "RGB" and ids.shape == image.size[::-1]
        assert max(image.size) == 64 and ids.max() < 20 and (ids > 0).any() and (ids == 0).any()
        seen |= set(np.unique(ids).tolist())
    assert len(seen) >= 8, seen


def test_oxford_pet_format_trimaps_and_four_column_lists(tmp_path):
    layout = synthetic_folders.make_oxford_pet(str(tmp_path), 12, seed=2, max_side=64, workers=1)
    assert (len(layout.train), len(layout.eval)) == (9, 3)
    breeds = {name: row for name, *row in synthetic_folders.BREEDS}
    for name, ids in (("trainval.txt", layout.train), ("test.txt", layout.eval)):
        with open(tmp_path / "annotations" / name) as f:
            rows = [line.split() for line in f]
        assert [r[0] for r in rows] == list(ids)
        for image_id, *columns in rows:
            assert [int(c) for c in columns] == breeds[image_id.rsplit("_", 1)[0]]
    for image_id in layout.all_ids:
        image = Image.open(tmp_path / "images" / f"{image_id}.jpg")
        trimap = _grey(tmp_path / "annotations" / "trimaps" / f"{image_id}.png")
        assert image.format == "JPEG" and trimap.shape == image.size[::-1]
        assert set(np.unique(trimap).tolist()) == {1, 2, 3}
        # The border band lies between pet and background: they never touch.
        pet = trimap == synthetic_folders.PET
        assert not (
            scipy.ndimage.binary_dilation(pet, np.ones((3, 3))) & (trimap == synthetic_folders.BACKGROUND)
        ).any()
        assert (trimap == synthetic_folders.BORDER).mean() < 0.3


@pytest.mark.parametrize("maker", [synthetic_folders.make_cihp, synthetic_folders.make_oxford_pet])
def test_folder_formats_same_seed_same_bytes(tmp_path, maker):
    a = maker(str(tmp_path / "a"), 6, seed=3, max_side=48, workers=1)
    b = maker(str(tmp_path / "b"), 6, seed=3, max_side=48, workers=2)
    assert a == b and _tree_digest(tmp_path / "a") == _tree_digest(tmp_path / "b")
    maker(str(tmp_path / "c"), 6, seed=4, max_side=48, workers=1)
    assert _tree_digest(tmp_path / "c") != _tree_digest(tmp_path / "a")


def test_make_dataset_command_formats(tmp_path, capsys):
    assert cli.DATASET_FORMATS == (cli.VOC_FORMAT, *synthetic_folders.FORMATS)
    out = str(tmp_path / "pet")
    assert cli.main(["make-dataset", "--format", "oxford_pet", "--out", out, "--num-images", "4",
                     "--max-side", "32", "--workers", "1"]) == 0  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    assert summary == {"out": out, "format": "oxford_pet", "train": 3, "eval": 1, "images": 4}
