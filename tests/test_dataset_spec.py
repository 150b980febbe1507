"""The dataset spec: how it loads, what it refuses, what it derives, and the schema made from it."""

import dataclasses
import hashlib
import json
import os

import numpy as np
import pytest

from components.dataset_schema.component import read_schema, schema_for
from core import artifacts, dataset_spec, features, paths
from core import config as config_lib
from core.config import ConfigError
from core.dataset_spec import DatasetSpec

CURATED_SCHEMA = paths.project_file(config_lib.ValidationConfig().schema_path)


def _spec(**fields) -> DatasetSpec:
    return DatasetSpec(**{"name": "d", "layout": "folders", "class_names": ("a", "b", "c"), **fields})


def test_voc_is_the_default_and_keeps_todays_classes():
    spec = config_lib.load_config("tiny").dataset
    assert spec == dataset_spec.VOC_SPEC and spec.num_classes == 21 and spec.class_names[15] == "person"
    lookup = spec.value_lookup()
    assert lookup[:21].tolist() == list(range(21)) and lookup[255] == features.IGNORE_LABEL
    assert (lookup[21:255] == -1).all()
    # VOC's palette: its colour map, void's colour at 255.
    assert spec.palette()[[0, 1, 15, 255]].tolist() == [
        [0, 0, 0],
        [128, 0, 0],
        [192, 128, 128],
        [224, 224, 192],
    ]


def test_shipped_specs_load_by_name_or_path_and_overrides_apply_after_them():
    pet = config_lib.load_config("tiny", ["dataset.eval_fraction=0.25", "dataset=oxford_pet"]).dataset
    assert pet.name == "oxford_pet" and pet.class_names == ("background", "pet") and pet.eval_fraction == 0.25
    lookup = pet.value_lookup()
    assert lookup[[0, 1, 2, 3, 4]].tolist() == [-1, 1, 0, features.IGNORE_LABEL, -1]
    path = os.path.join(paths.DATASET_SPEC_DIR, "cihp.yaml")
    cihp = config_lib.load_config("tiny", [f"dataset={path}"]).dataset
    assert cihp == config_lib.load_dataset_spec("cihp") and cihp.num_classes == 20
    assert cihp.value_lookup()[:20].tolist() == list(range(20)) and cihp.value_lookup()[20] == -1
    with pytest.raises(
        ConfigError, match=r"dataset='cityscapes': cannot read .*named specs: cihp, oxford_pet"
    ):
        config_lib.load_config("tiny", ["dataset=cityscapes"])


@pytest.mark.parametrize("spec", [dataset_spec.VOC_SPEC, config_lib.load_dataset_spec("oxford_pet")])
def test_a_spec_survives_json_unchanged_and_hashes(spec):
    again = DatasetSpec.from_json(spec.to_json())
    assert again == spec and hash(again) == hash(spec)


@pytest.mark.parametrize(
    "fields, says",
    [
        ({"class_names": ("a",)}, "class_names has 1 names: a dataset needs 2 to 255 classes"),
        ({"class_names": tuple(f"c{i}" for i in range(256))}, "has 256 names"),
        ({"class_names": ("a", "a")}, "must be distinct"),
        ({"class_names": ("a", "ignore")}, "must be distinct and not 'ignore'"),
        ({"class_names": ("a", "b c")}, r"class_names=\['b c'\] cannot work"),
        ({"colours": ((0, 0, 0),)}, "colours must be one \\[r, g, b\\] of 0-255 per class \\(3 classes\\)"),
        ({"colours": ((0, 0, 0), (1, 1, 1), (1, 1, 1))}, "colours and ignore_colour must be distinct"),
        ({"colours": ((0, 0, 0), (1, 1, 1), (2, 2, 2)), "ignore_colour": (1, 1, 1)}, "must be distinct"),
        ({"train_list": "t.txt"}, "train_list and eval_list go together"),
        ({"mask_encoding": "rgb"}, "mask_encoding='rgb' needs colours"),
        ({"mask_encoding": "jpeg"}, "mask_encoding='jpeg' cannot work"),
        ({"values": {1: "d"}}, "values: 1 -> 'd' names no class"),
        ({"values": {256: "a"}}, "key 256 cannot work"),
        ({"ignore_label": 256}, "ignore_label=256 cannot work"),
        ({"ignore_label": 1}, "ignore_label=1 is the id of class 'b', which could then never be labelled"),
        ({"eval_fraction": 1.0}, r"eval_fraction=1.0 cannot work: it must be a number in \[0, 1\)"),
        ({"layout": "voc"}, "layout='voc' reads the VOC and SBD archives"),
        ({"name": "voc"}, "a folders dataset needs a name of its own"),
        ({"background_class": "d"}, r"background_class='d' names no class \(classes: \['a', 'b', 'c'\]\)"),
    ],
)
def test_a_spec_that_cannot_work_is_refused_naming_the_key(fields, says):
    with pytest.raises(ConfigError, match=says):
        _spec(**fields)


