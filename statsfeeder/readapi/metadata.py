"""Label names and label values without a series frame: ``/api/v1/labels`` and
``/api/v1/label/<name>/values``.

Without ``match[]`` there is no matcher to apply: the read API answers itself (``distinct``),
in one pass over the index's VM-days joined with the entities in scope. With ``match[]``
the engine asks with the parsed ``match[]`` sets and the label names it needs (those the
matchers name, and the one whose values are asked); the answer is the distinct projections of
the matching series onto those labels, dictionary-encoded: each column's distinct values,
and one row of indexes per distinct combination (plus, for label names, the set of names the
series has). The engine applies every matcher itself, with Prometheus's own matchers (RE2,
fully anchored), once per distinct value, then reduces the rows to names or values: the
semantics stay Prometheus's, and what crosses is the few distinct values, not every series'
labels. Here only the caller's scope, the time range and exact (``=``, ``!=``) matchers
narrow the rows: Python's regular expressions are not RE2's (``\\d`` and ``\\w`` are Unicode
here, ``[[:alpha:]]`` means something else), so a regex never drops a row here.

Series come from the series index and the entities table (no sample window is read); a day
the index does not cover falls back to the store's own series listing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from statsfeeder.readapi import params
from statsfeeder.readapi.index import FEW_VMS
from statsfeeder.readapi.names import DEVICE_LABEL, ENTITY_LABELS
from statsfeeder.readapi.params import ApiError
from statsfeeder.readapi.store import (
    Matcher,
    Scope,
    SelectRequest,
    SeriesLimit,
    SeriesStore,
    entities_in,
    failure_line,
    read_range,
)

NAME = "__name__"


@dataclass(frozen=True)
class LabelTableRequest:
    start_ms: int
    end_ms: int
    sets: tuple[tuple[Matcher, ...], ...]
    columns: tuple[str, ...]
    names: bool
    """Whether each row also carries the label names its series has."""

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> LabelTableRequest:
        sets = tuple(tuple(Matcher(str(m["type"]), str(m["name"]), str(m["value"]))
                           for m in matchers) for matchers in body.get("sets") or ())
        return cls(int(body["start"]), int(body["end"]), sets,
                   tuple(str(c) for c in body.get("columns") or ()), bool(body.get("names")))


Key = tuple[Mapping[str, str], str, str]
"""One series: its entity labels, its metric name, its device ('' for none)."""


def label_table(store: SeriesStore, request: LabelTableRequest, scope: Scope
                ) -> dict[str, Any]:
    """The answer for the engine (JSON-ready); blocking (driver calls)."""
    values: list[dict[str, int]] = [{} for _ in request.columns]
    name_sets: dict[tuple[str, ...], int] = {}
    rows: dict[tuple[int, ...], None] = {}
    for matchers in request.sets:
        for entity, metric, device in series_keys(store, request, matchers, scope):
            row = []
            for column, seen in zip(request.columns, values, strict=True):
                value = project(column, entity, metric, device)
                row.append(seen.setdefault(value, len(seen)))
            if request.names:
                names = (NAME, *entity, DEVICE_LABEL) if device else (NAME, *entity)
                row.append(name_sets.setdefault(names, len(name_sets)))
            rows[tuple(row)] = None
    return {"columns": [list(seen) for seen in values], "name_sets": list(name_sets),
            "rows": [index for row in rows for index in row]}


def project(column: str, entity: Mapping[str, str], metric: str, device: str) -> str:
    if column == NAME:
        return metric
    if column == DEVICE_LABEL:
        return device
    return entity.get(column, "")


def series_keys(store: SeriesStore, request: LabelTableRequest, matchers: tuple[Matcher, ...],
                scope: Scope) -> Iterator[Key]:
    """The series in scope with samples in the range that pass the set's exact matchers."""
    exact = tuple(m for m in matchers if m.kind in ("=", "!="))
    checks = [(m.name, m.compile()) for m in exact]
    view = store.snapshot()
    window = read_range(request.start_ms, request.end_ms, view.retention_seconds)
    if window is None:
        return
    days, first_s, last_s = window
    by_metric = {m.metric: m for name, m in view.catalog.items()
                 if all(check(name) for label, check in checks if label == NAME)}
    entity_checks = [(n, c) for n, c in checks if n in ENTITY_LABELS]
    vms = {e.vm: labels for e, labels in entities_in(view.entities, scope, entity_checks)}
    if not by_metric or not vms:
        return
    listed: Iterable[tuple[str, Iterable[tuple[str, str]]]] | None = None
    if len(vms) <= FEW_VMS:  # a few VMs (e.g. one dashboard's): their index rows by key
        plan = view.index.plan(view.since, days, first_s, last_s, vms.keys(), by_metric,
                               cached=True)
        listed = None if plan.scan_days else plan.listed.items()
    else:
        pairs = view.index.present(view.since, days, first_s, last_s)
        listed = None if pairs is None else ((vm, keys) for vm, keys in pairs if vm in vms)
    if listed is None:  # days written before the index: the store lists their series
        listing = SelectRequest(request.start_ms, request.end_ms, exact, series_only=True)
        for labels, _, _ in store.series(listing, scope):
            entity = {k: v for k, v in labels.items() if k in ENTITY_LABELS}
            yield entity, labels.get(NAME, ""), labels.get(DEVICE_LABEL, "")
        return
    series_checks = [(n, c) for n, c in checks if n not in ENTITY_LABELS]
    for vm, keys in listed:
        entity = vms[vm]
        for metric, device in keys:
            info = by_metric.get(metric)
            if info is not None and all(check(project(label, entity, info.name, device))
                                        for label, check in series_checks):
                yield entity, info.name, device


