"""Where a dataset keeps its files, and which id goes to which split.

Two layouts (``DatasetSpec.layout``): VOC 2012 (+ SBD), planned by ``plan_items``, and
``folders`` (an images folder and a masks folder paired by file stem), planned by
``plan_folders``; ``plan`` picks by the spec. For VOC, the split rule is the standard
"train_aug" one (DeepLab, Model Garden): train is VOC train ∪ SBD train ∪ SBD val minus
every VOC val id (10,582 ids on the real data), eval is VOC val (1,449). An id annotated by
both sources is written once, with the VOC annotation, which has the void band SBD lacks. No
eval id may reach train: SBD train contains VOC val images, so the subtraction is what keeps
the benchmark honest.

A ``folders`` dataset is split by its lists where it has them (Oxford-IIIT Pet's
``trainval.txt`` / ``test.txt``), an id in both being refused, and otherwise by a hash of each
id (``dataset_spec.in_eval``): stable across runs and machines, and an id's split does not change when
other ids are added.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import unicodedata
from typing import Iterable, Optional

import tensorflow as tf

from core import dataset_spec, features, storage
from core.dataset_spec import DatasetSpec


class ListFileError(RuntimeError):
    """A split list cannot be read: fatal, since without it no split can be trusted."""


@dataclasses.dataclass(frozen=True)
class WorkItem:
    """One id to ingest: where its files are and where it goes."""

    image_id: str
    source: str  # a value of DatasetSpec.sources(): voc or sbd, or the folders dataset's name
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


# Ids are file-name stems: "x.jpg" in a list would look for x.jpg.jpg (and reject it as missing).
_FILE_SUFFIXES = (".jpg", ".jpeg", ".png", ".mat")


def read_id_list(path: str, first_word: bool = False) -> tuple:
    """Reads one id per line; blank lines are skipped, duplicates kept once. With
    ``first_word``, a line's id is its first whitespace-separated word (Oxford-IIIT Pet's
    lists: ``<id> <class> <species> <breed>``); VOC's lines are the id alone.

    Lists are read as editors save them: UTF-8 with or without a byte-order mark, LF or CRLF
    line ends, whitespace around an id. Any other character that cannot be part of an id, and
    that no one sees on screen (zero-width space, a BOM inside the file, direction marks, soft
    hyphen, control characters), fails with the file and line. Reading such an id as written
    would not just reject it as missing: a VOC val id spelled differently from its SBD copy
    would no longer be subtracted from train, and the benchmark would train on its eval data.
    """
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            raw = f.read()
    except tf.errors.OpError as e:
        raise ListFileError(f"cannot read split list {path}: {e.message}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ListFileError(f"split list {path} is not text (byte {e.start} is not UTF-8)") from e
    ids = []
    for number, line in enumerate(text.split("\n"), start=1):
        image_id = line.strip()  # also the \r of CRLF
        if not image_id:
            continue
        if first_word:
            image_id = image_id.split()[0]
        where = f"split list {path} line {number}: {line!r}"
        hidden = next((c for c in image_id if unicodedata.category(c)[0] in "CZ"), None)
        if hidden is not None:
            name = unicodedata.name(hidden, "a control character")
            raise ListFileError(
                f"{where} is not an image id: it holds U+{ord(hidden):04X} ({name}); "
                "remove it (an editor may not show it)"
            )
        if "/" in image_id or "\\" in image_id:
            raise ListFileError(f"{where} is not an image id: ids are file names without a directory")
        if image_id.lower().endswith(_FILE_SUFFIXES):
            raise ListFileError(
                f"{where} is a file name: list the image id ({os.path.splitext(image_id)[0]}), as VOC does"
            )
        ids.append(image_id)
    return tuple(sorted(set(ids)))


def list_paths(voc_root: str, sbd_root: Optional[str]) -> dict:
    """``{SourceLists field: path}`` of the split lists under resolved roots (SBD's with an SBD root)."""
    seg = os.path.join(voc_root, "ImageSets", "Segmentation")
    paths = {"voc_train": os.path.join(seg, "train.txt"), "voc_val": os.path.join(seg, "val.txt")}
    if sbd_root:
        paths.update(sbd_train=os.path.join(sbd_root, "train.txt"), sbd_val=os.path.join(sbd_root, "val.txt"))
    return paths


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


def _spelling(image_id: str) -> str:
    """An id without case and punctuation: two ids alike here are one image spelled two ways."""
    return "".join(c for c in image_id.casefold() if c.isalnum())


def check_val_ids_spelled_alike(lists: SourceLists, paths: dict) -> None:
    """Refuses a VOC val id that another list spells differently (``2007_000032,``, ``2007_000032.``).

    Train is the other lists minus the VOC val ids *as spelled*: a misspelled val id would be
    rejected as missing while the other list's copy of the image went to train. Caught here,
    whatever the misspelling, before any work.
    """
    val = {_spelling(image_id): image_id for image_id in lists.voc_val}
    for name in ("voc_train", "sbd_train", "sbd_val"):
        for image_id in getattr(lists, name):
            twin = val.get(_spelling(image_id))
            if twin is not None and twin != image_id:
                raise ListFileError(
                    f"{paths['voc_val']} lists {twin!r} and {paths[name]} lists {image_id!r}: one image "
                    "spelled two ways would reach train as well as eval; spell it alike in both"
                )


def check_no_split_is_empty(assignment: dict, lists: SourceLists, paths: dict) -> None:
    """Refuses a plan with an empty split, naming the lists responsible.

    An empty eval split is accepted by every component up to the Evaluator, which fails after
    the whole training: fail here instead, before any work.
    """
    planned = {split for split, _ in assignment.values()}
    if features.EVAL_SPLIT not in planned:
        raise ListFileError(f"split {features.EVAL_SPLIT} is empty: {paths['voc_val']} lists no ids")
    if features.TRAIN_SPLIT not in planned:
        names = [name for name in ("voc_train", "sbd_train", "sbd_val") if name in paths]
        why = (
            f"every id they list is in VOC val ({paths['voc_val']}), and eval ids never reach train"
            if any(getattr(lists, name) for name in names)
            else "they list no ids"
        )
        raise ListFileError(
            f"split {features.TRAIN_SPLIT} is empty: {', '.join(paths[name] for name in names)}: {why}"
        )


def plan_items(voc_root: str, sbd_root: Optional[str] = None) -> list:
    """Lists every id to ingest with its files, in a stable order (eval first, then train).

    Raises ``ListFileError`` when a list cannot be read, spells a VOC val id unlike another list
    does, or leaves a split empty.
    """
    voc_root = resolve_voc_root(voc_root)
    sbd_root = resolve_sbd_root(sbd_root) if sbd_root else None
    paths = list_paths(voc_root, sbd_root)
    lists = SourceLists(**{name: read_id_list(path) for name, path in paths.items()})
    check_val_ids_spelled_alike(lists, paths)
    assignment = assign_splits(lists)
    check_no_split_is_empty(assignment, lists, paths)
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


# ---------------------------------------------------------------------------------------------
# The ``folders`` layout

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MASK_SUFFIXES = (".png",)
# Unread files a summary or warning names; the count says how many there are in all.
SHOWN_NAMES = 5
# The keys of ``Unread.to_json()``: how many files, and the first ``SHOWN_NAMES`` of their names.
UNREAD_COUNT = "count"
UNREAD_NAMES = "names"


@dataclasses.dataclass(frozen=True)
class Unread:
    """The files of one folder of a ``folders`` dataset that ingestion does not read: their
    suffix is none of those the folder's ``what`` (image or mask) is read from."""

    directory: str
    what: str
    suffixes: tuple
    names: tuple  # sorted

    def to_json(self) -> dict:
        return {UNREAD_COUNT: len(self.names), UNREAD_NAMES: list(self.names[:SHOWN_NAMES])}

    def warning(self) -> str:
        """What a person reads: how many, which (the first few), and what to do."""
        shown = ", ".join(self.names[:SHOWN_NAMES])
        more = f" and {len(self.names) - SHOWN_NAMES} more" if len(self.names) > SHOWN_NAMES else ""
        if len(self.names) == 1:
            article = "an" if self.what[0] in "aeiou" else "a"
            which = f"1 file in {self.directory} is not read: its suffix"
            fix = f"Convert it to one of those formats if it is {article} {self.what}, or move it"
        else:
            which = f"{len(self.names)} files in {self.directory} are not read: their suffix"
            fix = f"Convert the {self.what}s among them to one of those formats, or move them"
        return (
            f"{which} is none of {', '.join(self.suffixes)}, which {self.what}s are read from "
            f"({shown}{more}). {fix} out of the folder."
        )


def _files_by_stem(directory: str, suffixes: tuple, what: str) -> tuple:
    """``({stem: path}, others)``: the files in ``directory`` with one of ``suffixes`` (any
    case), and the sorted names of the other entries there, which nothing reads.

    Two files of one stem (``a.jpg`` and ``a.png``) are refused naming both: the pairing by
    stem could not say which one the mask belongs to.
    """
    if not tf.io.gfile.isdir(directory):
        raise ListFileError(f"{what} folder {directory} does not exist (or is not a directory)")
    found, others = {}, []
    for entry in sorted(tf.io.gfile.listdir(directory)):
        name = entry.rstrip("/")  # object stores list a folder as "name/"
        stem, suffix = os.path.splitext(name)
        if suffix.lower() not in suffixes:
            others.append(entry)
            continue
        if stem in found:
            raise ListFileError(
                f"{os.path.basename(found[stem])} and {name} in {directory} have one stem: {what}s pair "
                f"by file stem, so keep one of them"
            )
        found[stem] = os.path.join(directory, name)
    return found, others


def unread_files(spec: DatasetSpec, data_root: Optional[str]) -> list:
    """``[Unread]``, one per folder of a ``folders`` dataset that holds files ingestion does not
    read, so that they are named rather than skipped without a word (a ``.tif`` image, a
    ``.jpg`` mask). Hidden files (``.DS_Store``) and folders are not counted: no dataset means
    them as data. VOC's layout reads its files by the ids of its lists and lists no folder: [].

    Costs one more listing per folder (``plan_folders`` lists them too) and nothing per data
    file. Per skipped entry (``_is_folder``): a stat on a local disk; on an object store or a
    mount of one, a metadata call only for a name without a suffix, none for a ``.tif``.
    """
    if spec.layout != dataset_spec.FOLDERS or not data_root:
        return []
    folders = {os.path.join(data_root, spec.images_dir): ("image", IMAGE_SUFFIXES)}
    folders.setdefault(os.path.join(data_root, spec.masks_dir), ("mask", MASK_SUFFIXES))
    found = []
    for directory, (what, suffixes) in folders.items():
        _, others = _files_by_stem(directory, suffixes, what)
        names = tuple(
            entry for entry in others if not entry.startswith(".") and not _is_folder(directory, entry)
        )
        if names:
            found.append(Unread(directory, what, suffixes, names))
    return found


def _is_folder(directory: str, entry: str) -> bool:
    """Whether ``entry`` of ``tf.io.gfile.listdir(directory)`` is a folder, asking storage only
    where the listing cannot say.

    Object stores list a folder as ``name/`` (``gs://``), so there a metadata call per entry, one
    round trip each, thousands in a folder of ``.tif`` images, would say nothing new. A local
    disk lists folders without the slash and answers ``isdir`` with a stat. Elsewhere (``ram://``,
    which lists folders without it, a gcsfuse mount under ``/gcs/``) only an entry without a
    suffix is asked about, as folders have none in practice: a folder named ``v1.0`` there is
    counted as an unread file (a warning, nothing fails).
    """
    if entry.endswith("/"):
        return True
    if not storage.is_local(directory) and os.path.splitext(entry)[1]:
        return False
    return tf.io.gfile.isdir(os.path.join(directory, entry))


def _folder_lists(spec: DatasetSpec, data_root: str) -> Optional[dict]:
    """``{split: ids}`` from the spec's split lists, None where it has none (the hash split)."""
    if not spec.train_list and not spec.eval_list:
        return None
    paths = {features.TRAIN_SPLIT: spec.train_list, features.EVAL_SPLIT: spec.eval_list}
    if not all(paths.values()):
        missing = "train_list" if not spec.train_list else "eval_list"
        raise ListFileError(
            f"dataset {spec.name}: {missing} is empty but the other list is given; give both lists, "
            "or neither for the split by hash of the id"
        )
    paths = {split: os.path.join(data_root, path) for split, path in paths.items()}
    lists = {split: read_id_list(path, first_word=True) for split, path in paths.items()}
    both = sorted(set(lists[features.TRAIN_SPLIT]) & set(lists[features.EVAL_SPLIT]))
    if both:
        raise ListFileError(
            f"{len(both)} ids are listed in both {paths[features.TRAIN_SPLIT]} and "
            f"{paths[features.EVAL_SPLIT]} ({', '.join(both[:5])}): an eval id must never reach "
            "train; list each id in one of them"
        )
    for split, ids in lists.items():
        if not ids:
            raise ListFileError(f"split {split} is empty: {paths[split]} lists no ids")
    return lists


def _hash_split(spec: DatasetSpec, images: dict, images_dir: str) -> dict:
    """``{split: ids}`` of every image stem by ``in_eval``; refuses a split left empty."""
    lists = {split: [] for split in features.SPLITS}
    for image_id in sorted(images):
        split = (
            features.EVAL_SPLIT
            if dataset_spec.in_eval(image_id, spec.eval_fraction)
            else features.TRAIN_SPLIT
        )
        lists[split].append(image_id)
    for split, ids in lists.items():
        if not ids:
            raise ListFileError(
                f"split {split} is empty: of the {len(images)} images in {images_dir}, none falls in it "
                f"by the hash of its id at eval_fraction={spec.eval_fraction}; change eval_fraction or "
                "give the dataset split lists (train_list, eval_list)"
            )
    return lists


def plan_folders(spec: DatasetSpec, data_root: str) -> list:
    """Lists every id of a ``folders`` dataset with its files, eval first, then train, by id.

    Images (``IMAGE_SUFFIXES``) in ``<data_root>/<images_dir>`` pair with masks (``.png``) in
    ``<data_root>/<masks_dir>`` by file stem. The ids are the split lists' where the spec has
    them, else every image's stem (``dataset_spec.in_eval`` splits them). An image without a mask, or a
    listed id without an image, is planned all the same and rejected as a missing file by the
    worker, so that the dead letter names it; files of other suffixes are ``unread_files``.
    Raises ``ListFileError`` for a missing folder, an unreadable list, an id in both lists, two
    files of one stem, or an empty split.
    """
    images_dir = os.path.join(data_root, spec.images_dir)
    masks_dir = os.path.join(data_root, spec.masks_dir)
    images, _ = _files_by_stem(images_dir, IMAGE_SUFFIXES, "image")
    masks, _ = _files_by_stem(masks_dir, MASK_SUFFIXES, "mask")
    lists = _folder_lists(spec, data_root) or _hash_split(spec, images, images_dir)
    source = spec.sources()[0]
    items = []
    for split, ids in lists.items():
        for image_id in ids:
            image = images.get(image_id, os.path.join(images_dir, f"{image_id}{IMAGE_SUFFIXES[0]}"))
            mask = masks.get(image_id, os.path.join(masks_dir, f"{image_id}{MASK_SUFFIXES[0]}"))
            items.append(WorkItem(image_id, source, split, image, mask))
    items.sort(key=lambda item: (item.split != features.EVAL_SPLIT, item.image_id))
    return items


def plan(
    spec: DatasetSpec,
    voc_root: Optional[str] = None,
    sbd_root: Optional[str] = None,
    data_root: Optional[str] = None,
) -> list:
    """The work items of the dataset ``spec`` describes: its layout decides which roots count."""
    if spec.layout == dataset_spec.FOLDERS:
        if not data_root:
            raise ListFileError(f"dataset {spec.name} (layout folders) needs its root (data.root)")
        return plan_folders(spec, data_root)
    if not voc_root:
        raise ListFileError(f"dataset {spec.name} (layout voc) needs a VOC root (data.voc_root)")
    return plan_items(voc_root, sbd_root)


def count_by_split(items: Iterable[WorkItem]) -> dict:
    counts = {split: 0 for split in features.SPLITS}
    for item in items:
        counts[item.split] += 1
    return counts


def fingerprint(
    voc_root: Optional[str],
    sbd_root: Optional[str],
    spec: DatasetSpec,
    data_root: Optional[str] = None,
) -> str:
    """A digest of the planned ids and the size and mtime of every file they name.

    TFX caches a component whose inputs and parameters are unchanged; SegmentationExampleGen has no
    input artifacts, so its driver passes this digest as a parameter. Editing, adding or
    removing any listed file changes it and reruns ingestion; an unchanged tree is cached.
    Stat only, no reads: cheap even for the 12,031 files of VOC + SBD. A folders dataset's
    digest also covers its file names (an image may be replaced by one of another suffix);
    VOC's stays what it was, so existing caches stay valid.
    """
    digest = hashlib.sha256()
    items = plan(spec, voc_root, sbd_root, data_root)
    names = spec.layout == dataset_spec.FOLDERS
    for item in items:
        digest.update(f"{item.image_id}|{item.split}|{item.source}".encode())
        if names:
            digest.update(f"|{item.image_path}|{item.mask_path}".encode())
        for path in (item.image_path, item.mask_path):
            try:
                stat = tf.io.gfile.stat(path)
                digest.update(f"|{stat.length}|{stat.mtime_nsec}".encode())
            except tf.errors.NotFoundError:  # a missing file is part of the state
                digest.update(b"|missing")
    return f"ids:{len(items)},sha256:{digest.hexdigest()}"