def test_a_bad_spec_in_a_config_names_the_dataset_section():
    with pytest.raises(ConfigError, match=r"dataset\.mask_encoding='jpeg' cannot work"):
        config_lib.load_config("tiny", ["dataset=cihp", "dataset.mask_encoding=jpeg"])
    with pytest.raises(ConfigError, match=r"tiny.yaml: dataset: values: 3 -> 'border' names no class"):
        config_lib.load_config("tiny", ["dataset=oxford_pet", "dataset.values={3: border}"])


@pytest.mark.parametrize(
    "spec, digest",
    [
        (dataset_spec.VOC_SPEC, "9abd046984c49cd4"),
        (config_lib.load_dataset_spec("cihp"), "31d15f0365ecd4e3"),
        (config_lib.load_dataset_spec("oxford_pet"), "87c42f708be236fb"),
    ],
    ids=["voc", "cihp", "oxford_pet"],
)
def test_the_shipped_specs_are_the_text_they_were_before_the_background_key(spec, digest):
    # A spec's digest, on every Examples artifact, keys the window of spans and the cache: the
    # unset background (the first class) is not written.
    assert "background_class" not in json.loads(spec.to_json())
    assert hashlib.sha256(spec.to_json().encode()).hexdigest()[:16] == digest


def test_the_background_is_the_first_class_unless_the_spec_names_another_or_none():
    voc = dataset_spec.VOC_SPEC
    assert (voc.background_class, voc.background_id, voc.foreground_ids()) == (
        dataset_spec.FIRST_CLASS,
        0,
        tuple(range(1, 21)),
    )
    # Naming the first class is leaving the key unset: the same spec, the same JSON.
    assert _spec(background_class="a") == _spec() and _spec().background_class == dataset_spec.FIRST_CLASS
    assert _spec(background_class="a").to_json() == _spec().to_json()
    # Unset, it is the first class of whatever class names the spec is made with.
    renamed = dataclasses.replace(_spec(), class_names=("bg", "x"))
    assert (renamed.background_id, renamed.foreground_ids()) == (0, (1,))
    named = _spec(background_class="c")
    assert (named.background_id, named.foreground_ids()) == (2, (0, 1))
    assert json.loads(named.to_json())["background_class"] == "c"
    assert DatasetSpec.from_json(named.to_json()) == named
    for none in ("", None):  # Cityscapes' train ids: every class is an object
        spec = _spec(background_class=none)
        assert (spec.background_class, spec.background_id, spec.foreground_ids()) == ("", None, (0, 1, 2))
        assert DatasetSpec.from_json(spec.to_json()) == spec
    # In a config, YAML's null is none too.
    cihp = config_lib.load_config("tiny", ["dataset=cihp", "dataset.background_class=null"]).dataset
    assert (cihp.background_class, cihp.background_id) == ("", None)
    pets = config_lib.load_config("tiny", ["dataset=oxford_pet", "dataset.background_class=pet"]).dataset
    assert (pets.background_id, pets.foreground_ids()) == (1, (0,))
    # A named background stays that class when the names are replaced, and must still name one.
    assert dataclasses.replace(named, class_names=("c", "a", "b")).background_id == 0
    with pytest.raises(ConfigError, match=r"^background_class='c' names no class \(classes: \['a', 'b'\]\)"):
        dataclasses.replace(named, class_names=("a", "b"))


@pytest.mark.parametrize("background", [None, "", "aeroplane"])
def test_the_voc_layout_keeps_vocs_background(background):
    """The curated schema of VOC's layout holds class/present 1 to 20: another background (or
    none) would fail validation late, on an anomaly that does not name the key."""
    says = (
        f"background_class={background or ''!r} cannot work with layout='voc': VOC's background is "
        "class 0, 'background', and its curated schema holds class/present 1 to 20; leave "
        "background_class unset"
    )
    with pytest.raises(ConfigError) as e:
        DatasetSpec(background_class=background)
    assert str(e.value) == says
    # In a config, the message names the section's keys.
    with pytest.raises(ConfigError) as e:
        config_lib.load_config("tiny", [f"dataset.background_class={background or 'null'}"])
    tiny = os.path.join(paths.CONFIG_DIR, "tiny.yaml")
    assert str(e.value) == f"{tiny}: " + says.replace(
        "background_class=", "dataset.background_class="
    ).replace("layout=", "dataset.layout=")
    assert DatasetSpec(background_class="background") == dataset_spec.VOC_SPEC


