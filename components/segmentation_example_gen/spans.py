"""Spans: a dataset that arrives a folder at a time, named by number or date, as TFX's ExampleGen
names them.

A data root may hold TFX's span specs: ``{SPAN}`` (digits), or ``{YYYY}``, ``{MM}`` and ``{DD}``
together (a date; its span number is the days since 1970-01-01, TFX's convention), optionally with
``{VERSION}`` (digits: a re-delivery of the same span). ``gs://bucket/voc/span-{SPAN}`` or
``/data/cihp/{YYYY}-{MM}-{DD}/v{VERSION}``. The specs may only be in the root's folder names: what
is under a span's folder is a whole dataset in the layout the dataset spec describes. A root with no
spec is span 0, version none, as before spans existed.

Every root of one run (VOC's and SBD's) resolves to the same span and version; a root without specs
is the same for every span. ``resolve`` picks the newest span (or the one a run asks for: a
backfill) and that span's newest version. Listing is by ``tf.io.gfile.glob``, so object stores work
(on GCS a glob lists every object under the pattern's parent folder: keep spans' parent folder
for spans). A span counts as soon as its folder exists: upload a span's files before its folder's
name matches the pattern (upload under a temporary name, then rename), or the run may read a
half-uploaded span.
"""

import dataclasses
import datetime
import logging
import re
from typing import Dict, Optional, Tuple

import tensorflow as tf

SPAN_SPEC = "{SPAN}"
VERSION_SPEC = "{VERSION}"
DATE_SPECS = ("{YYYY}", "{MM}", "{DD}")
# The span a run asks for when it asks for none: the newest one there is.
NEWEST = -1
UNIX_EPOCH = datetime.date(1970, 1, 1)
# ``{SPAN}`` or ``{SPAN:4}`` (TFX's width: zero-padded to 4 digits), the same for ``{VERSION}``.
_TOKEN = re.compile(r"\{(SPAN|VERSION|YYYY|MM|DD)(?::(\d+))?\}")
_DIGITS = {"SPAN": r"\d+", "VERSION": r"\d+", "YYYY": r"\d{4}", "MM": r"\d{2}", "DD": r"\d{2}"}


class SpanError(ValueError):
    """A span pattern that cannot be resolved: malformed, or nothing on storage matches it."""


@dataclasses.dataclass(frozen=True)
class Span:
    """One delivery: its span number, its version (None when the pattern has no ``{VERSION}``)
    and the concrete roots it is read from."""

    span: int
    version: Optional[int]
    roots: Dict[str, Optional[str]]


def has_specs(root: Optional[str]) -> bool:
    return bool(root) and bool(_TOKEN.search(root))


def _names(root: str) -> list:
    return [name for name, _ in _TOKEN.findall(root)]


def check_pattern(root: str) -> None:
    """Raises ``SpanError`` naming the root when its specs break TFX's rules."""
    tokens = _names(root)
    if not tokens:
        return
    duplicated = sorted({t for t in tokens if tokens.count(t) > 1})
    if duplicated:
        raise SpanError(f"span pattern {root!r}: {duplicated} appear more than once")
    dates = [t for t in tokens if t in ("YYYY", "MM", "DD")]
    if "SPAN" in tokens and dates:
        raise SpanError(f"span pattern {root!r}: {{SPAN}} and a date ({{YYYY}}{{MM}}{{DD}}) are exclusive")
    if dates and len(dates) != 3:
        raise SpanError(f"span pattern {root!r}: a date needs all of {{YYYY}}, {{MM}} and {{DD}}")
    if tokens == ["VERSION"]:
        raise SpanError(f"span pattern {root!r}: {{VERSION}} needs {{SPAN}} or a date")


def date_to_span(year: int, month: int, day: int) -> int:
    return (datetime.date(year, month, day) - UNIX_EPOCH).days


def span_to_date(span: int) -> datetime.date:
    return UNIX_EPOCH + datetime.timedelta(days=span)


def _regex(root: str) -> re.Pattern:
    out, last = "", 0
    for match in _TOKEN.finditer(root):
        name, width = match.groups()
        digits = rf"\d{{{width}}}" if width else _DIGITS[name]
        out += re.escape(root[last : match.start()]) + f"(?P<{name}>{digits})"
        last = match.end()
    return re.compile(out + re.escape(root[last:]) + "/?$")


