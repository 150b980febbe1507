"""Where VOC and SBD keep their files, and which id goes to which split.

The split rule is the standard "train_aug" one (DeepLab, Model Garden): train is
VOC train ∪ SBD train ∪ SBD val minus every VOC val id (10,582 ids on the real data), eval is
VOC val (1,449). An id annotated by both sources is written once, with the VOC annotation,
which has the void band SBD lacks. No eval id may reach train: SBD train contains VOC val
images, so the subtraction is what keeps the benchmark honest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Iterable, Optional

import tensorflow as tf

from pipeline import features


class ListFileError(RuntimeError):
    """A split list cannot be read: fatal, since without it no split can be trusted."""


@dataclasses.dataclass(frozen=True)
class WorkItem:
    """One id to ingest: where its files are and where it goes."""

    image_id: str
    source: str  # features.SOURCE_VOC or features.SOURCE_SBD
    split: str  # features.TRAIN_SPLIT or features.EVAL_SPLIT
    image_path: str
    mask_path: str


@dataclasses.dataclass(frozen=True)
class SourceLists:
    """The four id lists the split rule reads (sorted, without duplicates)."""

    voc_train: tuple
    voc_val: tuple
    sbd_train: tuple = ()
    sbd_val: tuple = ()


def resolve_voc_root(root: str) -> str:
    """Accepts the extraction dir (holding VOCdevkit/), VOCdevkit/ itself, or VOC2012/."""
    for candidate in (os.path.join(root, "VOCdevkit", "VOC2012"), os.path.join(root, "VOC2012"), root):
        if tf.io.gfile.isdir(os.path.join(candidate, "ImageSets", "Segmentation")):
            return candidate
    raise ListFileError(
        f"{root!r} is not a VOC 2012 root: no ImageSets/Segmentation under it, "
        "VOCdevkit/VOC2012/ or VOC2012/ (extract VOCtrainval_11-May-2012.tar there)"
    )


def resolve_sbd_root(root: str) -> str:
    """Accepts the extraction dir (holding benchmark_RELEASE/), benchmark_RELEASE/, or dataset/."""
    candidates = (os.path.join(root, "benchmark_RELEASE", "dataset"), os.path.join(root, "dataset"), root)
    for candidate in candidates:
        if tf.io.gfile.isdir(os.path.join(candidate, "cls")):
            return candidate
    raise ListFileError(
        f"{root!r} is not an SBD root: no cls/ under it, benchmark_RELEASE/dataset/ or "
        "dataset/ (extract benchmark.tgz there)"
    )


def read_id_list(path: str) -> tuple:
    """Reads one id per line; blank lines are skipped, duplicates kept once."""
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            raw = f.read()
    except tf.errors.OpError as e:
        raise ListFileError(f"cannot read split list {path}: {e.message}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ListFileError(f"split list {path} is not text (byte {e.start} is not UTF-8)") from e
    ids = []
    for number, line in enumerate(text.splitlines(), start=1):
        image_id = line.strip()
        if not image_id:
            continue
        if len(image_id.split()) != 1 or "/" in image_id:
            raise ListFileError(f"split list {path} line {number}: {line!r} is not an image id")
        ids.append(image_id)
    return tuple(sorted(set(ids)))


def read_lists(voc_root: str, sbd_root: Optional[str]) -> SourceLists:
    """Reads the split lists of both sources (SBD's are empty without an SBD root)."""
    seg = os.path.join(voc_root, "ImageSets", "Segmentation")
    lists = SourceLists(
        voc_train=read_id_list(os.path.join(seg, "train.txt")),
        voc_val=read_id_list(os.path.join(seg, "val.txt")),
    )
    if sbd_root:
        lists = dataclasses.replace(
            lists,
            sbd_train=read_id_list(os.path.join(sbd_root, "train.txt")),
            sbd_val=read_id_list(os.path.join(sbd_root, "val.txt")),
        )
    return lists


def assign_splits(lists: SourceLists) -> dict:
    """Applies the train_aug rule: ``{id: (split, source)}``.

    Pure set logic, kept apart from file access so it can be checked exactly.
    """
    eval_ids = set(lists.voc_val)
    voc_train = set(lists.voc_train) - eval_ids
    sbd = (set(lists.sbd_train) | set(lists.sbd_val)) - eval_ids - voc_train
    plan = {i: (features.EVAL_SPLIT, features.SOURCE_VOC) for i in eval_ids}
    plan.update({i: (features.TRAIN_SPLIT, features.SOURCE_VOC) for i in voc_train})
    plan.update({i: (features.TRAIN_SPLIT, features.SOURCE_SBD) for i in sbd})
    return plan


def plan_items(voc_root: str, sbd_root: Optional[str] = None) -> list:
    """Lists every id to ingest with its files, in a stable order (eval first, then train)."""
    voc_root = resolve_voc_root(voc_root)
    sbd_root = resolve_sbd_root(sbd_root) if sbd_root else None
    assignment = assign_splits(read_lists(voc_root, sbd_root))
    items = []
    for image_id, (split, source) in assignment.items():
        if source == features.SOURCE_VOC:
            image = os.path.join(voc_root, "JPEGImages", f"{image_id}.jpg")
            mask = os.path.join(voc_root, "SegmentationClass", f"{image_id}.png")
        else:
            image = os.path.join(sbd_root, "img", f"{image_id}.jpg")
            mask = os.path.join(sbd_root, "cls", f"{image_id}.mat")
        items.append(WorkItem(image_id, source, split, image, mask))
    items.sort(key=lambda item: (item.split != features.EVAL_SPLIT, item.image_id))
    return items


def count_by_split(items: Iterable[WorkItem]) -> dict:
    counts = {split: 0 for split in features.SPLITS}
    for item in items:
        counts[item.split] += 1
    return counts


def fingerprint(voc_root: str, sbd_root: Optional[str] = None) -> str:
    """A digest of the split lists and the size and mtime of every file they name.

    TFX caches a component whose inputs and parameters are unchanged; VocExampleGen has no
    input artifacts, so its driver passes this digest as a parameter. Editing, adding or
    removing any listed file changes it and reruns ingestion; an unchanged tree is cached.
    Stat only, no reads: cheap even for the 12,031 files of VOC + SBD.
    """
    digest = hashlib.sha256()
    items = plan_items(voc_root, sbd_root)
    for item in items:
        digest.update(f"{item.image_id}|{item.split}|{item.source}".encode())
        for path in (item.image_path, item.mask_path):
            try:
                stat = tf.io.gfile.stat(path)
                digest.update(f"|{stat.length}|{stat.mtime_nsec}".encode())
            except tf.errors.NotFoundError:  # a missing file is part of the state
                digest.update(b"|missing")
    return f"ids:{len(items)},sha256:{digest.hexdigest()}"