def test_value_map_and_ignore_label():
    spec = _spec(ignore_label=-1)
    assert spec.value_lookup()[:4].tolist() == [0, 1, 2, -1] and spec.value_lookup()[255] == -1
    # Values replace the identity; the ignore label stays ignored (Cityscapes: ids, 255 ignored).
    spec = _spec(values={10: "c", 20: "a", 30: "ignore"})
    expected = np.full(256, -1)
    expected[[10, 20, 30, 255]] = [2, 0, features.IGNORE_LABEL, features.IGNORE_LABEL]
    np.testing.assert_array_equal(spec.value_lookup(), expected)
    # ... unless values map it to a class (binary masks in 0/255).
    spec = _spec(class_names=("background", "lesion"), values={0: "background", 255: "lesion"})
    assert spec.value_lookup()[[0, 1, 255]].tolist() == [0, -1, 1]
    # ADE20K-style: 0 is "other", ignored, and ids 1-N are the classes.
    spec = _spec(ignore_label=0, values={1: "a", 2: "b", 3: "c"})
    assert spec.value_lookup()[[0, 1, 2, 3, 4, 255]].tolist() == [features.IGNORE_LABEL, 0, 1, 2, -1, -1]


def test_the_palette_holds_the_specs_colours_then_vocs():
    spec = _spec(colours=((1, 2, 3), (4, 5, 6), (7, 8, 9)), ignore_colour=(9, 9, 9))
    palette = spec.palette()
    assert palette.shape == (256, 3) and palette.dtype == np.uint8
    assert palette[:3].tolist() == [[1, 2, 3], [4, 5, 6], [7, 8, 9]] and palette[255].tolist() == [9, 9, 9]
    np.testing.assert_array_equal(palette[3:255], dataset_spec.voc_colormap()[3:255])


def test_the_spec_file_round_trips_through_any_filesystem():
    spec = config_lib.load_dataset_spec("cihp")
    directory = "ram://test_dataset_spec/examples"
    assert dataset_spec.read(directory) is None
    dataset_spec.write(spec, directory)
    assert dataset_spec.read(directory) == spec
    assert dataset_spec.of_examples("ram://test_dataset_spec/none") == dataset_spec.VOC_SPEC
    assert artifacts.examples_dir("gs://b/Examples/7/Split-train/*") == "gs://b/Examples/7"
    assert artifacts.split_files("gs://b/Examples/7", "train") == "gs://b/Examples/7/Split-train/*"


def test_the_schema_is_the_curated_one_for_voc_and_follows_other_specs():
    curated = read_schema(CURATED_SCHEMA)
    assert schema_for(curated, dataset_spec.VOC_SPEC) == curated
    # A user's stricter VOC schema (VOC-sourced images only) stays the contract.
    strict = read_schema(CURATED_SCHEMA)
    next(d for d in strict.string_domain if d.name == features.SOURCE_KEY).value.remove("sbd")
    assert schema_for(strict, dataset_spec.VOC_SPEC) == strict
    pet = schema_for(curated, config_lib.load_dataset_spec("oxford_pet"))
    present = next(f for f in pet.feature if f.name == features.CLASSES_PRESENT_KEY)
    assert (present.int_domain.min, present.int_domain.max, present.value_count.max) == (1, 1, 1)
    # The ids class/present may hold are every class but the background, wherever it is or if none.
    for background, expected in (("", (0, 2, 3)), ("c", (0, 1, 2)), ("a", (1, 2, 2))):
        schema = schema_for(curated, _spec(background_class=background))
        present = next(f for f in schema.feature if f.name == features.CLASSES_PRESENT_KEY)
        assert (present.int_domain.min, present.int_domain.max, present.value_count.max) == expected
    domains = {d.name: list(d.value) for d in pet.string_domain}
    assert domains[features.SOURCE_KEY] == ["oxford_pet"]
    assert domains[features.IMAGE_FORMAT_KEY] == ["jpeg", "png"]
    # Everything else is the curated schema's.
    for feature in pet.feature:
        if feature.name != features.CLASSES_PRESENT_KEY:
            assert feature == next(f for f in curated.feature if f.name == feature.name)
