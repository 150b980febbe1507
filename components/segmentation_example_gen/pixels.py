"""Pixels per class of each split, counted at ingestion, and what they say the data cannot teach.

Validation counts each mask's pixels per class id anyway (``records.build_record``); the Beam job
sums those histograms per split (``beam_ingest``) and the driver names them by class here
(``census``). ``judge`` then says what a person must hear before training on them, with the fix:

- a class of the spec with no labelled pixel in the train split cannot be learned (its eval
  IoU is 0, or n/a): a warning, as it may be on purpose (a span of new data without it, a class
  kept for later data);
- a train split whose mask pixels are mostly ignored (above ``ingest.max_ignored_fraction``)
  fails the run: the model would learn from the rest alone, and the usual cause is a value map
  the spec lacks. A binary mask saved as 0/255 and read without ``values`` is background and
  ignore only, since 255 is the default ignore label;
- a train split without a pixel of any class but the spec's background fails the run too: the
  model could learn to say "background" everywhere and nothing else. Its usual cause is the
  same (the objects' mask values read as ignored or as the background), and so is its knob:
  ``ingest.max_ignored_fraction=1`` turns both checks off, for a span meant to hold no object;
- an eval split mostly ignored (the same threshold) is a warning: its scores would measure the
  rest alone, and the model is not the worse for it.

Plain Python on numpy, no Beam: the same in the driver, the tests and the run report
(``rows``: the table both show).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np

from core import features
from core.dataset_spec import FOLDERS, RGB, DatasetSpec

# The keys of one split's census: {CLASSES: {class name: pixels}, IGNORED: pixels}.
CLASSES = "classes"
IGNORED = "ignored"
# A warning lists at most this many classes by name (ADE20K has 150).
SHOWN_CLASSES = 10
# The label of the ignored pixels' row in ``rows``.
IGNORED_ROW = "(ignored)"


def census(spec: DatasetSpec, histograms: dict) -> dict:
    """``{split: {"classes": {name: pixels}, "ignored": pixels}}`` for every split of
    ``features.SPLITS`` from ``{split: pixels per class id 0-255}`` (a split with no record
    written has none: zeros)."""
    found = {}
    for split in features.SPLITS:
        counts = np.asarray(histograms.get(split, np.zeros(256)), np.int64)
        found[split] = {
            CLASSES: {name: int(counts[c]) for c, name in enumerate(spec.class_names)},
            IGNORED: int(counts[features.IGNORE_LABEL]),
        }
    return found


def labelled(split: dict) -> int:
    """The pixels of one split's census that are a class."""
    return sum(split[CLASSES].values())


def ignored_fraction(split: dict) -> float:
    """The share of one split's mask pixels that are ignored (0 for a split without pixels)."""
    total = labelled(split) + split[IGNORED]
    return split[IGNORED] / total if total else 0.0


class Row(NamedTuple):
    """One line of the pixels table (report.md, the run report's page)."""

    class_id: Optional[int]  # None for the ignored pixels, which may come from several values
    name: str  # the class's, or ``IGNORED`` for the ignored pixels
    label: str  # what a person reads: the class's name, or ``IGNORED_ROW``
    cells: tuple  # per split of the census, in its order: (pixels, share or None for no pixel)


def rows(found: dict) -> list:
    """The table of a ``census`` (``found``): a ``Row`` per class in id order, each class's
    pixels with their share of its split's labelled pixels, then the ignored pixels with their
    share of all its split's mask pixels. A share is None where the split has no such pixel."""

    def cell(part: int, whole: int) -> tuple:
        return part, (part / whole if whole else None)

    splits = list(found.values())
    table = [
        Row(c, name, name, tuple(cell(split[CLASSES][name], labelled(split)) for split in splits))
        for c, name in enumerate(splits[0][CLASSES])
    ]
    ignored = tuple(cell(split[IGNORED], labelled(split) + split[IGNORED]) for split in splits)
    return table + [Row(None, IGNORED, IGNORED_ROW, ignored)]


# Why a run fails (``Findings.fails``): the train split mostly ignored, or all background.
MOSTLY_IGNORED = "mostly_ignored"
BACKGROUND_ONLY = "background_only"


class Findings(NamedTuple):
    warnings: list  # sentences, each naming what and the fix
    error: Optional[str] = None  # why the run must stop, and the fix; None: it goes on
    fails: Optional[str] = None  # MOSTLY_IGNORED or BACKGROUND_ONLY where ``error`` is given


def judge(spec: DatasetSpec, found: dict, max_ignored_fraction: float) -> Findings:
    """What a ``census`` (``found``) cannot teach: the classes the train split has no pixel of
    and an eval split mostly ignored (warnings); a train split ignored above
    ``max_ignored_fraction`` or, failing that, without a pixel of any class but the
    background (an error naming the likely cause and the fixes; 1 turns both off)."""
    train = found[features.TRAIN_SPLIT]
    warnings = []
    absent = [name for name, n in train[CLASSES].items() if not n]
    if absent:
        warnings.append(_absent_classes(spec, absent, train[IGNORED] > 0))
    share = ignored_fraction(found[features.EVAL_SPLIT])
    if share > max_ignored_fraction:
        warnings.append(
            f"{_ignored_share(found[features.EVAL_SPLIT], features.EVAL_SPLIT)}, above "
            f"ingest.max_ignored_fraction={max_ignored_fraction}: its scores would measure the other "
            f"{100 * (1 - share):.1f}% alone. {_ignored_cause(spec)}"
        )
    share = ignored_fraction(train)
    if share > max_ignored_fraction:
        error = (
            f"{_ignored_share(train, features.TRAIN_SPLIT)}, above ingest.max_ignored_fraction="
            f"{max_ignored_fraction}: the model would learn from the other {100 * (1 - share):.1f}% "
            f"alone. {_ignored_cause(spec)} If the pixels are meant to be ignored, raise "
            "ingest.max_ignored_fraction (1 turns the check off)."
        )
        return Findings(warnings, error, MOSTLY_IGNORED)
    if max_ignored_fraction < 1 and _background_only(spec, train):
        return Findings(warnings, _no_object(spec, train), BACKGROUND_ONLY)
    return Findings(warnings)


