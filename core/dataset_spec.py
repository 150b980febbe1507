"""What a segmentation dataset is: its classes, its ignore label, its colours, its masks' encoding.

``DatasetSpec`` is the ``dataset`` section of the pipeline config, and the one place a
dataset's classes come from. Ingestion writes it, as JSON, into the Examples artifact
(``artifacts.SPEC_FILE``) beside the splits, so that every later component reads the classes from the
data it is given and not from a constant; the Trainer also puts it in the exported model
(``assets.extra/``), where serving and the predict command find the names and colours.

The records hold masks in one canonical encoding whatever the source had: an 8-bit palette PNG
whose index is the class id (0 to ``num_classes - 1``) and 255 (``features.IGNORE_LABEL``) where the label
is ignored; its palette holds the spec's colours. A spec says how to get there from the
source's masks:

- ``palette``: a palette PNG read by index (VOC). Grey conversions of such masks (VOC's
  "SegmentationClassAug") are read as the same values, and RGB renderings are read back through
  ``colours`` when the spec has them.
- ``grey``: an 8-bit grey PNG of values (CIHP's ``Category_ids``, Cityscapes' ``labelIds``).
- ``rgb``: an RGB PNG painted in ``colours`` (one per class; ``ignore_colour`` for the ignored).

Values become classes by identity (value ``c`` is class ``c``), unless ``values`` maps them
(Oxford-IIIT Pet trimaps: ``{1: pet, 2: background, 3: ignore}``); ``ignore_label`` is ignored
either way (unless ``values`` maps it to a class). A value that maps to nothing is a data error
(the record goes to the dead letter), never background.

A spec names its background class (``background_class``): the class of whatever is no object,
in nearly every image, so it gets no ``class/present`` slice and overlays leave it unpainted. By
default the first class (VOC's, CIHP's and Oxford-IIIT Pet's ``background``); ``""`` (or null)
for a dataset without one, such as Cityscapes' 19 train ids, where every class is an object.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Mapping, Optional

import numpy as np

from core import artifacts, features
from core.checks import NAME, Checked, ConfigError, Rule, between, one_of

VOC = "voc"  # layout of the VOC 2012 (+ SBD) archives
FOLDERS = "folders"  # an images folder and a masks folder, paired by file stem
LAYOUTS = (VOC, FOLDERS)
PALETTE, GREY, RGB = "palette", "grey", "rgb"
MASK_ENCODINGS = (PALETTE, GREY, RGB)
# The class a ``values`` entry maps to for "ignore this pixel".
IGNORE = "ignore"
# Class ids are 0-254: 255 is the canonical ignore id (features.IGNORE_LABEL), and masks are 8-bit.
MAX_CLASSES = features.IGNORE_LABEL
# VOC's colour for void (the "don't care" band around objects).
VOC_VOID_COLOUR = (224, 224, 192)
# ``background_class`` left unset: the first class, whichever it is when the spec is made
# (``dataclasses.replace`` of the class names included). Not a name a class can have (``NAME``); a
# spec that names its first class is stored with this, so that it is the same spec (equal, the
# same JSON and digest) as one that names none.
FIRST_CLASS = "<first class>"

VOC_CLASS_NAMES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)


def voc_colormap(size: int = 256) -> np.ndarray:
    """The VOC colour map ``[size, 3]`` uint8: the bits of index ``c`` spread over the high bits of
    R, G and B (bit 0 -> R, bit 1 -> G, bit 2 -> B, then the next three one position lower...).
    Also the default colours of any dataset whose spec gives none: they are distinct for every
    index, and class 0 is black."""
    cmap = np.zeros((size, 3), dtype=np.uint8)
    for index in range(size):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        cmap[index] = (r, g, b)
    return cmap


def _colour(value) -> bool:
    return (
        isinstance(value, (list, tuple))
        and len(value) == 3
        and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value)
    )


def _pairs(value) -> tuple:
    """A mapping (YAML) or (key, value) pairs (JSON of a spec) -> sorted tuple of pairs."""
    items = value.items() if isinstance(value, Mapping) else value
    try:
        return tuple(sorted((k, v) for k, v in items))
    except (TypeError, ValueError):
        raise ConfigError(f"values={value!r} cannot work: it must map mask values to class names") from None


@dataclasses.dataclass(frozen=True)
class DatasetSpec(Checked):
    """One dataset's classes and mask format (the config's ``dataset`` section). VOC by default."""

    name: str = VOC
    layout: str = VOC  # voc | folders
    # Empty: VOC's 21 for the voc layout; a folders dataset lists its own (never VOC's by default).
    class_names: tuple = ()
    # One [r, g, b] per class for reports, predicted masks and ``rgb`` masks; empty: VOC's map.
    colours: tuple = ()
    mask_encoding: str = PALETTE  # palette | grey | rgb
    # The mask value that means "ignore this pixel" (palette and grey masks); -1: none.
    ignore_label: int = features.IGNORE_LABEL
    # The colour that means "ignore" in ``rgb`` masks; empty: VOC's void colour.
    ignore_colour: tuple = ()
    # Mask value -> class name or "ignore", where values are not class ids (trimaps). A value
    # it does not name (nor ``ignore_label``) is a data error. Empty: value c is class c.
    values: tuple = ()
    # ``folders`` layout, relative to ``data.root``: images (JPEG or PNG) and masks (PNG),
    # paired by file stem.
    images_dir: str = "images"
    masks_dir: str = "masks"
    # Split lists (one id per line; a line's first word is its id, as Oxford-IIIT Pet's lists
    # have more columns). Empty: a deterministic split by a hash of the id, ``eval_fraction``
    # of the ids to eval.
    train_list: str = ""
    eval_list: str = ""
    eval_fraction: float = 0.1
    # The background class's name (no ``class/present`` slice, not painted over in overlays); unset
    # (``FIRST_CLASS``): the first class; "" or null: none (Cityscapes' train ids). Read it through
    # ``background_id``, which resolves the unset value.
    background_class: str = FIRST_CLASS

    RULES = {
        "name": NAME,
        "layout": one_of(*LAYOUTS),
        "mask_encoding": one_of(*MASK_ENCODINGS),
        "ignore_label": Rule(lambda v: isinstance(v, int) and -1 <= v <= 255, "an integer in [-1, 255]"),
        "eval_fraction": between(0, 1, high_open=True),
    }

    def __post_init__(self):
        # Lists from YAML or JSON become tuples, so that a spec stays hashable and compares equal
        # after a round trip through JSON.
        names = tuple(self.class_names) or (VOC_CLASS_NAMES if self.layout == VOC else ())
        object.__setattr__(self, "class_names", names)
        object.__setattr__(self, "colours", tuple(tuple(c) if _colour(c) else c for c in self.colours))
        object.__setattr__(self, "ignore_colour", tuple(self.ignore_colour))
        object.__setattr__(self, "values", _pairs(self.values))
        background = "" if self.background_class is None else self.background_class
        if names and background == names[0]:
            background = FIRST_CLASS
        object.__setattr__(self, "background_class", background)
        super().__post_init__()

    def check_together(self) -> None:
        names = self.class_names
        if not names:
            raise ConfigError(
                "class_names is empty: a folders dataset lists its classes (dataset.class_names)"
            )
        if not 2 <= len(names) <= MAX_CLASSES:
            raise ConfigError(
                f"class_names has {len(names)} names: a dataset needs 2 to {MAX_CLASSES} classes"
            )
        bad = [n for n in names if not isinstance(n, str) or not NAME.check(n)]
        if bad:
            raise ConfigError(f"class_names={bad!r} cannot work: each must be {NAME.says}")
        if len(set(names)) != len(names) or IGNORE in names:
            raise ConfigError(f"class_names must be distinct and not {IGNORE!r}: {list(names)}")
        if self.background_class not in (FIRST_CLASS, "") and self.background_class not in names:
            raise ConfigError(
                f"background_class={self.background_class!r} names no class (classes: {list(names)}); "
                "name one of them, or give '' (null) for a dataset without a background"
            )
        if self.colours and (len(self.colours) != len(names) or not all(map(_colour, self.colours))):
            raise ConfigError(
                f"colours must be one [r, g, b] of 0-255 per class ({len(names)} classes), "
                f"got {list(self.colours)}"
            )
        if self.ignore_colour and not _colour(self.ignore_colour):
            raise ConfigError(
                f"ignore_colour={list(self.ignore_colour)} cannot work: it must be [r, g, b] of 0-255"
            )
        if self.layout == FOLDERS and self.name == VOC:
            raise ConfigError("a folders dataset needs a name of its own (dataset.name), not 'voc'")
        if self.mask_encoding == RGB and not self.colours and self.layout != VOC:
            raise ConfigError("mask_encoding='rgb' needs colours: the colour of each class in the masks")
        painted = [tuple(c) for c in self.class_colours()] + [tuple(self.ignore_colour or VOC_VOID_COLOUR)]
        if len(set(painted)) != len(painted):
            raise ConfigError(
                "colours and ignore_colour must be distinct: a mask painted in them could not be read back"
            )
        if bool(self.train_list) != bool(self.eval_list):
            raise ConfigError("train_list and eval_list go together: both, or neither for the hash split")
        for value, target in self.values:
            if not (isinstance(value, int) and 0 <= value <= 255):
                raise ConfigError(f"values: key {value!r} cannot work: mask values are integers 0-255")
            if target != IGNORE and target not in names:
                raise ConfigError(f"values: {value} -> {target!r} names no class (classes: {list(names)})")
        if not self.values and 0 <= self.ignore_label < len(names):
            raise ConfigError(
                f"ignore_label={self.ignore_label} is the id of class {names[self.ignore_label]!r}, which "
                "could then never be labelled; map values to classes with `values` (0: ignore, 1: ...)"
            )
        if self.layout == VOC and names != VOC_CLASS_NAMES:
            raise ConfigError("layout='voc' reads the VOC and SBD archives, whose classes are VOC's 21")
        if self.layout == VOC and self.background_id != 0:
            raise ConfigError(
                f"background_class={self.background_class!r} cannot work with layout='voc': VOC's "
                f"background is class 0, {VOC_CLASS_NAMES[0]!r}, and its curated schema holds "
                "class/present 1 to 20; leave background_class unset"
            )

    # Derived, used by every stage.

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def background_id(self) -> Optional[int]:
        """The background class's id (0 where ``background_class`` is unset), None for a dataset
        without one."""
        if self.background_class == FIRST_CLASS:
            return 0
        return self.class_names.index(self.background_class) if self.background_class else None

    def foreground_ids(self) -> tuple:
        """Every class id but the background's: the values ``class/present`` may hold."""
        return tuple(c for c in range(self.num_classes) if c != self.background_id)

    def class_colours(self) -> np.ndarray:
        """``[num_classes, 3]`` uint8: the spec's colours, or VOC's colour map."""
        if self.colours:
            return np.asarray(self.colours, np.uint8).reshape(-1, 3)
        return voc_colormap(self.num_classes)

    def palette(self) -> np.ndarray:
        """``[256, 3]`` uint8 index -> colour of the canonical mask PNG and of rendered masks:
        the classes' colours, the ignore colour at 255, VOC's colour map elsewhere."""
        table = voc_colormap()
        table[: self.num_classes] = self.class_colours()
        table[features.IGNORE_LABEL] = self.ignore_colour or VOC_VOID_COLOUR
        return table

    def value_lookup(self) -> np.ndarray:
        """``[256]`` int16: mask value (palette index or grey) -> class id, ``features.IGNORE_LABEL``, or -1
        where the value is no class (a data error)."""
        lookup = np.full(256, -1, np.int16)
        if self.values:
            ids = {name: i for i, name in enumerate(self.class_names)}
            for value, target in self.values:
                lookup[value] = features.IGNORE_LABEL if target == IGNORE else ids[target]
        else:
            lookup[: self.num_classes] = np.arange(self.num_classes)
        # The ignore value is ignored unless ``values`` maps it to a class itself.
        if self.ignore_label >= 0 and self.ignore_label not in dict(self.values):
            lookup[self.ignore_label] = features.IGNORE_LABEL
        return lookup

    def sources(self) -> tuple:
        """Values of ``image/source``: VOC's layout has two archives, a folder dataset one."""
        return features.SOURCES if self.layout == VOC else (self.name,)

    # JSON: the form the spec travels in (Examples artifact, model, component parameters).

    def to_json(self) -> str:
        """The spec as JSON; ``background_class`` only where it is not the first class, so that a
        spec written before the key existed (in Examples, models, caches: its digest) is the same
        text as the spec it reads back as."""
        fields = dataclasses.asdict(self)
        if self.background_class == FIRST_CLASS:
            del fields["background_class"]
        return json.dumps(fields, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str = "dataset spec") -> DatasetSpec:
        try:
            raw = json.loads(text)
            return cls(**raw)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{where}: not a dataset spec: {e}") from None


