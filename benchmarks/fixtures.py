"""What several benchmarks need, made once and kept in a work directory.

Generating 2,000 VOC-sized images takes a minute and a half on two cores, and a transform
graph or an exported model half a minute each; ``make bench`` would spend a third of its
budget remaking them per script. Each thing is built under ``$DEEPLAB_BENCH_WORK`` (default
``benchmarks/.work``, git-ignored) and marked complete only when whole, so an interrupted
run rebuilds it rather than measuring half of it. Nothing here is timed.
"""

import contextlib
import hashlib
import os
import shutil
from typing import Optional

import numpy as np

from components.segmentation_example_gen import sources
from core import dataset_spec, features
from datasets import synthetic_folders, synthetic_voc

HERE = os.path.dirname(os.path.abspath(__file__))
WORK = os.environ.get("DEEPLAB_BENCH_WORK", os.path.join(HERE, ".work"))
_DONE = ".complete"


@contextlib.contextmanager
def building(path: str):
    """Yields whether ``path`` must be built; a build that raises leaves nothing behind."""
    if os.path.exists(os.path.join(path, _DONE)):
        yield False
        return
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    try:
        yield True
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    open(os.path.join(path, _DONE), "w").close()


def difficulty_suffix(difficulty: str) -> str:
    """What a directory name adds for the generator's ``difficulty``: nothing for easy, so the
    caches made before there were difficulties stay valid."""
    return "" if difficulty == synthetic_voc.EASY else f"_{synthetic_voc.check_difficulty(difficulty)}"


def _suffix(difficulty: str, fmt: str) -> str:
    """What a generated dataset's directory names add for its difficulty and format (nothing for
    easy VOC, so the caches made before either existed stay valid)."""
    return difficulty_suffix(difficulty) + ("" if fmt == dataset_spec.VOC else f"_{fmt}")


def dataset(
    num_images: int,
    max_side: int = 500,
    seed: int = 0,
    difficulty: str = synthetic_voc.EASY,
    fmt: str = dataset_spec.VOC,
) -> str:
    """A generated dataset (VOC-sized images by default) of the generator's ``difficulty``, in
    VOC/SBD format or one of ``synthetic_folders.FORMATS`` (``fmt``)."""
    root = os.path.join(WORK, f"data_{num_images}_{max_side}px_seed{seed}{_suffix(difficulty, fmt)}")
    with building(root) as build:
        if build:
            make = synthetic_voc.make_dataset if fmt == dataset_spec.VOC else synthetic_folders.MAKERS[fmt]
            make(root, num_images, seed=seed, max_side=max_side, difficulty=difficulty)
    return root


def spec_of(fmt: str) -> dataset_spec.DatasetSpec:
    """The spec a generated dataset of format ``fmt`` is read with (VOC's, or the shipped one)."""
    from core import config as config_lib  # YAML

    return dataset_spec.VOC_SPEC if fmt == dataset_spec.VOC else config_lib.load_dataset_spec(fmt)


def subset(root: str, num_ids: int, seed: int = 0) -> str:
    """A dataset root listing ``num_ids`` of ``root``'s ids, with the same splits and sources.

    The image and mask directories are symlinks, so subsets cost no disk and are read from the
    same page cache; the subsets of one root are nested (250 of them are in the 500).
    """
    items = sources.plan_items(root, root)
    if num_ids > len(items):
        raise ValueError(f"{root} lists {len(items)} ids, fewer than {num_ids}")
    chosen = [items[i] for i in np.random.default_rng(seed).permutation(len(items))[:num_ids]]
    out = os.path.join(WORK, f"{os.path.basename(root)}_subset{num_ids}")
    with building(out) as build:
        if not build:
            return out
        voc, sbd = synthetic_voc.voc_dir(out), synthetic_voc.sbd_dir(out)
        os.makedirs(os.path.join(voc, "ImageSets", "Segmentation"))
        os.makedirs(sbd)
        for name in ("JPEGImages", "SegmentationClass"):
            os.symlink(os.path.join(synthetic_voc.voc_dir(root), name), os.path.join(voc, name))
        for name in ("img", "cls"):
            os.symlink(os.path.join(synthetic_voc.sbd_dir(root), name), os.path.join(sbd, name))

        def ids(source, split):
            return [i.image_id for i in chosen if i.source == source and i.split == split]

        voc_train, voc_val = (
            ids(features.SOURCE_VOC, features.TRAIN_SPLIT),
            ids(features.SOURCE_VOC, features.EVAL_SPLIT),
        )
        lists = {
            os.path.join(voc, "ImageSets", "Segmentation", "train.txt"): voc_train,
            os.path.join(voc, "ImageSets", "Segmentation", "val.txt"): voc_val,
            os.path.join(voc, "ImageSets", "Segmentation", "trainval.txt"): voc_train + voc_val,
            os.path.join(sbd, "train.txt"): ids(features.SOURCE_SBD, features.TRAIN_SPLIT),
            os.path.join(sbd, "val.txt"): [],
        }
        for path, listed in lists.items():
            with open(path, "w") as f:
                f.write("".join(f"{i}\n" for i in sorted(listed)))
    return out


