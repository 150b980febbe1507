"""Writes a small dataset in the exact on-disk formats of Pascal VOC 2012 and SBD.

The real archives cannot be downloaded on our build machines, so tests and the demo run the
real loaders on data that has the real layout, byte formats and id relations:

* ``VOCdevkit/VOC2012``: ``JPEGImages/*.jpg``, ``SegmentationClass/*.png`` and
  ``SegmentationObject/*.png`` (palette PNGs in the VOC colour map, 255 "void" bands on object
  borders), ``Annotations/*.xml`` and ``ImageSets/Segmentation/{train,val,trainval}.txt``.
* ``benchmark_RELEASE/dataset``: ``img/*.jpg``, ``cls/*.mat`` (MATLAB struct ``GTcls`` with
  ``Segmentation``, ``Boundaries``, ``CategoriesPresent``), ``inst/*.mat`` (``GTinst``) and
  ``{train,val}.txt``; SBD masks have no void band, as in the real release.

Ids overlap as in the real data: most VOC ids are also in SBD, some VOC val ids are in SBD
*train* (which is why train_aug must subtract VOC val), and each source has ids of its own.

Two difficulties (``DIFFICULTIES``). In ``easy`` (the default, which the demo and the tests
use) every class has its own colour, shape and texture, so a small model can learn them. In
``hard`` no single cue names a class: colours, shapes and textures are each shared by several
classes, and only their combination tells classes apart (``hard_class_styles``); backgrounds are
large regions painted in the objects' colours, clutter objects whose combination is no class's
are labelled background, objects range from small to large, overlap and repeat, and each one
is a little brighter or darker than the next. Images are VOC-sized (about 500x375, both
orientations) unless ``max_side`` scales them down.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import io
import json
import logging
import os
import sys
import xml.etree.ElementTree as ET
from typing import Optional, Sequence

import numpy as np
import scipy.io
import scipy.ndimage
import scipy.sparse
from PIL import Image, ImageDraw

from core import dataset_spec, features
from transform import palette

VOC_CLASSES = dataset_spec.VOC_SPEC.num_classes
VOID = features.IGNORE_LABEL

# (width, height) of typical VOC images; portrait and landscape.
_VOC_SIZES = ((500, 375), (500, 333), (500, 400), (500, 281), (375, 500), (333, 500), (400, 500))
_SHAPES = (
    "ellipse",
    "rectangle",
    "triangle",
    "diamond",
    "pentagon",
    "hexagon",
    "star",
    "cross",
    "ring",
    "trapezoid",
)
_TEXTURES = ("solid", "hstripes", "vstripes", "checker", "dots")
_YEARS = (2007, 2008, 2009, 2010, 2011)


@dataclasses.dataclass(frozen=True)
class ClassStyle:
    """How objects of one class look: the cue a model learns."""

    shape: str
    color: tuple
    texture: str


@functools.cache
def class_styles(num_classes: int) -> dict:
    """``{class id: ClassStyle}`` of classes 1 to ``num_classes - 1`` (0 is the background)."""
    styles = {}
    for c in range(1, num_classes):
        # Hues spread around the colour wheel, alternating light and dark, so that no two
        # classes share colour, shape and texture at once.
        hue = (c - 1) / (num_classes - 1)
        value = 0.95 if c % 2 else 0.6
        rgb = _hsv_to_rgb(hue, 0.85, value)
        styles[c] = ClassStyle(
            shape=_SHAPES[(c - 1) % len(_SHAPES)],
            color=rgb,
            texture=_TEXTURES[(c - 1) % len(_TEXTURES)],
        )
    return styles


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple:
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    r, g, b = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return (int(r * 255), int(g * 255), int(b * 255))


@dataclasses.dataclass(frozen=True)
class Layout:
    """Which ids exist in which source and split: the relations train_aug depends on."""

    voc_train: tuple
    voc_val: tuple
    sbd_train: tuple
    sbd_val: tuple

    @property
    def voc_ids(self) -> tuple:
        return tuple(sorted(set(self.voc_train) | set(self.voc_val)))

    @property
    def sbd_ids(self) -> tuple:
        return tuple(sorted(set(self.sbd_train) | set(self.sbd_val)))

    @property
    def all_ids(self) -> tuple:
        return tuple(sorted(set(self.voc_ids) | set(self.sbd_ids)))


def make_layout(num_images: int, seed: int) -> Layout:
    """Assigns ``num_images`` ids to VOC/SBD splits with the real data's kinds of overlap.

    About 30% of ids are VOC segmentation ids (half train, half val, like 1,464/1,449); SBD
    holds every other id plus most VOC ids, split 75/25 like 8,498/2,857. Small datasets still
    get each case the split rule must handle: a VOC val id in SBD train, one in SBD val, a VOC
    train id also in SBD (VOC wins) and a VOC-only id.
    """
    if num_images < 8:
        raise ValueError(f"num_images must be at least 8 to cover every overlap case, got {num_images}")
    rng = np.random.default_rng([seed, 0])
    numbers = rng.choice(np.arange(1, 10_000), size=num_images, replace=False)
    years = rng.choice(_YEARS, size=num_images)
    ids = sorted(f"{y}_{n:06d}" for y, n in zip(years, numbers, strict=False))
    order = [ids[i] for i in rng.permutation(num_images)]

    num_voc = max(4, int(round(0.3 * num_images)))
    voc = order[:num_voc]
    voc_train, voc_val = voc[: num_voc // 2], voc[num_voc // 2 :]
    rest = order[num_voc:]

    # Guaranteed overlap cases first, then the rest at random.
    sbd_train = [voc_val[0], voc_train[0]]
    sbd_val = [voc_val[1]]
    voc_only = {voc_train[-1]}
    for image_id in voc_train[1:-1] + voc_val[2:]:
        if rng.random() < 0.7:
            (sbd_train if rng.random() < 0.75 else sbd_val).append(image_id)
    for image_id in rest:
        (sbd_train if rng.random() < 0.75 else sbd_val).append(image_id)
    assert not voc_only & set(sbd_train + sbd_val)
    return Layout(
        voc_train=tuple(sorted(voc_train)),
        voc_val=tuple(sorted(voc_val)),
        sbd_train=tuple(sorted(sbd_train)),
        sbd_val=tuple(sorted(sbd_val)),
    )


# ---------------------------------------------------------------------------------------------
# Drawing one scene


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list:
    """Vertices of a regular-ish polygon for the shapes drawn as polygons."""
    if shape == "triangle":
        radii, n = [r], 3
    elif shape == "diamond":
        radii, n = [r, 0.6 * r], 4
    elif shape == "pentagon":
        radii, n = [r], 5
    elif shape == "hexagon":
        radii, n = [r], 6
    elif shape == "star":
        radii, n = [r, 0.45 * r], 10
    elif shape == "trapezoid":
        return [
            (cx - r, cy + 0.6 * r),
            (cx + r, cy + 0.6 * r),
            (cx + 0.5 * r, cy - 0.6 * r),
            (cx - 0.5 * r, cy - 0.6 * r),
        ]
    else:
        raise ValueError(shape)
    points = []
    for k in range(n):
        a = angle + 2 * np.pi * k / n
        rk = radii[k % len(radii)]
        points.append((cx + rk * np.cos(a), cy + rk * np.sin(a)))
    return points


def _object_mask(shape: str, size: tuple, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    width, height = size
    canvas = Image.new("L", size, 0)
    draw = ImageDraw.Draw(canvas)
    box = (cx - r, cy - 0.75 * r, cx + r, cy + 0.75 * r)
    if shape == "ellipse":
        draw.ellipse(box, fill=1)
    elif shape == "rectangle":
        draw.rectangle((cx - r, cy - 0.6 * r, cx + r, cy + 0.6 * r), fill=1)
    elif shape == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=1)
        draw.ellipse((cx - 0.5 * r, cy - 0.5 * r, cx + 0.5 * r, cy + 0.5 * r), fill=0)
    elif shape == "cross":
        t = 0.35 * r
        draw.rectangle((cx - r, cy - t, cx + r, cy + t), fill=1)
        draw.rectangle((cx - t, cy - r, cx + t, cy + r), fill=1)
    else:
        draw.polygon(_polygon(shape, cx, cy, r, angle), fill=1)
    return np.asarray(canvas, dtype=bool)


def _texture(kind: str, height: int, width: int, period: int) -> np.ndarray:
    """A [H, W] brightness factor in [0.7, 1.0] that gives a class its texture."""
    yy, xx = np.mgrid[0:height, 0:width]
    if kind == "solid":
        pattern = np.ones((height, width))
    elif kind == "hstripes":
        pattern = (yy // period) % 2
    elif kind == "vstripes":
        pattern = (xx // period) % 2
    elif kind == "checker":
        pattern = ((yy // period) + (xx // period)) % 2
    elif kind == "dots":
        pattern = ((yy % period) < period // 2) & ((xx % period) < period // 2)
    else:
        raise ValueError(kind)
    return 0.7 + 0.3 * pattern


@dataclasses.dataclass
class Scene:
    """One image with its annotations, before it is written in either source's format."""

    image: np.ndarray  # [H, W, 3] uint8
    classes: np.ndarray  # [H, W] uint8 class ids, no void
    instances: np.ndarray  # [H, W] uint8 instance ids (0 = background)
    instance_classes: list  # class id of instance k + 1
    void: np.ndarray  # [H, W] bool: the VOC void band on object borders
    clutter: np.ndarray  # [H, W] bool: visible clutter objects, labelled background (hard mode)