def _ignored_share(split: dict, name: str) -> str:
    total = labelled(split) + split[IGNORED]
    return (
        f"{100 * ignored_fraction(split):.1f}% of the {name} split's mask pixels ({split[IGNORED]} of "
        f"{total}) are ignored"
    )


def _background_only(spec: DatasetSpec, split: dict) -> bool:
    """Whether ``split`` has labelled pixels, all of the background (never, without one)."""
    counts = list(split[CLASSES].values())
    return (
        spec.background_id is not None
        and counts[spec.background_id] > 0
        and not any(counts[c] for c in spec.foreground_ids())
    )


def _no_object(spec: DatasetSpec, train: dict) -> str:
    """The error for a train split whose labelled pixels are all background: the cause, the fix."""
    background = spec.class_names[spec.background_id]
    if train[IGNORED] and _reads_255_as_ignored(spec):
        cause = (
            f"If the masks mark the objects with 255 (a binary mask saved as 0/255), 255 is read as "
            f"ignored: {_values_fix(spec)}."
        )
    else:
        cause = (
            "The masks' object values are likely read as the background or as ignored: check the dataset "
            "spec's values and ignore_label against the values the masks hold."
        )
    return (
        f"Every labelled pixel of the train split ({labelled(train)}) is of the background class "
        f"{background!r} of dataset {spec.name}: the model would learn to predict {background!r} "
        f"everywhere, and nothing else. {cause} If the train split is meant to show no object, set "
        "ingest.max_ignored_fraction=1 (it turns this check off, and the ignored share's)."
    )


def _reads_255_as_ignored(spec: DatasetSpec) -> bool:
    """Whether a folders dataset's grey or palette masks holding 255 are read as ignored (VOC's
    void is 255 by design, and an RGB mask's white is a colour, not a value)."""
    return (
        spec.layout == FOLDERS
        and spec.mask_encoding != RGB
        and spec.value_lookup()[255] == features.IGNORE_LABEL
    )


def _values_fix(spec: DatasetSpec) -> str:
    """How to map 255 to a class in the spec: exact for two classes, one of them the background,
    without a value map (0 is the background, 255 the other class)."""
    if spec.values:
        return "add `255: <class>` to the dataset spec's values"
    if spec.num_classes == 2 and spec.background_id is not None:
        background = spec.class_names[spec.background_id]
        (other,) = (spec.class_names[c] for c in spec.foreground_ids())
        return f"`values: {{0: {background}, 255: {other}}}` in the dataset spec"
    return "`values` in the dataset spec mapping each mask value to its class, 255 to the class it marks"


def _ignored_cause(spec: DatasetSpec) -> str:
    """The likely cause of mostly ignored masks under ``spec``, and the fix of the spec."""
    if _reads_255_as_ignored(spec):
        return (
            f"Binary masks saved as 0/255 read so, as 255 is the ignore label of dataset {spec.name}: if "
            f"255 marks a class, map it: {_values_fix(spec)}."
        )
    if spec.mask_encoding == RGB:
        colour = spec.palette()[features.IGNORE_LABEL].tolist()
        return (
            f"Dataset {spec.name} reads its ignore colour {colour} as ignored: if it marks a class, give "
            "that class the colour in the spec's colours."
        )
    lookup = spec.value_lookup()
    values = [v for v in range(256) if lookup[v] == features.IGNORE_LABEL]
    return (
        f"Dataset {spec.name} reads mask values {values} as ignored: if they mark a class, map them to "
        "it in the dataset spec's values."
    )


def _absent_classes(spec: DatasetSpec, names: list, some_ignored: bool) -> str:
    """The warning for classes without a train pixel: which, why it matters, what to do."""
    one = len(names) == 1
    ids = [spec.class_names.index(name) for name in names]
    shown = ", ".join(repr(name) for name in names[:SHOWN_CLASSES])
    more = f" and {len(names) - SHOWN_CLASSES} more" if len(names) > SHOWN_CLASSES else ""
    them, their = ("it", "its") if one else ("them", "their")
    id_list = ", ".join(map(str, ids[:SHOWN_CLASSES])) + (", ..." if more else "")
    message = (
        f"{'class' if one else 'classes'} {shown}{more} (id{'' if one else 's'} {id_list}) of dataset "
        f"{spec.name} {'has' if one else 'have'} no labelled pixel in the train split: the model cannot "
        f"learn {them}. Add train images that show {them}, or take {them} out of the dataset spec "
        f"(class_names, and values mapping {their} mask values to another class or to ignore)."
    )
    if some_ignored and _reads_255_as_ignored(spec):
        message += (
            f" If the masks mark {them} with 255 (a binary mask saved as 0/255), 255 is read as ignored: "
            f"{_values_fix(spec)}."
        )
    return message