VOC_SPEC = DatasetSpec()


# ``write`` and ``read`` import storage (and so TensorFlow) when called: the config, which holds a
# spec, must stay cheap to import (Airflow times DAG-file imports).


def write(spec: DatasetSpec, directory: str) -> str:
    """Writes ``artifacts.SPEC_FILE`` into ``directory`` (any filesystem); returns its path."""
    from core import storage

    path = os.path.join(directory, artifacts.SPEC_FILE)
    storage.write_file(path, spec.to_json())
    return path


def read(directory: str) -> Optional[DatasetSpec]:
    """The spec in ``directory`` (an Examples artifact or a model), None where there is none:
    artifacts made before specs existed are VOC's, which the caller decides."""
    import tensorflow as tf

    from core import storage

    path = os.path.join(directory, artifacts.SPEC_FILE)
    try:
        text = storage.read_file(path, binary=False)
    except tf.errors.NotFoundError:
        return None
    return DatasetSpec.from_json(text, where=path)


# The two readers below are the only places VOC's spec stands in for a missing one: artifacts made
# before specs travelled with the data are VOC's. Nothing else defaults to VOC's classes.


def of_examples(examples_uri: str) -> DatasetSpec:
    """The spec the Examples were ingested with; VOC's for artifacts made before specs travelled."""
    return read(examples_uri) or VOC_SPEC


def of_model(model_dir: str) -> DatasetSpec:
    """The classes a SavedModel (or a pushed version of it) predicts: its
    ``artifacts.MODEL_SPEC_FILE``, VOC's for a model exported before models carried one."""
    return read(os.path.join(model_dir, artifacts.ASSETS_EXTRA)) or VOC_SPEC


def in_eval(image_id: str, eval_fraction: float) -> bool:
    """The hash split: whether ``image_id`` goes to eval when a dataset has no split lists.

    The first 8 bytes of the id's SHA-256 read as a fraction of 2^64: the same answer on every
    run and machine (unlike Python's ``hash``), and for each id alone, so adding images never
    moves an id between splits (a model evaluated before and after saw the same eval ids).
    Here, not in ingestion, because the dataset generators split their manifests by it too.
    """
    digest = hashlib.sha256(image_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") < eval_fraction * 2**64