def draw_scene(rng: np.random.Generator, max_side: int, num_classes: int) -> Scene:
    """Draws 1-3 (rarely 4) textured objects of random classes (1 to ``num_classes - 1``, each
    in its ``class_styles`` look) on a noisy background."""
    styles = class_styles(num_classes)
    width, height = _image_size(rng, max_side)
    scale = max_side / 500
    period = max(2, int(round(8 * scale)))

    classes = np.zeros((height, width), np.uint8)
    instances = np.zeros((height, width), np.uint8)
    instance_classes = []
    num_objects = int(rng.choice([1, 2, 3, 4], p=[0.35, 0.35, 0.22, 0.08]))
    side = min(width, height)
    for _ in range(num_objects):
        c = int(rng.integers(1, num_classes))
        style = styles[c]
        r = rng.uniform(0.18, 0.38) * side
        cx, cy = rng.uniform(0.15, 0.85) * width, rng.uniform(0.15, 0.85) * height
        mask = _object_mask(style.shape, (width, height), cx, cy, r, rng.uniform(0, np.pi))
        if mask.sum() < 0.002 * width * height:
            continue
        instance_classes.append(c)
        classes[mask] = c
        instances[mask] = len(instance_classes)
    instances, instance_classes = _visible_instances(instances, instance_classes)

    # Background: a soft gradient plus noise in muted colours.
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    tint = rng.uniform(90, 150, size=3)
    image = tint + 40 * (xx[..., None] - 0.5) * rng.uniform(-1, 1, 3) + 40 * (yy[..., None] - 0.5)
    for c in np.unique(classes[classes > 0]):
        style = styles[int(c)]
        where = classes == c
        shade = _texture(style.texture, height, width, period)[where][:, None]
        image[where] = np.asarray(style.color, float) * shade
    image += rng.normal(0, 8, size=image.shape)
    image = np.clip(image, 0, 255).astype(np.uint8)
    no_clutter = np.zeros_like(classes, bool)
    return Scene(image, classes, instances, instance_classes, _void_band(instances, scale), no_clutter)


