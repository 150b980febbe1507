"""The generated datasets have the real archives' layouts, byte formats and id relations."""

import collections
import hashlib
import itertools
import json
import os
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import scipy.io
import scipy.ndimage
from PIL import Image

from core import dataset_spec, features
from datasets import synthetic_folders, synthetic_voc
from pipeline import cli
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
    """The pipeline's hash split, written out again (dataset_spec.in_eval)."""
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
    assert summary == {
        "out": out,
        "format": "oxford_pet",
        "train": 3,
        "eval": 1,
        "images": 4,
        "difficulty": "easy",
    }


# Difficulty (make-dataset --difficulty easy | hard)

# sha256 of the files of tiny easy datasets (seed 0, max_side 40; .mat files past their
# 128-byte header, which carries a timestamp; the manifest apart), computed from the generator as
# it was before hard mode existed: easy mode is the demo's data and must not drift.
EASY_DIGESTS = {
    "voc": "60005570d41f6a703380e6267092cd4ad5e4444532b6670b07f0a9441e3c871b",
    "cihp": "1f8662fb723f56a475a7803f0313181f66d8467c214987a1917a2461f4159731",
    "oxford_pet": "cb053e1be9828c6a70573028f7b3fffed394845dbc33d8da1736bf908e77b95d",
}
MAKERS = {"voc": synthetic_voc.make_dataset, **synthetic_folders.MAKERS}


def _content_digest(root):
    digest = hashlib.sha256()
    for folder, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            if name == "manifest.json":
                continue
            with open(os.path.join(folder, name), "rb") as f:
                data = f.read()
            digest.update(name.encode() + (data[128:] if name.endswith(".mat") else data))
    return digest.hexdigest()


def _manifest(root):
    with open(os.path.join(root, "manifest.json")) as f:
        return json.load(f)


@pytest.mark.parametrize("fmt", sorted(EASY_DIGESTS))
def test_easy_mode_is_byte_for_byte_what_it_was(tmp_path, fmt):
    num_images = 8 if fmt == "voc" else 3
    MAKERS[fmt](str(tmp_path), num_images, seed=0, max_side=40, workers=1)
    assert _content_digest(tmp_path) == EASY_DIGESTS[fmt]
    assert _manifest(tmp_path)["difficulty"] == "easy"


def _cues(style):
    return (style.color, style.shape, style.texture)


@pytest.mark.parametrize("num_classes", [dataset_spec.VOC_SPEC.num_classes, 20])
def test_hard_classes_share_every_cue_and_differ_in_the_combination(num_classes):
    styles = synthetic_voc.hard_class_styles(num_classes)
    clutter = synthetic_voc.hard_clutter_styles(num_classes)
    assert sorted(styles) == list(range(1, num_classes))
    assert len(styles) + len(clutter) == 25
    for cue in range(3):
        uses = collections.Counter(_cues(s)[cue] for s in styles.values())
        assert len(uses) == 5 and min(uses.values()) >= 3, (cue, uses)
    looks = [_cues(s) for s in styles.values()] + [_cues(s) for s in clutter]
    for a, b in itertools.combinations(looks, 2):
        assert sum(x == y for x, y in zip(a, b, strict=True)) <= 1, (a, b)  # any two cues tell them apart
    assert not {_cues(s) for s in clutter} & {_cues(s) for s in styles.values()}


def test_hard_styles_refuse_class_counts_the_design_cannot_hold():
    with pytest.raises(ValueError, match="1 to 24 object classes.*got num_classes=26"):
        synthetic_voc.hard_class_styles(26)


HARD_SEED, HARD_IMAGES, HARD_SIDE = 1, 12, 128


@pytest.fixture(scope="module")
def hard_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("hard"))
    synthetic_voc.make_dataset(
        out, HARD_IMAGES, seed=HARD_SEED, max_side=HARD_SIDE, workers=1, difficulty="hard"
    )
    return out


def _hard_scenes(root):
    """``{id: (scene, class ids as written, instance ids as written, image as written)}``:
    SBD's masks where the id is in SBD, VOC's otherwise."""
    manifest = _manifest(root)
    sbd = set(manifest["sbd_train"]) | set(manifest["sbd_val"])
    ids = sorted(set(manifest["voc_train"]) | set(manifest["voc_val"]) | sbd)
    out = {}
    for index, image_id in enumerate(ids):
        scene = synthetic_voc.draw_hard_scene(
            synthetic_voc.scene_rng(HARD_SEED, index), HARD_SIDE, synthetic_voc.VOC_CLASSES
        )
        if image_id in sbd:
            cls = sbd_segmentation(sbd_path(root, "cls", f"{image_id}.mat"))
            inst = scipy.io.loadmat(sbd_path(root, "inst", f"{image_id}.mat"))["GTinst"][0, 0]["Segmentation"]
        else:
            with open(voc_path(root, "SegmentationClass", f"{image_id}.png"), "rb") as f:
                cls = png_indices(f.read())
            with open(voc_path(root, "SegmentationObject", f"{image_id}.png"), "rb") as f:
                inst = png_indices(f.read())
        image = np.asarray(Image.open(voc_path(root, "JPEGImages", f"{image_id}.jpg")))
        out[image_id] = (scene, cls, inst, image)
    return out


