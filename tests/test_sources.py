"""The train_aug split rule and the split-list readers, checked exactly."""

import os

import pytest

from components.segmentation_example_gen import sources
from core import features
from core.dataset_spec import VOC_SPEC
from tests.conftest import read_list, sbd_path, voc_path

TRAIN, EVAL = features.TRAIN_SPLIT, features.EVAL_SPLIT
VOC, SBD = features.SOURCE_VOC, features.SOURCE_SBD


def test_train_aug_rule_by_hand():
    lists = sources.SourceLists(
        voc_train=("a", "b", "x"),
        voc_val=("c", "d"),
        sbd_train=("b", "c", "e", "f"),  # c is a VOC val id inside SBD train
        sbd_val=("b", "d", "g"),  # d is a VOC val id inside SBD val
    )
    assert sources.assign_splits(lists) == {
        "a": (TRAIN, VOC),
        "b": (TRAIN, VOC),  # in VOC train and both SBD lists: once, VOC annotation
        "x": (TRAIN, VOC),
        "c": (EVAL, VOC),
        "d": (EVAL, VOC),
        "e": (TRAIN, SBD),
        "f": (TRAIN, SBD),
        "g": (TRAIN, SBD),
    }


def test_an_id_in_both_voc_lists_is_eval_only():
    lists = sources.SourceLists(voc_train=("a", "b"), voc_val=("b",))
    assert sources.assign_splits(lists) == {"a": (TRAIN, VOC), "b": (EVAL, VOC)}


def test_voc_only_without_sbd():
    lists = sources.SourceLists(voc_train=("a",), voc_val=("b",))
    assert sources.assign_splits(lists) == {"a": (TRAIN, VOC), "b": (EVAL, VOC)}


def test_read_id_list_skips_blanks_and_duplicates(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("2008_000002\n\n2007_000032\r\n2008_000002\n  \n")
    assert sources.read_id_list(str(path)) == ("2007_000032", "2008_000002")


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "cannot read split list"),
        (b"\xff\xfe\x00binary", "is not text"),
        (b"2007_000032 extra\n", "line 1"),
    ],
)
def test_unreadable_list_is_fatal_and_names_the_file(tmp_path, content, message):
    path = tmp_path / "val.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(sources.ListFileError, match=message) as err:
        sources.read_id_list(str(path))
    assert str(path) in str(err.value)


def test_roots_accept_every_level_of_the_archive(dataset_dir):
    voc = os.path.join(dataset_dir, "VOCdevkit", "VOC2012")
    for root in (dataset_dir, os.path.join(dataset_dir, "VOCdevkit"), voc):
        assert sources.resolve_voc_root(root) == voc
    sbd = os.path.join(dataset_dir, "benchmark_RELEASE", "dataset")
    for root in (dataset_dir, os.path.join(dataset_dir, "benchmark_RELEASE"), sbd):
        assert sources.resolve_sbd_root(root) == sbd
    with pytest.raises(sources.ListFileError, match="not a VOC 2012 root"):
        sources.resolve_voc_root(str(dataset_dir) + "/nowhere")


def test_plan_paths_follow_the_source(dataset_dir):
    items = sources.plan_items(dataset_dir, dataset_dir)
    for item in items:
        if item.source == VOC:
            assert item.image_path.endswith(f"VOC2012/JPEGImages/{item.image_id}.jpg")
            assert item.mask_path.endswith(f"VOC2012/SegmentationClass/{item.image_id}.png")
        else:
            assert item.image_path.endswith(f"dataset/img/{item.image_id}.jpg")
            assert item.mask_path.endswith(f"dataset/cls/{item.image_id}.mat")
        assert os.path.exists(item.image_path) and os.path.exists(item.mask_path)


def test_fingerprint_follows_the_files(dataset_copy):
    before = sources.fingerprint(dataset_copy, dataset_copy, VOC_SPEC)
    assert sources.fingerprint(dataset_copy, dataset_copy, VOC_SPEC) == before
    item = sources.plan_items(dataset_copy, dataset_copy)[0]
    with open(item.mask_path, "ab") as f:
        f.write(b"\0")
    assert sources.fingerprint(dataset_copy, dataset_copy, VOC_SPEC) != before


IDS = ("2007_000032", "2007_000039", "2008_000002")