def _parse(match: re.Match) -> Tuple[int, Optional[int]]:
    groups = match.groupdict()
    if "SPAN" in groups:
        span = int(groups["SPAN"])
    else:
        try:
            span = date_to_span(int(groups["YYYY"]), int(groups["MM"]), int(groups["DD"]))
        except ValueError as e:
            raise SpanError(f"{match.string!r} is not a date: {e}") from None
    return span, int(groups["VERSION"]) if "VERSION" in groups else None


def available(root: str) -> Dict[Tuple[int, Optional[int]], str]:
    """``{(span, version): folder}`` of every folder on storage that the pattern ``root`` matches.
    Raises ``SpanError`` when two folders are the same span and version (``span-1`` and
    ``span-01``): which one a run read would depend on listing order."""
    check_pattern(root)
    regex = _regex(root.rstrip("/"))
    found = {}
    for path in sorted(tf.io.gfile.glob(_TOKEN.sub("*", root.rstrip("/")))):
        path = path.rstrip("/")
        match = regex.match(path)
        if not match or not tf.io.gfile.isdir(path):
            continue
        key = _parse(match)
        if key in found:
            raise SpanError(f"{found[key]} and {path} are both span {key[0]}, version {key[1]}")
        found[key] = path
    return found


def locate(root: Optional[str], span: int, version: Optional[int]) -> Optional[str]:
    """The folder of ``span`` (and ``version``) under the pattern ``root``, as it is named on
    storage (zero padding included); ``root`` itself when it has no specs. Raises ``SpanError``
    naming the pattern when that span is not there."""
    if not has_specs(root):
        return root
    found = available(root).get((span, version))
    if found is None:
        raise SpanError(f"span {span}, version {version} is not under {root!r} (or no longer)")
    return found


def resolve(roots: Dict[str, Optional[str]], requested_span: int = NEWEST) -> Span:
    """The span a run reads: ``requested_span`` (a backfill), or the newest on storage, at its
    newest version; span 0 when no root has specs. ``roots``: ``{config key: root}``.

    With several patterned roots (VOC's and SBD's), the newest span under all of them: a span
    whose SBD part has not arrived yet waits (a warning names it). Raises ``SpanError`` naming the
    patterns when no span is under all of them, or when the asked-for span is not.
    """
    patterned = {key: root for key, root in roots.items() if has_specs(root)}
    if not patterned:
        if requested_span not in (NEWEST, 0):
            raise SpanError(
                f"span {requested_span} was asked for, but no data root has a span pattern ({roots})"
            )
        return Span(0, None, dict(roots))
    for root in patterned.values():
        check_pattern(root)
    shapes = {key: sorted(set(_names(root)) - {"MM", "DD"}) for key, root in patterned.items()}
    if len({tuple(s) for s in shapes.values()}) > 1:
        raise SpanError(f"the data roots' span patterns differ in their specs: {shapes}")
    # Listed once per distinct pattern: VOC's and SBD's roots are often the same folder.
    listed = {root: available(root) for root in set(patterned.values())}
    per_root = {key: set(listed[root]) for key, root in patterned.items()}
    common = set.intersection(*per_root.values())
    if not common:
        where = "; ".join(f"{k}={patterned[k]!r}: {sorted(v) or 'nothing'}" for k, v in per_root.items())
        raise SpanError(f"no span is under every data root's pattern ({where})")
    spans = sorted({span for span, _ in common})
    ahead = {
        key: max(s for s, _ in found)
        for key, found in per_root.items()
        if max(s for s, _ in found) > spans[-1]
    }
    if ahead and requested_span == NEWEST:
        logging.warning("span %s is the newest under every data root; %s have newer ones", spans[-1], ahead)
    if requested_span == NEWEST:
        span = spans[-1]
    elif requested_span in spans:
        span = requested_span
    else:
        raise SpanError(
            f"span {requested_span} is not under {sorted(patterned.values())}: found spans {spans}"
        )
    versions = [v for s, v in common if s == span]
    version = None if None in versions else max(versions)
    return Span(
        span,
        version,
        {key: listed[root][(span, version)] if root in listed else root for key, root in roots.items()},
    )
