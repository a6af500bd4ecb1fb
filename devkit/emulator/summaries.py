"""Meter event summaries as Stripe computes them (GET /v1/billing/meters/{id}/event_summaries).

The query: a customer and a time range, start inclusive and end exclusive, both aligned to
the minute, or to the hour or the UTC day when `value_grouping_window` asks for hourly or
daily summaries. The answer: the meter's `default_aggregation.formula` over the customer's
counted events by event timestamp (`sum` of values, `count` of events, `last`: the value of
the latest event, the later arrival on a tie). Cancelled events, duplicates and events
rejected asynchronously count for nothing. Without a grouping window there is exactly one
summary for the range; with one, a summary per window that holds usage (Stripe's documented
hourly example leaves out its empty last hour), newest first.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from devkit.emulator.apierror import invalid, missing, parse_integer, unknown_parameter

GROUPING_WINDOWS = {"hour": 3600, "day": 86_400}
_ALIGNMENT = {None: (60, "minute"), "hour": (3600, "hour"), "day": (86_400, "day (00:00 UTC)")}
_PARAMETERS = frozenset(
    {
        "customer",
        "start_time",
        "end_time",
        "value_grouping_window",
        "limit",
        "starting_after",
        "ending_before",
    }
)


@dataclass(frozen=True)
class SummaryQuery:
    """The checked parameters of one event summaries request."""

    customer: str
    start: int
    end: int
    window: int | None  # seconds per summary, None for one summary over [start, end)

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> SummaryQuery:
        """Stripe's checks, each failure an invalid_request_error naming its parameter."""
        for name in query:
            if name not in _PARAMETERS and not name.startswith("expand"):
                raise unknown_parameter(name)
        for name in ("customer", "end_time", "start_time"):
            if name not in query:
                raise missing(name)
            if query[name] == "":
                raise invalid(
                    f"You passed an empty string for '{name}'. We assume empty values are an "
                    f"attempt to unset a parameter; however '{name}' cannot be unset. You should "
                    f"remove '{name}' from your request or supply a non-empty value.",
                    name,
                    "parameter_invalid_empty",
                )
        start = parse_integer(query["start_time"], "start_time")
        end = parse_integer(query["end_time"], "end_time")
        grouping = query.get("value_grouping_window")
        if grouping is not None and grouping not in GROUPING_WINDOWS:
            raise invalid(
                "Invalid value_grouping_window: must be one of day or hour",
                "value_grouping_window",
            )
        alignment, unit = _ALIGNMENT[grouping]
        for name, value in (("start_time", start), ("end_time", end)):
            if value % alignment:
                raise invalid(f"{name} must be aligned with {unit} boundaries.", name)
        if end <= start:
            raise invalid("end_time must be after start_time.", "end_time")
        window = GROUPING_WINDOWS[grouping] if grouping is not None else None
        return cls(query["customer"], start, end, window)


def summarize(
    meter_id: str, formula: str, query: SummaryQuery, usage: Iterable[tuple[float, str]]
) -> list[dict[str, Any]]:
    """The summaries of usage: (event timestamp, value) pairs in arrival order, all inside
    [query.start, query.end); newest window first."""
    step = query.window or query.end - query.start
    windows: dict[int, list[tuple[float, str]]] = {}
    for timestamp, value in usage:
        lower = query.start + int((timestamp - query.start) // step) * step
        windows.setdefault(lower, []).append((timestamp, value))
    if query.window is None:
        windows.setdefault(query.start, [])
    return [
        _summary(meter_id, query.customer, lower, min(lower + step, query.end), formula, events)
        for lower, events in sorted(windows.items(), reverse=True)
    ]


def aggregate(formula: str, events: list[tuple[float, str]]) -> Decimal:
    """One window's value: events are (timestamp, value) in arrival order."""
    if formula == "count":
        return Decimal(len(events))
    if formula == "last":
        latest: tuple[float, str] | None = None
        for event in events:
            if latest is None or event[0] >= latest[0]:  # a tie: the later arrival
                latest = event
        return Decimal(latest[1]) if latest is not None else Decimal(0)
    return sum((Decimal(value) for _, value in events), Decimal(0))


def _summary(
    meter_id: str,
    customer: str,
    start: int,
    end: int,
    formula: str,
    events: list[tuple[float, str]],
) -> dict[str, Any]:
    value = aggregate(formula, events)
    digest = hashlib.sha256(f"{meter_id}|{customer}|{start}|{end}".encode()).hexdigest()
    return {
        "id": f"mtrusg_test_{digest[:40]}",
        "object": "billing.meter_event_summary",
        # a whole number as Stripe writes it (15, not 15.0)
        "aggregated_value": int(value) if value == value.to_integral_value() else float(value),
        "start_time": start,
        "end_time": end,
        "livemode": False,
        "meter": meter_id,
    }