def distinct(store: SeriesStore, start_ms: int, end_ms: int, scope: Scope, name: str | None
             ) -> list[str]:
    """Without ``match[]``: the label names (``name`` None) or one label's values over every
    series in scope and range, sorted as Go sorts strings (UTF-8 bytes: code points). No
    matcher to apply, so the read API answers these itself, without the engine, from the
    index's VM-days (one pass, no per-series labels)."""
    view = store.snapshot()
    window = read_range(start_ms, end_ms, view.retention_seconds)
    if window is None:
        return []
    pairs = view.index.present(view.since, *window)
    if pairs is None:  # days written before the index: the store lists their series
        request = LabelTableRequest(start_ms, end_ms, ((),), (), name is None)
        keys = series_keys(store, request, (), scope)
        pairs_by_vm = [(entity, ((metric, device),)) for entity, metric, device in keys]
        return _reduce(pairs_by_vm, name)
    names = {m.metric: m.name for m in view.catalog.values()}
    entities = {e.vm: labels for e, labels in entities_in(view.entities, scope)}
    stored: dict[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]] = {}
    found: list[tuple[Mapping[str, str], tuple[tuple[str, str], ...]]] = []
    for vm, series in pairs:
        labels = entities.get(vm)
        if labels is None:
            continue
        known = stored.get(series)
        if known is None:  # few distinct series lists: each renamed once
            known = stored[series] = tuple((names[metric], device) for metric, device in series
                                           if metric in names)
        if known:
            found.append((labels, known))
    return _reduce(found, name)


def _reduce(found: Sequence[tuple[Mapping[str, str], tuple[tuple[str, str], ...]]],
            name: str | None) -> list[str]:
    """Label names or ``name``'s values of (entity labels, its (metric, device) series)."""
    out: set[str] = set()
    if name is None:
        if found:
            out.add(NAME)
        for labels, series in set((tuple(labels), series) for labels, series in found):
            out.update(labels)
            if any(device for _, device in series):
                out.add(DEVICE_LABEL)
    elif name in (NAME, DEVICE_LABEL):
        column = 0 if name == NAME else 1
        for series in {series for _, series in found}:
            out.update(key[column] for key in series)
    elif name in ENTITY_LABELS:
        out.update(labels.get(name, "") for labels, _ in found)
    out.discard("")
    return sorted(out)


Failed = Callable[[BaseException, str], str]
"""A store failure and what was read, as one line for the caller (``failure_line``)."""


async def distinct_answer(store: SeriesStore, start: float, end: float, scope: Scope,
                          name: str | None, failed: Failed = failure_line) -> list[str]:
    """``distinct`` for the read API (Unix seconds), failures as Prometheus's errors."""
    try:
        return await asyncio.to_thread(distinct, store, round(start * 1000), round(end * 1000),
                                       scope, name)
    except SeriesLimit as exc:  # only days written before the series index list series
        raise ApiError(params.EXECUTION, str(exc)) from None
    except Exception as exc:  # Cassandra unreachable, timeouts: one line to the caller
        raise ApiError(params.INTERNAL, failed(exc, "labels")) from None


async def label_table_response(store: SeriesStore, body: Mapping[str, Any], scope: Scope,
                               failed: Failed = failure_line) -> web.Response:
    """The engine's request on the internal endpoint; a limit is 422, a failure 500."""
    wanted = LabelTableRequest.from_json(body)
    try:
        table = await asyncio.to_thread(label_table, store, wanted, scope)
    except SeriesLimit as exc:
        raise web.HTTPUnprocessableEntity(text=str(exc)) from None
    except Exception as exc:
        raise web.HTTPInternalServerError(text=failed(exc, "labels")) from None
    return web.json_response(table)