def _visible_instances(instances: np.ndarray, instance_classes: list) -> tuple:
    """Later objects may have hidden earlier ones completely: keeps only visible instances,
    renumbered 1, 2, ... in drawing order, with their classes."""
    visible = [k for k in range(1, len(instance_classes) + 1) if (instances == k).any()]
    remap = np.zeros(256, np.uint8)
    remap[visible] = np.arange(1, len(visible) + 1)
    return remap[instances], [instance_classes[k - 1] for k in visible]


def _void_band(instances: np.ndarray, scale: float) -> np.ndarray:
    """VOC marks a band of about 5 px at 500 px around every object boundary as void."""
    width_px = max(1, int(round(2 * scale)))
    edges = scipy.ndimage.maximum_filter(instances, 3) != scipy.ndimage.minimum_filter(instances, 3)
    return scipy.ndimage.binary_dilation(edges, iterations=width_px) if edges.any() else edges


def _image_size(rng: np.random.Generator, max_side: int) -> tuple:
    """``(width, height)`` of a VOC-like image whose longer side is about ``max_side``."""
    base_w, base_h = _VOC_SIZES[rng.integers(len(_VOC_SIZES))]
    scale = max_side / 500
    return max(16, int(round(base_w * scale))), max(16, int(round(base_h * scale)))


