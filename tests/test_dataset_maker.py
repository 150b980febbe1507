"""The generated dataset has the real archives' layout, byte formats and id relations."""

import hashlib
import os
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import scipy.io
from PIL import Image

from datasets import synthetic_voc
from pipeline import features
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
        assert names == {features.CLASS_NAMES[c] for c in np.unique(ids_) if 0 < c < 255}
    assert orientations == {True, False}, "both landscape and portrait images"


def test_sbd_mats_are_matlab_structs_as_sbd_ships_them(dataset_dir):
    ids = read_list(sbd_path(dataset_dir, "train.txt")) + read_list(sbd_path(dataset_dir, "val.txt"))
    for image_id in ids:
        cls = scipy.io.loadmat(sbd_path(dataset_dir, "cls", f"{image_id}.mat"))["GTcls"][0, 0]
        assert set(cls.dtype.names) == {"Segmentation", "Boundaries", "CategoriesPresent"}
        seg = cls["Segmentation"]
        img = Image.open(sbd_path(dataset_dir, "img", f"{image_id}.jpg"))
        assert seg.shape == (img.size[1], img.size[0]) and seg.dtype == np.uint8
        assert seg.max() < features.NUM_CLASSES, "SBD has no void label"
        present = sorted(int(c) for c in np.unique(seg) if c > 0)
        assert sorted(np.asarray(cls["CategoriesPresent"]).ravel().tolist()) == present
        assert cls["Boundaries"].shape == (features.NUM_CLASSES - 1, 1)
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
