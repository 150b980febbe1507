"""Trivial baselines a segmentation model must beat: one class everywhere, and a colour lookup.

A model that scores below them has learned nothing a histogram could not: the learning
benchmark (``benchmarks/learning.py``) scores them on the same records as every recipe, so
that a recipe's figure on a dataset reads against what that dataset gives away for free.

- ``majority_class``: the train split's most frequent class, predicted everywhere (for most
  datasets, background only).
- ``ColourLookup``: per-pixel colour -> class, no spatial context at all. Each RGB colour is
  binned to ``levels`` levels per channel (16: 4,096 bins), and each bin predicts the class
  most often labelled in it on the train split; a bin never seen predicts the majority class.
  Where classes have colours of their own this is nearly perfect; where colours are shared
  it fails, which is what a model with context is for.
"""

from typing import Iterable

import numpy as np

from core import features

# The baselines' names in the learning benchmark's results (benchmarks/learning.py, summary.py).
MAJORITY, LOOKUP = "majority_class", "colour_lookup"
NAMES = (MAJORITY, LOOKUP)


def majority_class(label_batches: Iterable[np.ndarray], num_classes: int) -> int:
    """The most frequent class over labelled pixels (void, 255, excluded); ties: the lowest id."""
    counts = np.zeros(num_classes, np.int64)
    for labels in label_batches:
        valid = labels[labels != features.IGNORE_LABEL].astype(np.int64)
        counts += np.bincount(valid.ravel(), minlength=num_classes)[:num_classes]
    return int(np.argmax(counts))


class ColourLookup:
    """The majority class of each colour bin, counted on labelled pixels of the train split."""

    def __init__(self, num_classes: int, levels: int = 16):
        if 256 % levels:
            raise ValueError(f"levels must divide 256, got {levels}")
        self.num_classes, self.levels = num_classes, levels
        self.counts = np.zeros([levels**3, num_classes], np.int64)

    def _bins(self, image: np.ndarray) -> np.ndarray:
        """``[..., 3]`` 0-255 values -> bin index ``r * L^2 + g * L + b`` of the binned levels."""
        q = np.clip(np.asarray(image), 0, 255).astype(np.int64) // (256 // self.levels)
        return (q[..., 0] * self.levels + q[..., 1]) * self.levels + q[..., 2]

    def add(self, image: np.ndarray, labels: np.ndarray) -> None:
        """Counts ``image`` ``[H, W, 3]`` (0-255) against ``labels`` ``[H, W]`` (void skipped)."""
        valid = labels != features.IGNORE_LABEL
        codes = self._bins(image)[valid] * self.num_classes + labels[valid].astype(np.int64)
        self.counts += np.bincount(codes, minlength=self.counts.size).reshape(self.counts.shape)

    def table(self) -> np.ndarray:
        """``[L^3]`` class of each bin; bins never seen: the majority class of all pixels."""
        seen = self.counts.sum(axis=1) > 0
        fallback = int(np.argmax(self.counts.sum(axis=0)))
        return np.where(seen, np.argmax(self.counts, axis=1), fallback).astype(np.uint8)

    def predict(self, image: np.ndarray, table: np.ndarray) -> np.ndarray:
        """``[H, W]`` uint8 class ids of ``image`` ``[H, W, 3]`` (0-255) by ``table``."""
        return table[self._bins(image)]
