"""Durations in workflow specs: `30s`, `5m`, `1h30m`, `500ms`, ISO 8601 `PT30S`, or seconds."""

from __future__ import annotations

import re
from datetime import timedelta
from functools import lru_cache

MAX_DURATION = timedelta(days=366)

_SHORT = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?$")
_ISO = re.compile(r"^P(?:(\d+)W)?(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$")


class InvalidDuration(ValueError):
    """A duration that does not parse, is negative, or exceeds `MAX_DURATION`."""


def parse_duration(value: str | int | float) -> timedelta:
    """Parse a duration.

    Args:
        value: `"30s"`, `"5m"`, `"1h30m"`, `"2d"`, `"250ms"`, ISO 8601 (`"PT1H"`, `"P1D"`),
            or a number of seconds.

    Raises:
        InvalidDuration: when it does not parse, is negative or longer than a year.
    """
    if isinstance(value, bool):
        raise InvalidDuration(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        return _bounded(_delta(value, seconds=float(value)), value)
    return _parse_text(value)


def _delta(raw: object, **parts: float) -> timedelta:
    # a huge (or NaN/inf) value is refused like any other out-of-range duration
    try:
        return timedelta(**parts)
    except (OverflowError, ValueError):
        raise InvalidDuration(f"duration {raw!r} is out of range") from None


@lru_cache(maxsize=1024)
def _parse_text(value: str) -> timedelta:
    text = value.strip()
    parsed = _parse_short(text) if not text.upper().startswith("P") else _parse_iso(text)
    if parsed is None:
        raise InvalidDuration(f"not a duration: {value!r} (use 30s, 5m, 1h30m or ISO 8601)")
    return _bounded(parsed, value)


def _bounded(delta: timedelta, raw: object) -> timedelta:
    if delta < timedelta(0) or delta > MAX_DURATION:
        raise InvalidDuration(f"duration {raw!r} must be between 0 and {MAX_DURATION.days} days")
    return delta


def _parse_short(text: str) -> timedelta | None:
    match = _SHORT.match(text)
    if not text or match is None:
        return None
    d, h, m, s, ms = (int(g) if g else 0 for g in match.groups())
    return _delta(text, days=d, hours=h, minutes=m, seconds=s, milliseconds=ms)


def _parse_iso(text: str) -> timedelta | None:
    match = _ISO.match(text.upper())
    if match is None or text.upper() in {"P", "PT"} or text.upper().endswith("T"):
        return None
    w, d, h, m = (int(g) if g else 0 for g in match.groups()[:4])
    s = float(match.group(5) or 0)
    return _delta(text, weeks=w, days=d, hours=h, minutes=m, seconds=s)
