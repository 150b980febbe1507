"""How a mapping (YAML, a component's ``custom_config``) and ``section.key=value`` overrides
become a checked, frozen config dataclass.

Generic over the dataclasses of ``core/config.py``: every key is checked against the fields,
every value against the field's type, and the dataclass's own rules (``core/checks.py``) run when
it is built, so an error names the key in full (``trainer.backbone``). A ``DatasetSpec`` field
may be given as a spec file's path or name, which is read here.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import typing
from typing import Any, Iterable, Mapping

import yaml

from core import paths
from core.checks import ConfigError
from core.dataset_spec import DatasetSpec


def dataset_spec_mapping(path_or_name: str, where: str) -> Mapping:
    """The YAML mapping of a spec file: a path (as given, else in the project), or a name in
    ``datasets/specs/`` (``cihp``, ``oxford_pet``)."""
    path = path_or_name
    if not os.path.exists(path):
        named = os.path.join(paths.DATASET_SPEC_DIR, f"{path_or_name}.yaml")
        path = named if os.path.exists(named) else paths.project_file(path_or_name)
    try:
        with open(path) as f:
            raw = yaml.safe_load(f) or {}
    except OSError as e:
        names = ", ".join(sorted(f[:-5] for f in os.listdir(paths.DATASET_SPEC_DIR) if f.endswith(".yaml")))
        raise ConfigError(
            f"{where}={path_or_name!r}: cannot read {path!r}: {e.strerror} (named specs: {names})"
        ) from e
    if not isinstance(raw, Mapping):
        raise ConfigError(f"dataset spec {path!r} must be a mapping at the top level")
    return raw


def merged(root: type, raw: Mapping, overrides: Iterable[str]) -> dict:
    """A copy of ``raw`` (a mapping of dataclass ``root``) with every override set in it; keys
    and types are checked here."""
    merged = copy.deepcopy(dict(raw))
    # A whole section (``dataset=cihp``) first, so that its keys' overrides (``dataset.x=...``)
    # apply to it whatever the order they were given in.
    for override in sorted(overrides, key=lambda o: "." in o.partition("=")[0]):
        key, sep, text = override.partition("=")
        if not sep:
            raise ConfigError(f"override {override!r} is not of the form section.key=value")
        _insert(merged, root, key.strip().split("."), _scalar(text), where=key.strip())
    return merged


def _scalar(text: str) -> Any:
    """A YAML scalar; text YAML cannot read (``@daily``, ``a: b``) is taken as a string."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _insert(raw: dict, cls: type, path: list, value: Any, where: str) -> None:
    fields = {f.name for f in dataclasses.fields(cls)}
    if path[0] not in fields:
        raise ConfigError(f"unknown config key {where!r} (known: {', '.join(sorted(fields))})")
    kind = typing.get_type_hints(cls)[path[0]]
    if len(path) == 1 and kind is DatasetSpec and isinstance(value, str):
        raw[path[0]] = dict(dataset_spec_mapping(value, where))
    elif len(path) == 1:
        raw[path[0]] = _coerce(kind, value, where)
    elif dataclasses.is_dataclass(kind):
        section = raw.get(path[0]) or {}
        if not isinstance(section, Mapping):
            raise ConfigError(f"config section {path[0]!r} must be a mapping, got {section!r}")
        raw[path[0]] = dict(section)
        _insert(raw[path[0]], kind, path[1:], value, where)
    else:
        raise ConfigError(f"config key {where!r}: {path[0]!r} is not a section")


def build(cls: type, raw: Mapping, where: str, section: str = "") -> Any:
    at = f"{where}: " if where else ""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(f"{at}unknown config key(s) {unknown} in {cls.__name__}")
    values = {}
    for name, value in raw.items():
        if hints[name] is DatasetSpec and isinstance(value, str):
            value = dataset_spec_mapping(value, f"{section}{name}")
        if dataclasses.is_dataclass(hints[name]):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{at}section {name!r} must be a mapping")
            values[name] = build(hints[name], value, where, f"{section}{name}.")
        else:
            values[name] = _coerce(hints[name], value, f"{at}{section}{name}")
    try:
        return cls(**values)
    except ConfigError as e:
        # Name the keys in full (``trainer.backbone``, not ``backbone``).
        fields = "|".join(names)
        message, named = re.subn(rf"(?<![\w.])({fields})=", rf"{section}\1=", str(e))
        if section and not named:  # a rule across keys: say which section it is in
            message = f"{section.rstrip('.')}: {message}"
        raise ConfigError(at + message) from None


def _coerce(kind: Any, value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(kind):
        raise ConfigError(f"{where} is a section; set its keys one by one")
    if kind is tuple:
        if isinstance(value, Mapping):  # a mapping is kept as its (key, value) pairs
            return tuple(value.items())
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(value)
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is str and value is None:
        return ""
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ConfigError(f"{where}: expected {kind.__name__}, got {value!r}")
    return value
