"""Asynchronous validation failures reported as Stripe reports them: one thin event per meter
(per event name without a meter) and validation window, with the count, the count per code
and capped samples; created once the emulator's clock has passed the window."""

from __future__ import annotations

from collections import Counter
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from devkit.emulator.error_reports import (
    ERROR_REPORT_TRIGGERED,
    NO_METER_FOUND,
    ErrorReport,
    ErrorWindows,
)
from devkit.emulator.state import EmulatorState, Settings
from devkit.emulator.v2_events import ThinEvent

METERS: list[dict[str, Any]] = [
    {"id": "mtr_api", "event_name": "api_requests"},
    {"id": "mtr_logins", "event_name": "logins", "default_aggregation": {"formula": "count"}},
    {"id": "mtr_old", "event_name": "legacy", "status": "inactive"},
]
T0 = 1_800_000_000.0  # a window boundary for 10-second windows


def account(**settings: Any) -> EmulatorState:
    state = EmulatorState(settings=Settings(**settings))
    state.load_meters([dict(m) for m in METERS])
    state.clock.set(T0 + 1)
    return state


def bad(identifier: str, name: str = "api_requests", value: str = "zero") -> dict[str, Any]:
    return {
        "event_name": name,
        "identifier": identifier,
        "payload": {"stripe_customer_id": "cus_1", "value": value},
    }


def send(state: EmulatorState, *events: dict[str, Any]) -> None:
    state.accept_stream(list(events), [None] * len(events))


def test_failures_wait_until_their_window_has_passed() -> None:
    state = account()
    state_events: list[ThinEvent] = []
    state.on_thin_events = state_events.extend
    send(state, bad("a"), bad("b", value="-1"))
    assert state.settle() == []  # the window [T0, T0 + 10) is still open
    state.clock.advance(8.9)
    assert state.settle() == []

    state.clock.advance(0.2)  # now T0 + 10.1
    [event] = state.settle()

    assert state_events == [event]
    assert event.type == ERROR_REPORT_TRIGGERED
    assert event.related_object == {
        "id": "mtr_api",
        "type": "billing.meter",
        "url": "/v1/billing/meters/mtr_api",
    }
    assert event.data == {
        "developer_message_summary": "There are 2 invalid events",
        "reason": {
            "error_count": 2,
            "error_types": [
                {
                    "code": "meter_event_invalid_value",
                    "error_count": 2,
                    "sample_errors": [
                        {
                            "error_message": "The value must be a positive integer, got 'zero'.",
                            "request": {"identifier": "a"},
                        },
                        {
                            "error_message": "The value must be a positive integer, got '-1'.",
                            "request": {"identifier": "b"},
                        },
                    ],
                }
            ],
        },
        "validation_start": "2027-01-15T08:00:00.000Z",
        "validation_end": "2027-01-15T08:00:10.000Z",
    }
    assert state.settle() == []  # a window is reported once
    assert state.thin_events.all() == [event]


def test_one_event_per_meter_and_window_and_one_per_unmetered_event_name() -> None:
    state = account()
    send(state, bad("a"), bad("l", name="logins"), bad("n1", name="nope"), bad("n2", name="nope"))
    send(state, bad("o", name="legacy"), bad("m", name="missing"))
    state.clock.advance(10)  # into the next window
    send(state, bad("later"))
    state.clock.advance(10)

    events = state.settle()

    keys = [(e.type, e.related_object.get("id"), e.data["reason"]["error_count"]) for e in events]
    assert sorted(keys, key=str) == sorted(
        [
            (ERROR_REPORT_TRIGGERED, "mtr_api", 1),
            (ERROR_REPORT_TRIGGERED, "mtr_logins", 1),
            (ERROR_REPORT_TRIGGERED, "mtr_old", 1),  # archived_meter names its meter
            (NO_METER_FOUND, None, 2),
            (NO_METER_FOUND, None, 1),
            (ERROR_REPORT_TRIGGERED, "mtr_api", 1),  # the second window
        ],
        key=str,
    )
    unmetered = [e for e in events if e.type == NO_METER_FOUND]
    assert all(e.related_object == {} for e in unmetered)
    [nope] = [e for e in unmetered if e.data["reason"]["error_count"] == 2]
    [no_meter] = nope.data["reason"]["error_types"]
    assert no_meter["code"] == "no_meter"
    assert no_meter["sample_errors"][0]["error_message"] == (
        "No meter was found matching event_name nope."
    )
    starts = sorted({e.data["validation_start"] for e in events})
    assert starts == ["2027-01-15T08:00:00.000Z", "2027-01-15T08:00:10.000Z"]
    assert [e.seq for e in events] == sorted(e.seq for e in events)


