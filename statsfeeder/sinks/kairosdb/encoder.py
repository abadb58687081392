"""Series to KairosDB's ``POST /api/v1/datapoints`` JSON::

    [{"name": "<prefix><counter>", "datapoints": [[ms, value], ...],
      "tags": {"vm": ..., "org": ..., ...}, "ttl": <seconds>}, ...]

Values are in the unit vCD shows: a counter with scale 1 keeps vCenter's integers (stored as
KairosDB longs); a scaled one (percent, raw in hundredths) is divided by 100 (correctly rounded:
``1234`` gives ``12.34``), always a double, so one metric never mixes types.

Tags: KairosDB refuses an empty tag value and a metric without tags. An empty value becomes
``none`` (a VM without vCD org/VDC/vApp, a series without entity id); the aggregate instance
(vCenter's ``""``) becomes ``aggregate``. ``tag_charset: any`` (default) sends values as they
are (empty ones still replaced): KairosDB 1.2+ stores and returns any character through the
REST API, so a query by ``urn:vcloud:vm:<uuid>`` finds the series. With ``tag_charset:
strict`` every character outside ``A-Za-z0-9-./_`` becomes ``_`` (``urn_vcloud_vm_<uuid>``),
the set every KairosDB version and its telnet API accept.

Per sample the only Python work is the ``tolist``/``zip`` and the C JSON encoder; the tags of
a series are encoded once and cached.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from statsfeeder.model import Series

ALL_TAGS = ("vm", "org", "vdc", "vapp", "vcenter", "moref", "instance")
PLACEHOLDER = "none"
"""Tag value written for an empty one (KairosDB refuses empty tag values)."""
AGGREGATE = "aggregate"
"""Tag ``instance`` of the whole-VM series (vCenter's instance ``""``)."""

_NOT_STRICT = re.compile(r"[^A-Za-z0-9./_-]")
_TAG_CACHE_LIMIT = 200_000

_dumps = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode


def sanitize(value: str, *, strict: bool = True) -> str:
    """A tag value KairosDB accepts: never empty, and with ``strict`` only ``A-Za-z0-9-./_``."""
    if strict:
        value = _NOT_STRICT.sub("_", value)
    return value or PLACEHOLDER


@dataclass(frozen=True, slots=True)
class Part:
    """Samples ``begin:end`` of one series: a batch boundary may cut a long series."""

    series: Series
    begin: int
    end: int

    @property
    def samples(self) -> int:
        return self.end - self.begin


def plan(series: Iterable[Series], max_samples: int) -> list[list[Part]]:
    """Cut series into batches of at most ``max_samples`` datapoints, in order; empty series
    are left out. A series longer than the room left is split across batches."""
    if max_samples < 1:
        raise ValueError("max_samples must be at least 1")
    batches: list[list[Part]] = []
    current: list[Part] = []
    room = max_samples
    for item in series:
        size = len(item)
        begin = 0
        while begin < size:
            take = min(room, size - begin)
            current.append(Part(item, begin, begin + take))
            begin += take
            room -= take
            if room == 0:
                batches.append(current)
                current, room = [], max_samples
    if current:
        batches.append(current)
    return batches


class Encoder:
    """Encodes parts of series into one JSON body per batch."""

    def __init__(self, *, prefix: str = "", tags: Sequence[str] = ALL_TAGS,
                 ttl_seconds: int | None = None, strict: bool = True) -> None:
        unknown = [tag for tag in tags if tag not in ALL_TAGS]
        if unknown or not tags:
            raise ValueError(f"tags must be a non-empty subset of {', '.join(ALL_TAGS)}")
        self.prefix = prefix
        self.tags = tuple(tags)
        self.ttl_seconds = ttl_seconds
        self.strict = strict
        self._tail = f',"ttl":{int(ttl_seconds)}}}' if ttl_seconds else "}"
        self._tag_json: dict[tuple[object, ...], str] = {}
        self._names: dict[str, str] = {}

    def tag_values(self, series: Series) -> dict[str, str]:
        entity = series.entity
        raw = {
            "vm": entity.vm if entity else "",
            "org": entity.org if entity else "",
            "vdc": entity.vdc if entity else "",
            "vapp": entity.vapp if entity else "",
            "vcenter": series.vcenter,
            "moref": series.moref,
            "instance": series.instance or AGGREGATE,
        }
        return {tag: sanitize(raw[tag], strict=self.strict) for tag in self.tags}

    def _tags(self, series: Series) -> str:
        key = (series.vcenter, series.moref, series.instance, series.entity)
        text = self._tag_json.get(key)
        if text is None:
            if len(self._tag_json) >= _TAG_CACHE_LIMIT:
                self._tag_json.clear()
            text = self._tag_json[key] = _dumps(self.tag_values(series))
        return text

    def _name(self, metric: str) -> str:
        text = self._names.get(metric)
        if text is None:
            text = self._names[metric] = _dumps(self.prefix + metric)
        return text

    def metric_name(self, series: Series) -> str:
        return self.prefix + series.counter.name

    def encode(self, parts: Iterable[Part]) -> bytes:
        """One request body (UTF-8 JSON) for these parts."""
        out: list[str] = []
        tail = self._tail
        for part in parts:
            item = part.series
            stamps = item.timestamps[part.begin:part.end] * 1000
            values = _values(item, part.begin, part.end)
            out.append('{"name":' + self._name(item.counter.name)
                       + ',"datapoints":' + _dumps(list(zip(stamps.tolist(), values, strict=True)))
                       + ',"tags":' + self._tags(item) + tail)
        return ("[" + ",".join(out) + "]").encode()


def _values(series: Series, begin: int, end: int) -> list[int] | list[float]:
    """Values in the unit shown: ints when the scale is 1, else floats divided exactly."""
    raw = series.values[begin:end]
    scale = series.counter.scale
    if scale == 1.0:
        values: list[int] = raw.tolist()
        return values
    divisor = 1.0 / scale
    if abs(divisor - round(divisor)) < 1e-9:
        scaled = raw / round(divisor)  # 1234 / 100 -> 12.34, not 12.340000000000002
    else:
        scaled = raw.astype(np.float64) * scale
    floats: list[float] = scaled.tolist()
    return floats


def encode(series: Iterable[Series], *, prefix: str = "", tags: Sequence[str] = ALL_TAGS,
           ttl_seconds: int | None = None, strict: bool = True,
           max_samples: int = 20_000) -> list[bytes]:
    """Convenience: every batch body for these series."""
    encoder = Encoder(prefix=prefix, tags=tags, ttl_seconds=ttl_seconds, strict=strict)
    return [encoder.encode(batch) for batch in plan(series, max_samples)]
