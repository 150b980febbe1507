"""Writes small datasets in the folder layouts of CIHP and Oxford-IIIT Pet (``make-dataset --format``).

Like ``synthetic_voc``, whose scenes they draw (in ``easy`` mode each class its own shape,
colour and texture, so the tiny model can learn them; in ``hard`` mode only combinations of
shared cues, with clutter and object-coloured backgrounds), these are the real layouts and
byte formats of datasets that cannot be downloaded here, as the shipped specs
(``datasets/specs/``) read them:

* ``cihp``: ``Images/*.jpg`` and ``Category_ids/*.png``, 8-bit grey PNGs of the 20 class ids
  (0 background, no ignored pixels), no split lists: the pipeline splits by a hash of the id.
  Ids are CIHP's 7-digit numbers, picked so that the hash split at the spec's
  ``eval_fraction`` gives ``eval_count`` ids to eval (with a dozen images a plain run of
  numbers could leave eval empty).
* ``oxford_pet``: ``images/*.jpg``, ``annotations/trimaps/*.png`` (8-bit grey: 1 pet,
  2 background, 3 a band a few pixels wide along the pet's outline) and the split lists
  ``annotations/trainval.txt`` / ``annotations/test.txt`` with Oxford's four columns
  ``<id> <class id> <species> <breed id>``.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from typing import Optional

import numpy as np
from PIL import Image

from core import dataset_spec, features
from datasets import synthetic_voc

CIHP = "cihp"
OXFORD_PET = "oxford_pet"
FORMATS = (CIHP, OXFORD_PET)

# Oxford-IIIT Pet's trimap values.
PET, BACKGROUND, BORDER = 1, 2, 3
# A few of Oxford-IIIT Pet's breeds: (name, class id, species 1 cat / 2 dog, breed id within the
# species), as its list files give them; cat breeds are capitalised, dog breeds are not.
BREEDS = (
    ("Abyssinian", 1, 1, 1),
    ("american_bulldog", 2, 2, 1),
    ("basset_hound", 4, 2, 3),
    ("beagle", 5, 2, 4),
    ("Bengal", 6, 1, 2),
)
# Oxford's test list holds half the images; here a quarter, so that a small dataset keeps most
# of its images for training.
PET_EVAL_SHARE = 0.25


@dataclasses.dataclass(frozen=True)
class FolderLayout:
    """The ids a folder dataset was written with, by the split the pipeline will give them."""

    train: tuple
    eval: tuple

    @property
    def all_ids(self) -> tuple:
        return tuple(sorted(self.train + self.eval))


def eval_count(num_images: int, eval_fraction: float) -> int:
    """How many of ``num_images`` ids the generator puts in eval: the fraction, at least one."""
    return max(1, int(round(eval_fraction * num_images)))


def cihp_layout(num_images: int, eval_fraction: float) -> FolderLayout:
    """CIHP-style ids (``0000000``, ``0000001``, ...), skipping those the hash split would put in
    a split already full, so that eval gets ``eval_count`` ids and train the rest."""
    eval_ids = eval_count(num_images, eval_fraction)
    wanted = {features.EVAL_SPLIT: eval_ids, features.TRAIN_SPLIT: num_images - eval_ids}
    picked = {split: [] for split in wanted}
    number = 0
    while any(len(picked[s]) < wanted[s] for s in picked):
        image_id = f"{number:07d}"
        split = features.EVAL_SPLIT if dataset_spec.in_eval(image_id, eval_fraction) else features.TRAIN_SPLIT
        if len(picked[split]) < wanted[split]:
            picked[split].append(image_id)
        number += 1
    return FolderLayout(train=tuple(picked[features.TRAIN_SPLIT]), eval=tuple(picked[features.EVAL_SPLIT]))


def pet_layout(num_images: int, seed: int) -> tuple:
    """``(FolderLayout, {id: breed row})``: Oxford-style ids (``<breed>_<number>``), a quarter
    of them (at least one) in the test list."""
    rng = np.random.default_rng([seed, 0])
    numbers = rng.choice(np.arange(1, max(250, 2 * num_images)), size=num_images, replace=False)
    breeds = rng.integers(len(BREEDS), size=num_images)
    rows = {f"{BREEDS[b][0]}_{n}": BREEDS[b] for n, b in zip(numbers, breeds, strict=True)}
    ids = sorted(rows)
    order = [ids[i] for i in rng.permutation(len(ids))]
    num_eval = eval_count(num_images, PET_EVAL_SHARE)
    layout = FolderLayout(train=tuple(sorted(order[num_eval:])), eval=tuple(sorted(order[:num_eval])))
    return layout, rows


def _save_grey_png(path: str, values: np.ndarray) -> None:
    buf = io.BytesIO()
    Image.fromarray(values.astype(np.uint8), "L").save(buf, format="PNG")
    with open(path, "wb") as f:
        f.write(buf.getvalue())


def _save_jpeg(path: str, image: np.ndarray) -> None:
    with open(path, "wb") as f:
        f.write(synthetic_voc.encode_jpeg(image))


def _write_cihp(job: tuple) -> None:
    image_id, index, seed, max_side, difficulty, num_classes, images_dir, masks_dir = job
    scene = synthetic_voc.draw(synthetic_voc.scene_rng(seed, index), max_side, num_classes, difficulty)
    _save_jpeg(os.path.join(images_dir, f"{image_id}.jpg"), scene.image)
    _save_grey_png(os.path.join(masks_dir, f"{image_id}.png"), scene.classes)


def trimap(scene: synthetic_voc.Scene) -> np.ndarray:
    """Oxford's trimap of a scene drawn with one foreground class: the pet, the background, and
    the outline band (the scene's void band) as the border."""
    values = np.where(scene.classes > 0, PET, BACKGROUND)
    return np.where(scene.void, BORDER, values).astype(np.uint8)


def _write_pet(job: tuple) -> None:
    image_id, index, seed, max_side, difficulty, images_dir, masks_dir = job
    scene = synthetic_voc.draw(synthetic_voc.scene_rng(seed, index), max_side, 2, difficulty)
    _save_jpeg(os.path.join(images_dir, f"{image_id}.jpg"), scene.image)
    _save_grey_png(os.path.join(masks_dir, f"{image_id}.png"), trimap(scene))


def _write_manifest(out: str, fmt: str, options: dict, layout) -> None:
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(
            {
                "generator": "deeplab-tfx make-dataset",
                "format": fmt,
                **options,
                **dataclasses.asdict(layout),
            },
            f,
            indent=1,
        )


def make_cihp(
    out: str,
    num_images: int,
    seed: int = 0,
    max_side: int = 500,
    workers: Optional[int] = None,
    difficulty: str = synthetic_voc.EASY,
) -> FolderLayout:
    """Writes a CIHP-format dataset under ``out`` (its ``data.root``) and returns its ids.

    ``difficulty``: ``easy`` or ``hard``, as in ``synthetic_voc.make_dataset``."""
    _check_count(num_images)
    synthetic_voc.check_difficulty(difficulty)
    spec = _shipped_spec(CIHP)
    layout = cihp_layout(num_images, spec.eval_fraction)
    dirs = _make_dirs(out, spec)
    jobs = [(i, n, seed, max_side, difficulty, spec.num_classes, *dirs) for n, i in enumerate(layout.all_ids)]
    synthetic_voc.run_jobs(_write_cihp, jobs, workers)
    _write_manifest(out, CIHP, _options(num_images, seed, max_side, difficulty), layout)
    return layout


def make_oxford_pet(
    out: str,
    num_images: int,
    seed: int = 0,
    max_side: int = 500,
    workers: Optional[int] = None,
    difficulty: str = synthetic_voc.EASY,
) -> FolderLayout:
    """Writes an Oxford-IIIT Pet-format dataset under ``out`` (its ``data.root``); returns its ids.

    ``difficulty``: ``easy`` or ``hard``, as in ``synthetic_voc.make_dataset``; in hard mode the
    pet is one of the shared-cue looks and clutter shares its colour, shape or texture."""
    _check_count(num_images)
    synthetic_voc.check_difficulty(difficulty)
    spec = _shipped_spec(OXFORD_PET)
    layout, rows = pet_layout(num_images, seed)
    dirs = _make_dirs(out, spec)
    jobs = [(i, n, seed, max_side, difficulty, *dirs) for n, i in enumerate(layout.all_ids)]
    synthetic_voc.run_jobs(_write_pet, jobs, workers)
    for path, ids in ((spec.train_list, layout.train), (spec.eval_list, layout.eval)):
        lines = [" ".join(str(v) for v in (i, *rows[i][1:])) for i in ids]
        synthetic_voc.write_list(os.path.join(out, path), lines)
    _write_manifest(out, OXFORD_PET, _options(num_images, seed, max_side, difficulty), layout)
    return layout


def _options(num_images: int, seed: int, max_side: int, difficulty: str) -> dict:
    """What the manifest records about how a dataset was made, besides its format and ids."""
    return {"num_images": num_images, "seed": seed, "max_side": max_side, "difficulty": difficulty}


def _shipped_spec(name: str):
    """The spec in ``datasets/specs/``: the folders, lists and classes the dataset is read with."""
    from core import config  # YAML

    return config.load_dataset_spec(name)


def _make_dirs(out: str, spec) -> tuple:
    dirs = tuple(os.path.join(out, d) for d in (spec.images_dir, spec.masks_dir))
    for d in dirs:
        os.makedirs(d, exist_ok=True)
    return dirs


def _check_count(num_images: int) -> None:
    if num_images < 2:
        raise ValueError(f"num_images must be at least 2, one for each split, got {num_images}")


MAKERS = {CIHP: make_cihp, OXFORD_PET: make_oxford_pet}