# ---------------------------------------------------------------------------------------------
# Hard mode: no single cue names a class

EASY, HARD = "easy", "hard"
DIFFICULTIES = (EASY, HARD)

# Five of each cue. Shapes and hues are those that stay distinct when a 500 px image is
# trained on at 128 px: a ring's hole and a cross's arms are still 2-4 px wide there.
_HARD_SHAPES = ("ellipse", "triangle", "rectangle", "cross", "ring")
_HARD_TEXTURES = _TEXTURES
# Hues 72 degrees apart, saturated and bright enough that the objects' brightness jitter and
# texture shading never carry one into the next.
_HARD_COLOURS = tuple(_hsv_to_rgb(hue, 0.8, 0.9) for hue in (0.0, 0.2, 0.4, 0.6, 0.8))
# Texture period and smallest object diameter at 500 px: 20 px is 5 px at 128 px, so stripes
# survive the trainer's down-scaling; 32 px is 8 px there.
_HARD_PERIOD = 20
_HARD_MIN_DIAMETER = 32
_BACKGROUND_TEXTURES = ("gradient", "dstripes", "wide_hstripes", "wide_vstripes", "wide_checker", "blobs")


@functools.cache
def hard_design() -> tuple:
    """The 25 ``(colour, shape, texture)`` index triples of hard mode, row ``i`` column ``j``
    being ``(j, (i + j) % 5, (2i + j) % 5)``.

    Two orthogonal Latin squares of prime order 5: any two triples share at most one cue, so
    every pair of cues (colour and shape, colour and texture, shape and texture) tells any two
    triples apart, while each single cue value recurs in five of them.
    """
    n = len(_HARD_SHAPES)
    return tuple((j, (i + j) % n, (2 * i + j) % n) for i in range(n) for j in range(n))


def _hard_style(triple: tuple) -> ClassStyle:
    colour, shape, texture = triple
    return ClassStyle(
        shape=_HARD_SHAPES[shape],
        color=_HARD_COLOURS[colour],
        texture=_HARD_TEXTURES[texture],
    )


@functools.cache
def hard_class_styles(num_classes: int) -> dict:
    """``{class id: ClassStyle}`` in hard mode: classes take the design's first triples, so each
    colour, shape and texture is shared by several classes and only their combination is one
    class's. The design holds 24 classes besides at least one clutter style."""
    design = hard_design()
    if not 1 <= num_classes - 1 < len(design):
        raise ValueError(
            f"hard mode draws 1 to {len(design) - 1} object classes (num_classes 2 to {len(design)}), "
            f"got num_classes={num_classes}"
        )
    return {c: _hard_style(design[c - 1]) for c in range(1, num_classes)}


@functools.cache
def hard_clutter_styles(num_classes: int) -> tuple:
    """The looks of clutter: the design's triples that no class uses, drawn and labelled as
    background. Each shares at most one cue with any class, so a person tells them apart."""
    return tuple(_hard_style(t) for t in hard_design()[num_classes - 1 :])


def _shifted_texture(kind: str, height: int, width: int, period: int, rng: np.random.Generator) -> np.ndarray:
    """``_texture`` at a random phase, so stripes do not line up from one object to the next."""
    dy, dx = (int(v) for v in rng.integers(0, 2 * period, size=2))
    return _texture(kind, height + dy, width + dx, period)[dy:, dx:]


