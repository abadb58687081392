"""Parameters of the Prometheus HTTP API as Prometheus parses them, with its error texts:
times as RFC 3339 or Unix seconds (rounded to the millisecond), durations as seconds or
Prometheus durations (``1h30m``), and the API's error types with their status codes."""

from __future__ import annotations

import math
import re
from datetime import datetime

BAD_DATA = ("bad_data", 400)
EXECUTION = ("execution", 422)
TIMEOUT = ("timeout", 503)
INTERNAL = ("internal", 500)
UNAVAILABLE = ("unavailable", 503)

MAX_POINTS = 11_000
"""Prometheus refuses range queries with more points per series than this."""

# Prometheus's own boundary times (what its clients send for "no limit").
MIN_TIME_TEXT = "-292273086-05-16T16:47:06Z"
MAX_TIME_TEXT = "292277025-08-18T07:12:54.999999999Z"
MIN_TIME = -9223372036854775.808
MAX_TIME = 9223372036854775.807

_DURATION = re.compile(r"^(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?"
                       r"(?:(\d+)ms)?$")
_DURATION_UNITS = (365 * 86400, 7 * 86400, 86400, 3600, 60, 1, 0.001)
_RFC3339 = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$",
                      re.IGNORECASE)


class ApiError(Exception):
    """An answer in Prometheus's error envelope: ``kind`` is its errorType."""

    def __init__(self, kind: tuple[str, int], message: str) -> None:
        super().__init__(message)
        self.error_type, self.status = kind
        self.message = message


def invalid(parameter: str, reason: str) -> ApiError:
    return ApiError(BAD_DATA, f'invalid parameter "{parameter}": {reason}')


def parse_time(text: str) -> float:
    """Unix seconds from Unix seconds (ms precision) or RFC 3339; ValueError with
    Prometheus's text otherwise."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    else:
        if math.isfinite(value):
            whole = math.trunc(value)
            return whole + round(value - whole, 3)
    match = _RFC3339.match(text)
    if match:
        day, fraction, zone = match.groups()
        zone = "+00:00" if zone.upper() == "Z" else zone
        try:
            moment = datetime.fromisoformat(day + zone)
        except ValueError:
            pass
        else:
            # Whole seconds exactly; the fraction kept to the nanosecond Prometheus reads.
            return moment.timestamp() + (float(fraction[:10]) if fraction else 0.0)
    if text == MIN_TIME_TEXT:
        return MIN_TIME
    if text == MAX_TIME_TEXT:
        return MAX_TIME
    raise ValueError(f'cannot parse "{text}" to a valid timestamp')


def parse_duration(text: str) -> float:
    """Seconds from a number of seconds or a Prometheus duration (``5m``, ``1h30m``)."""
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if math.isnan(value) or abs(value) * 1e9 >= 2.0 ** 63:
            raise ValueError(f'cannot parse "{text}" to a valid duration. It overflows int64')
        return value
    match = _DURATION.match(text)
    if text and text != "0" and match and any(match.groups()):
        return sum(int(part) * unit for part, unit in zip(match.groups(), _DURATION_UNITS,
                                                          strict=True) if part)
    if text == "0":
        return 0.0
    raise ValueError(f'cannot parse "{text}" to a valid duration')


def time_param(form: dict[str, list[str]], name: str, default: float | None) -> float:
    text = first(form, name)
    if not text:
        if default is None:
            raise invalid(name, f'cannot parse "{text}" to a valid timestamp')
        return default
    try:
        return parse_time(text)
    except ValueError as exc:
        if default is not None:  # an optional time: Prometheus says which value it was
            raise invalid(name, f"invalid time value for '{name}': {exc}") from None
        raise invalid(name, str(exc)) from None


def range_params(form: dict[str, list[str]]) -> tuple[float, float, float]:
    """start, end, step of a range query, checked as Prometheus checks them."""
    start = time_param(form, "start", None)
    end = time_param(form, "end", None)
    if end < start:
        raise invalid("end", "end timestamp must not be before start time")
    try:
        step = parse_duration(first(form, "step"))
    except ValueError as exc:
        raise invalid("step", str(exc)) from None
    if step <= 0:
        raise invalid("step", "zero or negative query resolution step widths are not "
                              "accepted. Try a positive integer")
    # Prometheus divides durations as integers of nanoseconds.
    if round((end - start) * 1e9) // round(step * 1e9) > MAX_POINTS:
        raise ApiError(BAD_DATA, "exceeded maximum resolution of 11,000 points per "
                                 "timeseries. Try decreasing the query resolution (?step=XX)")
    return start, end, step


def timeout_param(form: dict[str, list[str]], ceiling: float) -> float:
    text = first(form, "timeout")
    if not text:
        return ceiling
    try:
        asked = parse_duration(text)
    except ValueError as exc:
        raise invalid("timeout", str(exc)) from None
    return min(asked, ceiling) if asked > 0 else ceiling


def lookback_param(form: dict[str, list[str]]) -> list[tuple[str, str]]:
    """``lookback_delta`` for this query alone, as the engine field (none: the configured
    lookback; zero or negative: the same, as in Prometheus)."""
    text = first(form, "lookback_delta")
    if not text:
        return []
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise ApiError(BAD_DATA, f"error parsing lookback delta duration: {exc}") from None
    return [("lookback_delta", repr(seconds))]


def limit_param(form: dict[str, list[str]]) -> int:
    text = first(form, "limit")
    if not text:
        return 0
    try:
        limit = int(text)
    except ValueError:
        raise invalid("limit", f'strconv.Atoi: parsing "{text}": invalid syntax') from None
    if limit < 0:
        raise invalid("limit", "limit must be non-negative")
    return limit


def first(form: dict[str, list[str]], name: str) -> str:
    values = form.get(name)
    return values[0] if values else ""