def test_samples_are_capped_per_code_and_counts_add_up() -> None:
    state = account(error_samples_per_code=2)
    no_customer = {"event_name": "api_requests", "identifier": "nc", "payload": {"value": "1"}}
    send(state, *(bad(f"v{i}") for i in range(5)), no_customer)
    state.clock.advance(10)

    [event] = state.settle()

    reason = event.data["reason"]
    by_code = {t["code"]: t for t in reason["error_types"]}
    assert reason["error_count"] == 6 == sum(t["error_count"] for t in reason["error_types"])
    assert by_code["meter_event_invalid_value"]["error_count"] == 5
    samples = by_code["meter_event_invalid_value"]["sample_errors"]
    assert [s["request"]["identifier"] for s in samples] == ["v0", "v1"]
    [sample] = by_code["meter_event_no_customer_defined"]["sample_errors"]
    assert (
        sample["error_message"] == "Customer mapping key stripe_customer_id not found in payload."
    )


def test_window_length_is_a_setting() -> None:
    state = account(error_window_s=60)
    send(state, bad("a"))
    state.clock.advance(30)
    assert state.settle() == []
    state.clock.advance(30)
    [event] = state.settle()
    assert (event.data["validation_start"], event.data["validation_end"]) == (
        "2027-01-15T08:00:00.000Z",
        "2027-01-15T08:01:00.000Z",
    )


def test_an_unknown_customer_is_reported_when_the_account_knows_its_customers() -> None:
    state = account()
    good = {**bad("known"), "payload": {"stripe_customer_id": "cus_1", "value": "1"}}
    stranger = {**bad("stranger"), "payload": {"stripe_customer_id": "cus_x", "value": "1"}}
    send(state, good, stranger)
    assert state.errors() == []  # no list of customers: every customer is known

    state.settings.known_customers = frozenset({"cus_1"})
    send(state, {**good, "identifier": "known2"}, {**stranger, "identifier": "stranger2"})

    assert [(r.code, r.identifier) for r in state.errors()] == [
        ("meter_event_customer_not_found", "stranger2")
    ]
    statuses = {e.identifier: e.status for e in state.events()}
    assert statuses == {
        "known": "counted",
        "stranger": "counted",
        "known2": "counted",
        "stranger2": "invalid",
    }


def test_the_sync_endpoint_accepts_an_unknown_customer_then_reports_it() -> None:
    state = account(known_customers=frozenset({"cus_1"}))
    raw = {
        "event_name": "api_requests",
        "identifier": "s",
        "payload": {"stripe_customer_id": "cus_x", "value": "3"},
    }

    stored = state.create_sync_event(raw, None, 0)

    assert stored.status == "invalid"
    assert [r.code for r in state.errors()] == ["meter_event_customer_not_found"]
    assert state.identifiers()["s"].counted == 0


def test_reset_forgets_open_windows_and_events() -> None:
    state = account()
    send(state, bad("a"))
    state.clock.advance(10)
    state.settle()
    send(state, bad("b"))
    state.reset()
    state.clock.set(T0 + 100)
    assert state.settle() == []
    assert state.thin_events.all() == []


reports = st.lists(
    st.tuples(
        st.sampled_from(["mtr_a", "mtr_b", None]),
        st.sampled_from(["no_meter", "meter_event_invalid_value", "timestamp_in_future"]),
        st.floats(min_value=0, max_value=59.999),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(reports, st.integers(min_value=1, max_value=4), st.sampled_from([1.0, 7.5, 10.0]))
def test_every_failure_is_counted_once_in_the_window_that_holds_it(
    failures: list[tuple[str | None, str, float]], cap: int, window_s: float
) -> None:
    windows = ErrorWindows()
    for index, (meter, code, at) in enumerate(failures):
        name = "unmetered" if meter is None else f"name_of_{meter}"
        report = ErrorReport(code, f"m{index}", f"id{index}", name, T0 + at, meter)
        windows.add(report, window_s, cap)

    closed = windows.close(T0 + 60 + window_s)

    assert windows.pending == 0
    assert sum(w.error_count for w in closed) == len(failures)
    keys = [(w.event_type, w.meter_id, w.start) for w in closed]
    assert len(keys) == len(set(keys))  # one event per meter and window
    for window in closed:
        data = window.data()
        assert data["reason"]["error_count"] == sum(
            t["error_count"] for t in data["reason"]["error_types"]
        )
        for kind in data["reason"]["error_types"]:
            assert len(kind["sample_errors"]) == min(cap, kind["error_count"])
    expected = Counter((meter, code, (at // window_s) * window_s) for meter, code, at in failures)
    found = Counter(
        {
            (w.meter_id, code, w.start - T0): tally.count
            for w in closed
            for code, tally in w.codes.items()
        }
    )
    assert {(m, c, round(s, 6)): n for (m, c, s), n in found.items()} == {
        (m, c, round(s, 6)): n for (m, c, s), n in expected.items()
    }
