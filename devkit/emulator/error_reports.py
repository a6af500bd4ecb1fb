"""Asynchronous validation failures, and how Stripe reports them: per meter and window.

Stripe does not push one notice per rejected event. It counts the failures of a meter (or,
with no meter, of an event name) over a validation window, and when the window has passed
it emits one thin event carrying the count, the count per error code and a few samples.
Stripe's documented examples show 10-second windows; neither the length nor the number of
samples is published, so both are settings here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from devkit.emulator.timefmt import format_rfc3339

ERROR_REPORT_TRIGGERED = "v1.billing.meter.error_report_triggered"
NO_METER_FOUND = "v1.billing.meter.no_meter_found"


@dataclass
class ErrorReport:
    """One asynchronous validation failure, as Stripe reports it in its error-report events."""

    code: str
    message: str
    identifier: str
    event_name: str
    received_at: float
    meter_id: str | None = None

    def to_api(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "message": self.message,
            "identifier": self.identifier,
            "event_name": self.event_name,
            "meter": self.meter_id,
            "received_at": format_rfc3339(self.received_at),
        }


@dataclass
class _CodeTally:
    count: int = 0
    samples: list[ErrorReport] = field(default_factory=list)


@dataclass
class ErrorWindow:
    """The failures of one meter (or unmetered event name) in one validation window."""

    event_type: str
    meter_id: str | None
    event_name: str
    start: float
    end: float
    error_count: int = 0
    codes: dict[str, _CodeTally] = field(default_factory=dict)  # in order of first failure

    def related_object(self) -> dict[str, str]:
        """The meter, as a thin event names it; {} for no_meter_found, which has none."""
        if self.meter_id is None:
            return {}
        return {
            "id": self.meter_id,
            "type": "billing.meter",
            "url": f"/v1/billing/meters/{self.meter_id}",
        }

    def data(self) -> dict[str, Any]:
        """The event's `data`, as GET /v2/core/events/{id} returns it."""
        count = self.error_count
        summary = "There is 1 invalid event" if count == 1 else f"There are {count} invalid events"
        return {
            "developer_message_summary": summary,
            "reason": {
                "error_count": count,
                "error_types": [
                    {
                        "code": code,
                        "error_count": tally.count,
                        "sample_errors": [
                            {
                                "error_message": sample.message,
                                "request": {"identifier": sample.identifier},
                            }
                            for sample in tally.samples
                        ],
                    }
                    for code, tally in self.codes.items()
                ],
            },
            "validation_start": format_rfc3339(self.start),
            "validation_end": format_rfc3339(self.end),
        }


class ErrorWindows:
    """Open validation windows, filled by failures until the clock passes their end.

    Not thread-safe: the account calls it under its own lock.
    """

    def __init__(self) -> None:
        self._open: dict[tuple[str, str, float], ErrorWindow] = {}

    @property
    def pending(self) -> int:
        return len(self._open)

    def add(self, report: ErrorReport, window_s: float, samples_per_code: int) -> None:
        start = math.floor(report.received_at / window_s) * window_s
        if report.meter_id is None:  # no meter: Stripe reports these per event name
            key = (NO_METER_FOUND, report.event_name, start)
        else:
            key = (ERROR_REPORT_TRIGGERED, report.meter_id, start)
        window = self._open.get(key)
        if window is None:
            window = self._open[key] = ErrorWindow(
                key[0], report.meter_id, report.event_name, start, start + window_s
            )
        window.error_count += 1
        tally = window.codes.setdefault(report.code, _CodeTally())
        tally.count += 1
        if len(tally.samples) < samples_per_code:
            tally.samples.append(report)

    def close(self, now: float) -> list[ErrorWindow]:
        """Take every window that has ended by now, earliest first."""
        ended = [key for key, window in self._open.items() if window.end <= now]
        closed = [self._open.pop(key) for key in ended]
        closed.sort(key=lambda w: (w.end, w.start, w.event_type, w.meter_id or w.event_name))
        return closed

    def clear(self) -> None:
        self._open.clear()