@pytest.mark.parametrize(
    "content",
    [
        pytest.param("2007_000032\r\n2007_000039\r\n2008_000002\r\n", id="crlf"),
        pytest.param("2007_000032 \n2007_000039\t\n 2008_000002\u00a0\n", id="trailing-whitespace"),
        pytest.param("\ufeff2007_000032\n2007_000039\n2008_000002", id="bom"),
        pytest.param("\ufeff2007_000032\r\n\r\n2007_000039  \r\n2008_000002\r\n", id="bom-crlf-blanks"),
    ],
)
def test_list_layouts_editors_write_give_the_same_ids(tmp_path, content):
    path = tmp_path / "val.txt"
    path.write_bytes(content.encode())
    assert sources.read_id_list(str(path)) == IDS


@pytest.mark.parametrize(
    "line, char",
    [
        pytest.param("2007_000039\u200b", "U+200B", id="zero-width-space-after"),  # strip() keeps it
        pytest.param("\u200b2007_000039", "U+200B", id="zero-width-space-before"),
        pytest.param("2007_\u2060000039", "U+2060", id="word-joiner"),
        pytest.param("\ufeff2007_000039", "U+FEFF", id="bom-inside"),  # two lists pasted together
        pytest.param("2007_000039\u200e", "U+200E", id="left-to-right-mark"),
        pytest.param("2007_000039\x00", "U+0000", id="nul"),
        pytest.param("2007_00003\u00ad9", "U+00AD", id="soft-hyphen"),
        pytest.param("2007_000039\r2008_000002", "U+000D", id="lone-cr"),  # old Mac line ends
    ],
)
def test_invisible_characters_are_refused_naming_file_line_and_character(tmp_path, line, char):
    path = tmp_path / "val.txt"
    path.write_bytes(f"2007_000032\n{line}\n2008_000002\n".encode())
    with pytest.raises(sources.ListFileError) as err:
        sources.read_id_list(str(path))
    message = str(err.value)
    assert str(path) in message and "line 2" in message and char in message, message


@pytest.mark.parametrize("name", ["2007_000039.jpg", "2007_000039.png", "2007_000039.mat", "2007_000039.JPG"])
def test_file_names_instead_of_ids_are_refused(tmp_path, name):
    # "x.jpg" names no file (x.jpg.jpg), is rejected as missing, and then the SBD copy of a
    # VOC val id x would go to train: refuse the list instead.
    path = tmp_path / "val.txt"
    path.write_text(f"2007_000032\n{name}\n")
    with pytest.raises(sources.ListFileError, match="line 2") as err:
        sources.read_id_list(str(path))
    assert str(path) in str(err.value) and name in str(err.value)


def _val_id_also_in_sbd(root):
    """(val.txt, VOC val ids, one that SBD also annotates: the case train_aug subtracts)."""
    val_txt = voc_path(root, "ImageSets", "Segmentation", "val.txt")
    val = read_list(val_txt)
    sbd = set(read_list(sbd_path(root, "train.txt")) + read_list(sbd_path(root, "val.txt")))
    return val_txt, val, next(i for i in val if i in sbd)


def test_a_bom_on_val_txt_does_not_move_its_first_id_into_train(dataset_copy):
    val_txt, val, shared = _val_id_also_in_sbd(dataset_copy)
    ordered = [shared] + [i for i in val if i != shared]
    with open(val_txt, "wb") as f:  # as Windows Notepad saves "UTF-8 with BOM"
        f.write(("\ufeff" + "\r\n".join(ordered) + "\r\n").encode())
    plan = {i.image_id: (i.split, i.source) for i in sources.plan_items(dataset_copy, dataset_copy)}
    assert plan[shared] == (EVAL, VOC)
    assert sorted(i for i, (split, _) in plan.items() if split == EVAL) == sorted(val)
    assert not any(i.startswith("\ufeff") for i in plan)


@pytest.mark.parametrize("misspelt", ["{},", "{}.", "'{}'", "{}_", "{}-", "no-underscore"])
def test_a_val_id_spelt_unlike_its_sbd_copy_is_refused(dataset_copy, misspelt):
    # Whatever the misspelling: "x," in val.txt names no file, so it would be rejected as
    # missing while SBD's "x" went to train.
    val_txt, val, shared = _val_id_also_in_sbd(dataset_copy)
    spelt = shared.replace("_", "") if misspelt == "no-underscore" else misspelt.format(shared)
    with open(val_txt, "w") as f:
        f.write("".join(f"{spelt if i == shared else i}\n" for i in val))
    with pytest.raises(sources.ListFileError) as err:
        sources.plan_items(dataset_copy, dataset_copy)
    message = str(err.value)
    assert val_txt in message and repr(spelt) in message and repr(shared) in message, message