def _touch(a, b):
    """Whether two boolean masks share an edge (4-neighbours)."""
    grown = scipy.ndimage.binary_dilation(a, scipy.ndimage.generate_binary_structure(2, 1))
    return bool((grown & b).any())


def _nearest_hue(pixels, colours):
    """Index of the colour whose direction in RGB is closest to each pixel's (brightness apart)."""
    unit = colours / np.linalg.norm(colours, axis=-1, keepdims=True)
    return np.argmax(
        pixels.astype(float) @ unit.T / (np.linalg.norm(pixels, axis=-1, keepdims=True) + 1e-6), -1
    )


def test_hard_dataset_is_hard_in_each_listed_way(hard_dir):
    assert _manifest(hard_dir)["difficulty"] == "hard"
    styles = synthetic_voc.hard_class_styles(synthetic_voc.VOC_CLASSES)
    colours = np.asarray(sorted({s.color for s in styles.values()}), float)
    repeated = small = clutter = lookalike = touching = 0
    for scene, cls, _, image in _hard_scenes(hard_dir).values():
        labelled = cls != features.IGNORE_LABEL
        np.testing.assert_array_equal(cls[labelled], scene.classes[labelled])  # the files are the scene
        assert set(np.unique(cls).tolist()) <= set(range(21)) | {features.IGNORE_LABEL}
        repeated += max(collections.Counter(scene.instance_classes).values(), default=0) > 1
        for k, c in enumerate(scene.instance_classes, start=1):
            region = scene.instances == k
            ys, xs = np.nonzero(region)
            small += max(np.ptp(ys), np.ptp(xs)) + 1 <= 0.15 * min(cls.shape)
            touching += any(
                _touch(region, scene.instances == j) for j in range(k + 1, len(scene.instance_classes) + 1)
            )
            # What is visible is what is labelled: the pixels inside look like the class's colour.
            inside = scipy.ndimage.binary_erosion(region, iterations=2)
            if inside.sum() >= 20:
                want = colours.tolist().index(list(styles[c].color))
                assert (_nearest_hue(image[inside], colours) == want).mean() > 0.9
        clutter += int(scene.clutter.sum())
        assert (scene.classes[scene.clutter] == 0).all()
        background = (scene.classes == 0) & ~scene.clutter & ~scene.void
        distance = np.abs(image[background][:, None, :].astype(float) - colours[None]).max(-1).min(-1)
        lookalike += int((distance <= 30).sum())
    assert repeated >= 5, "images with two instances of one class"
    assert small >= 5, "objects down to a few per cent of the shorter side"
    assert touching >= 4, "objects overlap"
    assert clutter > 0, "clutter, labelled background"
    assert lookalike > 0.05 * HARD_IMAGES * HARD_SIDE**2 / 2, "background painted in class colours"


def test_hard_instances_keep_distinct_ids_in_voc_and_sbd(hard_dir):
    for image_id, (scene, cls, inst, _) in _hard_scenes(hard_dir).items():
        labelled = cls != features.IGNORE_LABEL
        np.testing.assert_array_equal(inst[labelled], scene.instances[labelled])
        for k, c in enumerate(scene.instance_classes, start=1):
            assert set(np.unique(scene.classes[scene.instances == k]).tolist()) == {c}, image_id
        assert (scene.instances[scene.classes == 0] == 0).all()
        assert set(np.unique(inst).tolist()) <= set(range(len(scene.instance_classes) + 1)) | {
            features.IGNORE_LABEL
        }


def test_unknown_difficulty_is_refused_before_anything_is_written(tmp_path):
    for maker in MAKERS.values():
        with pytest.raises(ValueError, match="difficulty must be one of easy, hard, got 'medium'"):
            maker(str(tmp_path / "out"), 8, difficulty="medium")
    assert not (tmp_path / "out").exists()
    assert cli.DATASET_DIFFICULTIES == synthetic_voc.DIFFICULTIES


@pytest.mark.parametrize("fmt", cli.DATASET_FORMATS)
def test_make_dataset_command_hard(tmp_path, capsys, fmt):
    out = str(tmp_path / fmt)
    assert cli.main(["make-dataset", "--format", fmt, "--difficulty", "hard", "--out", out,
                     "--num-images", "8", "--max-side", "48", "--workers", "1"]) == 0  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    assert (summary["images"], summary["difficulty"]) == (8, "hard")
    assert _manifest(out)["difficulty"] == "hard"
    if fmt == "cihp":
        for name in os.listdir(os.path.join(out, "Category_ids")):
            assert _grey(os.path.join(out, "Category_ids", name)).max() < 20
    if fmt == "oxford_pet":
        values = set()
        for name in os.listdir(os.path.join(out, "annotations", "trimaps")):
            values |= set(np.unique(_grey(os.path.join(out, "annotations", "trimaps", name))).tolist())
        assert values == {1, 2, 3}


def test_hard_mode_same_seed_same_bytes(tmp_path):
    for workers, name in ((1, "a"), (2, "b")):
        synthetic_voc.make_dataset(
            str(tmp_path / name), 8, seed=5, max_side=48, workers=workers, difficulty="hard"
        )
    assert _content_digest(tmp_path / "a") == _content_digest(tmp_path / "b")
