"""Value checks of config sections, shared by ``core.config`` and ``core.dataset_spec``.

Apart from config.py so that the dataset spec (a config section that also travels with the
Examples artifact as JSON) can use them without importing the whole pipeline config.
"""

from __future__ import annotations

import datetime
import math
import re
import typing
from typing import Any


class ConfigError(ValueError):
    """A config names an unknown key, or a value of the wrong type or one that cannot work."""


class Rule(typing.NamedTuple):
    """A check on one config value and the words that say what it must be."""

    check: typing.Callable[[Any], bool]
    says: str


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def one_of(*choices) -> Rule:
    return Rule(lambda v: v in choices, f"one of {', '.join(map(repr, choices))}")


def at_least(low) -> Rule:
    return Rule(lambda v: _number(v) and v >= low, f"a number >= {low}")


def above(low) -> Rule:
    return Rule(lambda v: _number(v) and v > low, f"a number > {low}")


def between(low, high, high_open=False) -> Rule:
    bracket = ")" if high_open else "]"
    return Rule(
        lambda v: _number(v) and low <= v and (v < high if high_open else v <= high),
        f"a number in [{low}, {high}{bracket}",
    )


def each(rule: Rule) -> Rule:
    """A list (a YAML sequence) whose every item passes ``rule``."""
    return Rule(
        lambda v: isinstance(v, (list, tuple)) and all(rule.check(x) for x in v), f"a list, each {rule.says}"
    )


def matches(pattern: str, says: str) -> Rule:
    return Rule(lambda v: isinstance(v, str) and re.fullmatch(pattern, v) is not None, says)


NAME = matches(r"[A-Za-z0-9][A-Za-z0-9_.-]*", "a name of letters, digits, '_', '.' and '-'")
NOT_EMPTY = matches(r"\S.*", "a non-empty string")


def _iso_date(value) -> bool:
    try:
        datetime.datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return False
    return True


class Checked:
    """Checks every value of a config section when it is made, so a value that cannot work
    (``trainer.backbone=resnet18``, ``ingest.max_rejected_fraction=.nan``) fails when the config
    loads, naming the key, rather than minutes into a run or by switching a check off.

    ``RULES`` maps field names to ``Rule``s; ``check_together`` covers rules across fields.
    ``dataclasses.replace`` runs the checks too, since it makes a new instance.
    """

    RULES: typing.ClassVar[dict] = {}

    def __post_init__(self):
        for name, rule in self.RULES.items():
            value = getattr(self, name)
            if not rule.check(value):
                raise ConfigError(f"{name}={value!r} cannot work: it must be {rule.says}")
        self.check_together()

    def check_together(self) -> None:
        """Rules that relate several fields; raise ``ConfigError`` naming them."""


ISO_DATE = Rule(_iso_date, "a date or time in ISO 8601, e.g. 2026-01-01")