def analyzed(
    num_images: int,
    image_size: int,
    max_side: int = 500,
    difficulty: str = synthetic_voc.EASY,
    fmt: str = dataset_spec.VOC,
) -> tuple:
    """``(raw Examples uri, TFTransformOutput)``: a generated dataset, ingested and analyzed."""
    out = os.path.join(WORK, f"analyzed_{num_images}_{max_side}px_at{image_size}{_suffix(difficulty, fmt)}")
    root = dataset(num_images, max_side, difficulty=difficulty, fmt=fmt)
    return analyzed_root(root, spec_of(fmt), image_size, out=out)


def analyzed_root(
    root: str, spec: dataset_spec.DatasetSpec, image_size: int, sbd_root: Optional[str] = None, out: str = ""
) -> tuple:
    """``(raw Examples uri, TFTransformOutput)`` of any dataset root read with ``spec`` (a user's
    VOC-format or spec-described data), ingested and analyzed once into ``out`` (by default a
    directory named for the root and ``content_key``: an edited spec or file builds anew)."""
    from benchmarks import (
        transform_analysis as analysis,  # TF and TFT: only for the benchmarks that need them
    )

    if not out:
        name = os.path.basename(os.path.normpath(root))
        out = os.path.join(WORK, f"analyzed_{name}_{content_key(root, spec, sbd_root)}_at{image_size}")
    with building(out) as build:
        if build:
            analysis.ingest_and_analyze(root, out, image_size, spec, sbd_root)
    import tensorflow_transform as tft

    examples = os.path.join(out, "examples")
    return examples, tft.TFTransformOutput(analysis.transform_dir(examples))


def content_key(root: str, spec: dataset_spec.DatasetSpec, sbd_root: Optional[str] = None) -> str:
    """12 hex digits of the spec and of ingestion's fingerprint of the files it would read (ids,
    sizes, mtimes): what a cache of a user's root is named by, so that fixing the spec (a
    ``values`` map) or a file is never answered from the cache of the old one."""
    from benchmarks import transform_analysis as analysis

    voc_root, sbd, data_root = analysis.roots(root, spec, sbd_root)
    fingerprint = sources.fingerprint(voc_root, sbd, spec, data_root)
    return hashlib.sha256(f"{spec.to_json()}|{fingerprint}".encode()).hexdigest()[:12]


def served_model(config_name: str = "tiny", image_size: int = 128) -> str:
    """A model base path holding version 1: the config's model, freshly initialised and exported.

    Weights do not change the time a forward pass takes, so serving and evaluation timings of
    this model are those of a trained one of the same config, without training it here.
    """
    from core import config as config_lib
    from trainer import export, training

    root = os.path.join(WORK, f"serving_{config_name}_{image_size}")
    base = os.path.join(root, "deeplab")
    with building(root) as build:
        if build:
            _, tft_output = analyzed(60, image_size)
            net = training.build_model(
                config_lib.load_config(config_name).trainer,
                image_size,
                replicas=1,
                images_normalized=False,
                num_classes=dataset_spec.VOC_SPEC.num_classes,
            )
            export.export(net, tft_output, os.path.join(base, "1"), dataset_spec.VOC_SPEC)
    return base
