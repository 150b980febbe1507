"""The train_aug split rule and the split-list readers, checked exactly."""

import os

import pytest

from components.voc_example_gen import sources
from pipeline import features

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
    before = sources.fingerprint(dataset_copy, dataset_copy)
    assert sources.fingerprint(dataset_copy, dataset_copy) == before
    item = sources.plan_items(dataset_copy, dataset_copy)[0]
    with open(item.mask_path, "ab") as f:
        f.write(b"\0")
    assert sources.fingerprint(dataset_copy, dataset_copy) != before
