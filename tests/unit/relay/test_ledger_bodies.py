"""A reported event's body, read back from the ledger: Stripe's validation windows last seconds,
so its report can come while the forwarder invocation that sent the event is still at work and
has not written its ledger object yet. The lookup reads the objects written since, every few
seconds, until the ledger is settled for the window (or its budget is spent)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import cast

import pytest

from meter_relay.events import MeterEvent, MeterKeys, ValidationRules
from meter_relay.ledger import compress, encode_events, ledger_text, line_of
from meter_relay.ledger_sql import Table
from meter_relay.ledger_store import POLL_SECONDS, SETTLED_AFTER, LedgerBodies, LedgerBucket

WINDOW_END = datetime(2026, 12, 6, 4, 20, 10, tzinfo=UTC)


class Clock:
    """Seconds since the report came in: sleeping moves it on."""

    def __init__(self, came_after_window: float) -> None:
        self.seconds = 0.0
        self.came = WINDOW_END + timedelta(seconds=came_after_window)
        self.sleeps = 0

    def monotonic(self) -> float:
        return self.seconds

    def now(self) -> datetime:
        return self.came + timedelta(seconds=self.seconds)

    def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        self.seconds += seconds


class GrowingLedger:
    """The ledger's events objects, each listed from a given moment on (when the forwarder
    invocation that wrote it ended)."""

    def __init__(self, clock: Clock, objects: dict[str, tuple[float, bytes]]) -> None:
        self.clock = clock
        self.objects = objects  # key -> (written when, in seconds after the report came; data)
        self.fetched: list[str] = []

    def keys(
        self, table: Table, since: datetime, until: datetime, written_from: datetime | None = None
    ) -> list[str]:
        assert table.name == "events"
        assert since <= WINDOW_END <= until
        return [
            key
            for key, (at, _) in self.objects.items()
            if at <= self.clock.seconds
            and (written_from is None or self.clock.came + timedelta(seconds=at) >= written_from)
        ]

    def fetch(self, keys: Sequence[str], into: Callable[[str, bytes], None]) -> None:
        for key in keys:
            self.fetched.append(key)
            into(key, self.objects[key][1])


def ledger_object(*identifiers: str) -> bytes:
    return encode_events(
        line_of(
            MeterEvent("api_requests", {"stripe_customer_id": "cus_1", "value": "3"}, i, "t"),
            MeterKeys(),
            "2026-12-06T04:20:05.000Z",
            f"m-{i}",
            "request-1",
        )
        for i in identifiers
    )


def lookup(clock: Clock, ledger: GrowingLedger, budget: float = 90.0) -> LedgerBodies:
    return LedgerBodies(
        cast("LedgerBucket", ledger),
        budget_seconds=budget,
        clock=clock.monotonic,
        now=clock.now,
        sleep=clock.sleep,
    )


def test_an_event_written_after_its_report_came_is_found_when_the_forwarder_writes_it() -> None:
    clock = Clock(came_after_window=3)
    ledger = GrowingLedger(
        clock,
        {
            "events/early": (0.0, ledger_object("other-1")),
            "events/late": (7.0, ledger_object("late-1")),  # its invocation ends 7 s later
        },
    )
    found = lookup(clock, ledger).bodies(["late-1"], WINDOW_END - timedelta(seconds=10), WINDOW_END)
    assert set(found) == {"late-1"}
    assert clock.sleeps == 4  # 0, 2, 4, 6: not yet; 8: there
    assert ledger.fetched == ["events/early", "events/late"]  # each object read once


def test_an_event_the_relay_never_sent_is_waited_for_until_the_ledger_is_settled() -> None:
    clock = Clock(came_after_window=5)
    ledger = GrowingLedger(clock, {"events/one": (0.0, ledger_object("sent-1"))})
    found = lookup(clock, ledger).bodies(
        ["sent-1", "foreign-1"], WINDOW_END - timedelta(seconds=10), WINDOW_END
    )
    assert set(found) == {"sent-1"}
    assert clock.now() >= WINDOW_END + SETTLED_AFTER
    assert clock.now() < WINDOW_END + SETTLED_AFTER + timedelta(seconds=POLL_SECONDS)


def test_objects_written_before_the_window_began_are_not_read() -> None:
    clock = Clock(came_after_window=3)
    ledger = GrowingLedger(
        clock,
        {
            "events/an-hour-ago": (-3600.0, ledger_object("old-1")),
            "events/in-the-window": (-5.0, ledger_object("sent-1")),
        },
    )
    found = lookup(clock, ledger).bodies(
        ["sent-1", "old-1"], WINDOW_END - timedelta(seconds=10), WINDOW_END
    )
    assert set(found) == {"sent-1"}  # Stripe received old-1 before this window: not its event
    assert "events/an-hour-ago" not in ledger.fetched


def test_a_report_of_a_settled_window_is_read_once() -> None:
    clock = Clock(came_after_window=SETTLED_AFTER.total_seconds() + 600)
    ledger = GrowingLedger(clock, {"events/one": (0.0, ledger_object("sent-1"))})
    found = lookup(clock, ledger).bodies(
        ["sent-1", "foreign-1"], WINDOW_END - timedelta(seconds=10), WINDOW_END
    )
    assert set(found) == {"sent-1"}
    assert clock.sleeps == 0


@pytest.mark.parametrize("budget", [0.0, 5.0, 30.0])
def test_the_budget_bounds_the_wait(budget: float) -> None:
    clock = Clock(came_after_window=1)
    ledger = GrowingLedger(clock, {"events/one": (0.0, ledger_object("sent-1"))})
    found = lookup(clock, ledger, budget).bodies(["foreign-1"], WINDOW_END, WINDOW_END)
    assert found == {}
    assert clock.seconds <= budget


def test_the_bodies_of_an_object_holding_a_lone_surrogate_are_all_found() -> None:
    """msgspec refuses a lone surrogate's escape: the object's events are read by json instead,
    and each body is the event as sent, that surrogate's escape included."""
    odd = MeterEvent("api_requests", {"stripe_customer_id": "cus_\udc80", "value": "3"}, "odd", "t")
    plain = MeterEvent("api_requests", {"stripe_customer_id": "cus_1", "value": "3"}, "plain", "t")
    text = ledger_text([odd, plain], ["m-1", "m-2"], ValidationRules(), WINDOW_END, "request-1")
    clock = Clock(came_after_window=SETTLED_AFTER.total_seconds() + 600)
    ledger = GrowingLedger(clock, {"events/one": (0.0, compress(text))})

    found = lookup(clock, ledger).bodies(
        ["odd", "plain"], WINDOW_END - timedelta(seconds=10), WINDOW_END
    )

    assert found == {"odd": odd.stripe_text(), "plain": plain.stripe_text()}
    assert '"cus_\\udc80"' in found["odd"]