def _background_texture(kind: str, height: int, width: int, period: int, rng) -> np.ndarray:
    """A [H, W] brightness factor in [0.7, 1.0] for a background region: patterns at scales
    or angles no class uses (diagonal, three times wider, blobs), in the objects' colours."""
    yy, xx = np.mgrid[0:height, 0:width]
    wide = 3 * period
    if kind == "gradient":
        pattern = (xx + yy) / max(1, height + width - 2)
    elif kind == "dstripes":
        pattern = ((xx + yy) // (3 * period // 2)) % 2  # 1.5 periods along x: one across
    elif kind == "wide_hstripes":
        pattern = (yy // wide) % 2
    elif kind == "wide_vstripes":
        pattern = (xx // wide) % 2
    elif kind == "wide_checker":
        pattern = ((yy // wide) + (xx // wide)) % 2
    elif kind == "blobs":
        noise = scipy.ndimage.gaussian_filter(rng.normal(size=(height, width)), sigma=period)
        pattern = noise > 0
    else:
        raise ValueError(kind)
    return 0.7 + 0.3 * pattern


def _hard_background(
    rng: np.random.Generator, height: int, width: int, period: int, avoid: set
) -> np.ndarray:
    """2-4 large regions (a Voronoi split of the image), most painted in an object colour with
    a background pattern, the others in muted tints: colour alone cannot find the objects.

    Regions take only colours not in ``avoid`` (those of the scene's own objects), so that
    every object stands out from what lies behind it, as a person would need to see it.
    """
    free = [rgb for rgb in _HARD_COLOURS if rgb not in avoid]
    num_regions = int(rng.integers(2, 5))
    seeds = rng.uniform(0, 1, size=(num_regions, 2)) * (height, width)
    yy, xx = np.mgrid[0:height, 0:width]
    nearest = np.argmin((yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2, axis=-1)
    image = np.zeros((height, width, 3))
    for k in range(num_regions):
        where = nearest == k
        if free and rng.random() < 0.75:
            colour = np.asarray(free[rng.integers(len(free))], float)
        else:
            colour = rng.uniform(90, 150, size=3)
        kind = _BACKGROUND_TEXTURES[rng.integers(len(_BACKGROUND_TEXTURES))]
        shade = _background_texture(kind, height, width, period, rng)[where][:, None]
        image[where] = colour * rng.uniform(0.8, 1.1) * shade
    return image


def _paint(image: np.ndarray, where: np.ndarray, style: ClassStyle, period: int, rng) -> None:
    """Paints one object: its style's colour and texture, a little brighter or darker, each
    channel slightly off and its own noise, so that colour is a cue but no exact lookup."""
    height, width = where.shape
    shade = _shifted_texture(style.texture, height, width, period, rng)[where][:, None]
    gain = rng.uniform(0.8, 1.1) * rng.uniform(0.93, 1.07, size=3)
    noise = rng.normal(0, rng.uniform(3, 10), size=(int(where.sum()), 3))
    image[where] = np.asarray(style.color, float) * gain * shade + noise


def _hard_objects(rng: np.random.Generator, num_classes: int) -> list:
    """The objects of one hard scene in drawing order: ``(class id, style)``, class 0 for
    clutter. 1-3 classes, each 1-3 times (an image often holds several instances of a class),
    and 1-3 clutter objects."""
    styles, clutter = hard_class_styles(num_classes), hard_clutter_styles(num_classes)
    ids = sorted(styles)
    kinds = rng.choice(ids, size=min(len(ids), int(rng.integers(1, 4))), replace=False)
    objects = [
        (int(c), styles[int(c)]) for c in kinds for _ in range(int(rng.choice([1, 2, 3], p=[0.5, 0.3, 0.2])))
    ]
    objects += [(0, clutter[rng.integers(len(clutter))]) for _ in range(int(rng.integers(1, 4)))]
    return [objects[k] for k in rng.permutation(len(objects))]


def draw_hard_scene(rng: np.random.Generator, max_side: int, num_classes: int) -> Scene:
    """Draws a hard scene: object-coloured background regions, then class objects and clutter
    (labelled 0) of random sizes in random order, each hiding what it covers, so the labels
    are what is visible."""
    width, height = _image_size(rng, max_side)
    scale = max_side / 500
    period = max(2, int(round(_HARD_PERIOD * scale)))
    side = min(width, height)
    min_radius = max(0.045 * side, _HARD_MIN_DIAMETER * scale / 2)

    objects = _hard_objects(rng, num_classes)
    image = _hard_background(rng, height, width, period, {style.color for _, style in objects})
    classes = np.zeros((height, width), np.uint8)
    instances = np.zeros((height, width), np.uint8)
    instance_classes = []
    clutter = np.zeros((height, width), bool)
    for c, style in objects:
        # Radii log-uniform, 4.5% to 40% of the shorter side: small objects as often as large ones.
        r = max(min_radius, side * np.exp(rng.uniform(np.log(0.045), np.log(0.4))))
        cx, cy = rng.uniform(0.1, 0.9) * width, rng.uniform(0.1, 0.9) * height
        mask = _object_mask(style.shape, (width, height), cx, cy, r, rng.uniform(0, np.pi))
        if mask.sum() < 0.001 * width * height:
            continue
        _paint(image, mask, style, period, rng)
        classes[mask] = c
        clutter[mask] = not c
        if c:
            instance_classes.append(c)
            instances[mask] = len(instance_classes)
        else:
            instances[mask] = 0
    instances, instance_classes = _visible_instances(instances, instance_classes)
    image += rng.normal(0, 4, size=image.shape)
    image = np.clip(image, 0, 255).astype(np.uint8)
    return Scene(image, classes, instances, instance_classes, _void_band(instances, scale), clutter)


_DRAWERS = {EASY: draw_scene, HARD: draw_hard_scene}


def check_difficulty(difficulty: str) -> str:
    """``difficulty`` if it is one of ``DIFFICULTIES``; a ValueError naming the choices if not."""
    if difficulty not in _DRAWERS:
        raise ValueError(f"difficulty must be one of {', '.join(DIFFICULTIES)}, got {difficulty!r}")
    return difficulty


def draw(rng: np.random.Generator, max_side: int, num_classes: int, difficulty: str) -> Scene:
    """One scene of the given difficulty: what every format's writer draws."""
    return _DRAWERS[check_difficulty(difficulty)](rng, max_side, num_classes)


# ---------------------------------------------------------------------------------------------
# Writing one id in the real formats


def _annotation_xml(image_id: str, scene: Scene) -> bytes:
    height, width = scene.classes.shape
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "VOC2012"
    ET.SubElement(root, "filename").text = f"{image_id}.jpg"
    source = ET.SubElement(root, "source")
    ET.SubElement(source, "database").text = "The VOC2007 Database"
    size = ET.SubElement(root, "size")
    ET.SubElement(size, "width").text = str(width)
    ET.SubElement(size, "height").text = str(height)
    ET.SubElement(size, "depth").text = "3"
    ET.SubElement(root, "segmented").text = "1"
    for k, c in enumerate(scene.instance_classes, start=1):
        ys, xs = np.nonzero(scene.instances == k)
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = dataset_spec.VOC_CLASS_NAMES[c]
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = "0"
        box = ET.SubElement(obj, "bndbox")
        for tag, value in (
            ("xmin", xs.min() + 1),
            ("ymin", ys.min() + 1),
            ("xmax", xs.max() + 1),
            ("ymax", ys.max() + 1),
        ):
            ET.SubElement(box, tag).text = str(int(value))
    return ET.tostring(root)


def _boundaries(labels: np.ndarray, values: Sequence[int]) -> np.ndarray:
    """SBD's ``Boundaries`` field: a MATLAB cell array of sparse boundary maps, one per value."""
    cells = np.empty((len(values), 1), dtype=object)
    for i, v in enumerate(values):
        region = labels == v
        edge = region & ~scipy.ndimage.binary_erosion(region) if region.any() else region
        cells[i, 0] = scipy.sparse.csc_matrix(edge.astype(np.float64))
    return cells


def _write_sbd_mats(dataset_dir: str, image_id: str, scene: Scene) -> None:
    present = np.unique(scene.classes[scene.classes > 0]).astype(np.uint8).reshape(-1, 1)
    gt_cls = {
        "Segmentation": scene.classes,
        "Boundaries": _boundaries(scene.classes, range(1, VOC_CLASSES)),
        "CategoriesPresent": present,
    }
    gt_inst = {
        "Segmentation": scene.instances,
        "Boundaries": _boundaries(scene.instances, range(1, len(scene.instance_classes) + 1)),
        "Categories": np.asarray(scene.instance_classes, np.uint8).reshape(-1, 1),
    }
    scipy.io.savemat(
        os.path.join(dataset_dir, "cls", f"{image_id}.mat"), {"GTcls": gt_cls}, do_compression=True
    )
    scipy.io.savemat(
        os.path.join(dataset_dir, "inst", f"{image_id}.mat"), {"GTinst": gt_inst}, do_compression=True
    )


def voc_dir(out: str) -> str:
    return os.path.join(out, "VOCdevkit", "VOC2012")


def sbd_dir(out: str) -> str:
    return os.path.join(out, "benchmark_RELEASE", "dataset")


def _write_one(args: tuple) -> None:
    out, image_id, index, seed, max_side, difficulty, in_voc, in_sbd = args
    scene = draw(scene_rng(seed, index), max_side, VOC_CLASSES, difficulty)
    jpeg = encode_jpeg(scene.image)
    voc = voc_dir(out)
    # Like the real archive, JPEGImages and Annotations hold every image, segmented or not.
    with open(os.path.join(voc, "JPEGImages", f"{image_id}.jpg"), "wb") as f:
        f.write(jpeg)
    with open(os.path.join(voc, "Annotations", f"{image_id}.xml"), "wb") as f:
        f.write(_annotation_xml(image_id, scene))
    if in_voc:
        cls = np.where(scene.void, VOID, scene.classes)
        obj = np.where(scene.void, VOID, scene.instances)
        with open(os.path.join(voc, "SegmentationClass", f"{image_id}.png"), "wb") as f:
            f.write(palette.encode_palette_png(cls))
        with open(os.path.join(voc, "SegmentationObject", f"{image_id}.png"), "wb") as f:
            f.write(palette.encode_palette_png(obj))
    if in_sbd:
        sbd = sbd_dir(out)
        with open(os.path.join(sbd, "img", f"{image_id}.jpg"), "wb") as f:
            f.write(jpeg)
        _write_sbd_mats(sbd, image_id, scene)


def scene_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of image ``index``'s scene: one per image, so workers draw the same bytes."""
    return np.random.default_rng([seed, 1, index])


def encode_jpeg(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_list(path: str, ids: Sequence[str]) -> None:
    """One line per entry, ``\n`` ended."""
    with open(path, "w") as f:
        f.write("".join(f"{i}\n" for i in ids))


def run_jobs(write_one, jobs: list, workers: Optional[int]) -> None:
    """Runs ``write_one(job)`` for every job, in ``workers`` processes (default: one per core)."""
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    log = logging.getLogger(__name__)
    if workers == 1:
        results = map(write_one, jobs)
    else:
        pool = concurrent.futures.ProcessPoolExecutor(workers)
        results = pool.map(write_one, jobs, chunksize=16)
    for done, _ in enumerate(results, start=1):
        if done % 100 == 0 or done == len(jobs):
            log.info("make-dataset: %d/%d images written", done, len(jobs))
    if workers != 1:
        pool.shutdown()


def make_dataset(
    out: str,
    num_images: int,
    seed: int = 0,
    max_side: int = 500,
    workers: Optional[int] = None,
    difficulty: str = EASY,
) -> Layout:
    """Writes the VOC and SBD trees under ``out`` and returns the id layout.

    ``difficulty`` is ``easy`` (each class its own look: the demo's data, byte for byte what
    it always was) or ``hard`` (``draw_hard_scene``); the id layout is the same for both.
    """
    check_difficulty(difficulty)
    layout = make_layout(num_images, seed)
    voc, sbd = voc_dir(out), sbd_dir(out)
    for d in (
        "JPEGImages",
        "Annotations",
        "SegmentationClass",
        "SegmentationObject",
        os.path.join("ImageSets", "Segmentation"),
    ):
        os.makedirs(os.path.join(voc, d), exist_ok=True)
    for d in ("img", "cls", "inst"):
        os.makedirs(os.path.join(sbd, d), exist_ok=True)

    voc_ids, sbd_ids = set(layout.voc_ids), set(layout.sbd_ids)
    jobs = [
        (out, i, n, seed, max_side, difficulty, i in voc_ids, i in sbd_ids)
        for n, i in enumerate(layout.all_ids)
    ]
    run_jobs(_write_one, jobs, workers)

    seg = os.path.join(voc, "ImageSets", "Segmentation")
    write_list(os.path.join(seg, "train.txt"), layout.voc_train)
    write_list(os.path.join(seg, "val.txt"), layout.voc_val)
    write_list(os.path.join(seg, "trainval.txt"), layout.voc_ids)
    write_list(os.path.join(sbd, "train.txt"), layout.sbd_train)
    write_list(os.path.join(sbd, "val.txt"), layout.sbd_val)
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(
            {
                "generator": "deeplab-tfx make-dataset",
                "num_images": num_images,
                "seed": seed,
                "max_side": max_side,
                "difficulty": difficulty,
                **dataclasses.asdict(layout),
            },
            f,
            indent=1,
        )
    return layout


if __name__ == "__main__":  # pragma: no cover - the CLI is `deeplab-tfx make-dataset`.
    logging.basicConfig(level=logging.INFO)
    make_dataset(sys.argv[1], int(sys.argv[2]))
