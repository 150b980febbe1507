"""What several benchmarks need, made once and kept in a work directory.

Generating 2,000 VOC-sized images takes a minute and a half on two cores, and a transform
graph or an exported model half a minute each; ``make bench`` would spend a third of its
budget remaking them per script. Each thing is built under ``$DEEPLAB_BENCH_WORK`` (default
``benchmarks/.work``, git-ignored) and marked complete only when whole, so an interrupted
run rebuilds it rather than measuring half of it. Nothing here is timed.
"""

import contextlib
import os
import shutil

import numpy as np

from components.segmentation_example_gen import sources
from core import dataset_spec, features
from datasets import synthetic_voc

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


def dataset(num_images: int, max_side: int = 500, seed: int = 0, difficulty: str = synthetic_voc.EASY) -> str:
    """A generated VOC/SBD-format dataset (VOC-sized images by default) of the generator's ``difficulty``."""
    root = os.path.join(WORK, f"data_{num_images}_{max_side}px_seed{seed}{difficulty_suffix(difficulty)}")
    with building(root) as build:
        if build:
            synthetic_voc.make_dataset(root, num_images, seed=seed, max_side=max_side, difficulty=difficulty)
    return root


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
    num_images: int, image_size: int, max_side: int = 500, difficulty: str = synthetic_voc.EASY
) -> tuple:
    """``(raw Examples uri, TFTransformOutput)``: a generated dataset, ingested and analyzed."""
    from benchmarks import (
        transform_analysis as analysis,  # TF and TFT: only for the benchmarks that need them
    )

    out = os.path.join(
        WORK, f"analyzed_{num_images}_{max_side}px_at{image_size}{difficulty_suffix(difficulty)}"
    )
    with building(out) as build:
        if build:
            analysis.ingest_and_analyze(dataset(num_images, max_side, difficulty=difficulty), out, image_size)
    import tensorflow_transform as tft

    examples = os.path.join(out, "examples")
    return examples, tft.TFTransformOutput(analysis.transform_dir(examples))


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
