"""The emulated account's rules, without HTTP: validation codes, deduplication, cancels,
summaries. The clock is moved instead of waited for."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from devkit.emulator.state import DAY, ApiError, EmulatorState, Settings
from devkit.emulator.summaries import SummaryQuery

METERS: list[dict[str, Any]] = [
    {"id": "mtr_api", "event_name": "api_requests", "default_aggregation": {"formula": "sum"}},
    {
        "id": "mtr_search",
        "event_name": "search_calls",
        "customer_mapping": {"event_payload_key": "customer"},
        "value_settings": {"event_payload_key": "calls"},
    },
    {"id": "mtr_logins", "event_name": "logins", "default_aggregation": {"formula": "count"}},
    {"id": "mtr_last", "event_name": "seats", "default_aggregation": {"formula": "last"}},
    {"id": "mtr_old", "event_name": "legacy", "status": "inactive"},
]


@pytest.fixture
def state() -> EmulatorState:
    account = EmulatorState(settings=Settings())
    account.load_meters([dict(m) for m in METERS])
    return account


def event(
    identifier: str, value: str = "5", name: str = "api_requests", **payload: str
) -> dict[str, Any]:
    body = {"stripe_customer_id": "cus_1", "value": value, **payload}
    return {"event_name": name, "identifier": identifier, "payload": body}


def stream(state: EmulatorState, *events: dict[str, Any], at: float | None = None) -> None:
    state.accept_stream(list(events), [at] * len(events))


def statuses(state: EmulatorState) -> dict[str, str]:
    return {e.identifier: e.status for e in state.events()}


def test_stream_events_are_counted_once_validated(state: EmulatorState) -> None:
    stream(state, event("a"), event("b"))
    assert statuses(state) == {"a": "counted", "b": "counted"}
    assert state.errors() == []


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (event("x", name="unknown"), "no_meter"),
        (event("x", name="legacy"), "archived_meter"),
        (
            {"event_name": "api_requests", "identifier": "x", "payload": {"value": "1"}},
            "meter_event_no_customer_defined",
        ),
        (
            {
                "event_name": "api_requests",
                "identifier": "x",
                "payload": {"stripe_customer_id": "cus_1"},
            },
            "meter_event_invalid_value",
        ),
        (event("x", value="0"), "meter_event_invalid_value"),
        (event("x", value="-3"), "meter_event_invalid_value"),
        (event("x", value="2.5"), "meter_event_invalid_value"),
        (event("x", value="ten"), "meter_event_invalid_value"),
        # the meter's own keys: "customer" and "calls", not the defaults
        (event("x", name="search_calls"), "meter_event_no_customer_defined"),
    ],
)
def test_async_validation_reports_stripes_codes(
    state: EmulatorState, raw: dict[str, Any], code: str
) -> None:
    stream(state, raw, event("good"))
    reports = state.errors()
    assert [(r.code, r.identifier) for r in reports] == [(code, "x")]
    assert statuses(state) == {"x": "invalid", "good": "counted"}


def test_custom_payload_keys_are_honoured(state: EmulatorState) -> None:
    stream(
        state,
        {
            "event_name": "search_calls",
            "identifier": "s",
            "payload": {"customer": "cus_9", "calls": "3"},
        },
    )
    assert statuses(state) == {"s": "counted"}


def test_timestamps_outside_35_days_back_or_5_minutes_ahead(state: EmulatorState) -> None:
    now = state.clock.now()
    stream(state, event("old"), at=now - 36 * DAY)
    stream(state, event("ahead"), at=now + 600)
    stream(state, event("edge"), at=now - 34 * DAY)
    stream(state, event("soon"), at=now + 60)
    codes = {r.identifier: r.code for r in state.errors()}
    assert codes == {"old": "timestamp_too_far_in_past", "ahead": "timestamp_in_future"}
    assert statuses(state)["edge"] == statuses(state)["soon"] == "counted"


def test_decimal_value_rule_admits_decimals_and_zero(state: EmulatorState) -> None:
    state.settings.value_rule = "decimal"
    stream(state, event("a", value="2.5"), event("b", value="0"), event("c", value="-1"))
    assert statuses(state) == {"a": "counted", "b": "counted", "c": "invalid"}


def test_decimal_value_rule_takes_only_numbers_as_json_writes_them(state: EmulatorState) -> None:
    state.settings.value_rule = "decimal"
    taken = {"e": "1e3", "f": "1.5E-2"}
    refused = {"s": " 5 ", "u": "1_000", "d": "\u0663", "m": "-0", "p": "+1", "h": ".5"}
    stream(state, *(event(i, value=v) for i, v in {**taken, **refused}.items()))
    assert statuses(state) == {
        **dict.fromkeys(taken, "counted"),
        **dict.fromkeys(refused, "invalid"),
    }


def test_duplicates_within_24_hours_are_accepted_not_counted(state: EmulatorState) -> None:
    stream(state, event("a"))
    state.clock.advance(DAY - 60)
    stream(state, event("a"))
    counts = state.identifiers()["a"]
    assert (counts.received, counts.counted) == (2, 1)
    state.clock.advance(120)  # now more than 24 hours after the counted one
    stream(state, event("a"))
    counts = state.identifiers()["a"]
    assert (counts.received, counts.counted) == (3, 2)


def test_an_invalid_event_does_not_hold_its_identifier(state: EmulatorState) -> None:
    stream(state, event("a", value="0"))
    stream(state, event("a", value="4"))
    assert state.identifiers()["a"].counted == 1


def test_events_without_identifier_get_distinct_generated_ones(state: EmulatorState) -> None:
    raw = {"event_name": "api_requests", "payload": {"stripe_customer_id": "c", "value": "1"}}
    stream(state, dict(raw), dict(raw))
    identifiers = [e.identifier for e in state.events()]
    assert len(set(identifiers)) == 2
    assert all(identifiers)


def test_backlog_is_judged_by_the_meters_of_its_arrival(state: EmulatorState) -> None:
    stream(state, event("before"))
    state.set_meter_status("mtr_api", active=False)
    stream(state, event("after"))
    assert statuses(state) == {"before": "counted", "after": "invalid"}
    assert [r.code for r in state.errors()] == ["archived_meter"]


def test_sync_event_errors_use_the_endpoint_codes(state: EmulatorState) -> None:
    cases = [
        (event("x", name="unknown"), 400, "no_meter"),
        (event("x", name="legacy"), 400, "archived_meter"),
        (
            {"event_name": "api_requests", "payload": {"value": "1"}},
            400,
            "payload_no_customer_defined",
        ),
        (
            {"event_name": "api_requests", "payload": {"stripe_customer_id": "c"}},
            400,
            "payload_no_value_defined",
        ),
        (event("x", value="1.5"), 400, "payload_invalid_value"),
    ]
    for raw, status, code in cases:
        with pytest.raises(ApiError) as caught:
            state.create_sync_event(raw, None, hold=0)
        assert (caught.value.status, caught.value.code) == (status, code)
    assert state.events() == []


def test_sync_duplicate_after_a_stream_event(state: EmulatorState) -> None:
    stream(state, event("a"))
    with pytest.raises(ApiError) as caught:
        state.create_sync_event(event("a"), None, hold=0)
    assert caught.value.code == "duplicate_meter_event"
    assert state.identifiers()["a"].counted == 1


def test_sync_concurrent_same_customer_and_meter_is_409(state: EmulatorState) -> None:
    results: list[str] = []

    def send(identifier: str, hold: float) -> None:
        try:
            state.create_sync_event(event(identifier), None, hold=hold)
            results.append("ok")
        except ApiError as error:
            results.append(f"{error.status} {error.code}")

    first = threading.Thread(target=send, args=("a", 0.5))
    first.start()
    while not state._inflight:  # the first request holds its slot
        threading.Event().wait(0.005)
    send("b", 0)
    first.join()
    assert sorted(results) == ["409 too_many_concurrent_requests", "ok"]
    send("c", 0)  # the slot is free again
    assert results[-1] == "ok"


def test_cancel_within_24_hours_then_counts_no_more(state: EmulatorState) -> None:
    stream(state, event("a", value="7"), event("b", value="3"))
    adjustment = state.cancel("api_requests", "a")
    assert adjustment.status == "pending"
    assert state.adjustments()[0].status == "complete"
    meter = state.get_meter("mtr_api")
    now = int(state.clock.now())
    start = now - now % 60 - 3600
    [summary] = state.summaries(meter, SummaryQuery("cus_1", start, start + 7200, None))
    assert summary["aggregated_value"] == 3.0


@pytest.mark.parametrize(
    ("name", "identifier", "advance"),
    [
        ("api_requests", "missing", 0.0),
        ("logins", "a", 0.0),  # wrong event_name for that identifier
        ("api_requests", "a", DAY + 1),  # past Stripe's 24-hour cancel window
    ],
)
def test_impossible_cancels_are_invalid_cancel_configuration(
    state: EmulatorState, name: str, identifier: str, advance: float
) -> None:
    stream(state, event("a"))
    state.clock.advance(advance)
    with pytest.raises(ApiError) as caught:
        state.cancel(name, identifier)
    assert (caught.value.status, caught.value.code) == (400, "invalid_cancel_configuration")


def test_cancelling_twice_is_refused(state: EmulatorState) -> None:
    stream(state, event("a"))
    state.cancel("api_requests", "a")
    with pytest.raises(ApiError, match="already cancelled"):
        state.cancel("api_requests", "a")


def test_a_cancel_under_its_idempotency_key_answers_again_as_first(state: EmulatorState) -> None:
    """Within 24 hours the same key and request get the first answer; the key with another
    request is refused; after 24 hours the key is forgotten (and the cancel refused as the
    second it is)."""
    stream(state, event("a"), event("b"))
    first = state.cancel_once("k-a", "api_requests", "a")
    assert state.cancel_once("k-a", "api_requests", "a") == first
    with pytest.raises(ApiError) as caught:
        state.cancel_once("k-a", "api_requests", "b")
    assert caught.value.code == "idempotency_error"
    state.clock.advance(86_401)
    with pytest.raises(ApiError, match="already cancelled"):
        state.cancel_once("k-a", "api_requests", "a")


def test_summaries_aggregate_by_formula_and_window(state: EmulatorState) -> None:
    hour = int(state.clock.now()) // 3600 * 3600 - 3 * 3600
    for i, (offset, value) in enumerate([(60, "2"), (120, "3"), (3600 + 5, "10")]):
        for name in ("api_requests", "logins", "seats"):
            stream(state, event(f"{name}{i}", value=value, name=name), at=float(hour + offset))
    cases = {"mtr_api": [5.0, 10.0], "mtr_logins": [2.0, 1.0], "mtr_last": [3.0, 10.0]}
    for meter_id, expected in cases.items():
        meter = state.get_meter(meter_id)
        hourly = state.summaries(meter, SummaryQuery("cus_1", hour, hour + 7200, 3600))
        assert [s["aggregated_value"] for s in hourly] == expected[::-1]  # newest first
        assert [s["start_time"] for s in hourly] == [hour + 3600, hour]
    other = state.summaries(
        state.get_meter("mtr_api"), SummaryQuery("cus_2", hour, hour + 7200, None)
    )
    assert other[0]["aggregated_value"] == 0.0


def test_duplicate_active_event_names_are_refused(state: EmulatorState) -> None:
    with pytest.raises(ApiError) as caught:
        state.create_meter(
            {
                "display_name": "x",
                "event_name": "api_requests",
                "default_aggregation": {"formula": "sum"},
            }
        )
    assert caught.value.code == "resource_already_exists"
    created = state.create_meter(
        {"display_name": "x", "event_name": "legacy", "default_aggregation": {"formula": "sum"}}
    )
    assert created.status == "active"  # the inactive one does not block its name


def test_a_meter_has_the_events_received_while_it_was_active(state: EmulatorState) -> None:
    """A meter replaced by a new one for its event name keeps what it counted; the new one
    counts from its creation on, not the older meter's events (the same window, asked of each,
    gives each its own)."""
    hour = int(state.clock.now()) // 3600 * 3600 - 3600
    stream(state, event("before", value="2"), at=float(hour + 60))
    state.clock.advance(5)
    state.set_meter_status("mtr_api", active=False)
    state.clock.advance(5)
    spec = {"display_name": "v2", "event_name": "api_requests"}
    replacement = state.create_meter({**spec, "default_aggregation": {"formula": "sum"}})
    stream(state, event("after", value="7"), at=float(hour + 120))
    query = SummaryQuery("cus_1", hour, hour + 3600, None)
    [old] = state.summaries(state.get_meter("mtr_api"), query)
    [new] = state.summaries(replacement, query)
    assert (old["aggregated_value"], new["aggregated_value"]) == (2.0, 7.0)

    # the old one made active again counts from then on, not what went to the other meanwhile
    state.set_meter_status(replacement.id, active=False)
    state.set_meter_status("mtr_api", active=True)
    stream(state, event("again", value="20"), at=float(hour + 180))
    [old] = state.summaries(state.get_meter("mtr_api"), query)
    [new] = state.summaries(replacement, query)
    assert (old["aggregated_value"], new["aggregated_value"]) == (22.0, 7.0)


def test_a_meter_given_at_start_counts_events_whenever_they_arrive(state: EmulatorState) -> None:
    """One the account had before: a clock set back (a test's fixed date) loses nothing."""
    state.clock.set(state.clock.now() - 30 * 86400)
    hour = int(state.clock.now()) // 3600 * 3600 - 3600
    stream(state, event("early", value="4"), at=float(hour + 60))
    query = SummaryQuery("cus_1", hour, hour + 3600, None)
    [summary] = state.summaries(state.get_meter("mtr_api"), query)
    assert summary["aggregated_value"] == 4.0
    # one given inactive counts nothing, however far back the clock goes; its successor does
    state.load_meters([{"id": "mtr_new", "event_name": "legacy"}])
    stream(state, event("legacy-1", value="4", name="legacy"), at=float(hour + 60))
    [old] = state.summaries(state.get_meter("mtr_old"), query)
    [new] = state.summaries(state.get_meter("mtr_new"), query)
    assert (old["aggregated_value"], new["aggregated_value"]) == (0.0, 4.0)


def test_sessions_expire_after_their_ttl(state: EmulatorState) -> None:
    state.settings.session_ttl = 60
    session = state.create_session()
    state.check_session_token(session.token)
    state.clock.advance(61)
    with pytest.raises(ApiError) as caught:
        state.check_session_token(session.token)
    assert (caught.value.status, caught.value.error_type) == (401, "temporary_session_expired")
    with pytest.raises(ApiError) as unknown:
        state.check_session_token("token_nope")
    assert unknown.value.code == "unauthorized"


def test_reset_forgets_events_and_restores_meters(state: EmulatorState) -> None:
    stream(state, event("a"))
    state.create_meter(
        {"display_name": "n", "event_name": "new_one", "default_aggregation": {"formula": "sum"}}
    )
    state.set_meter_status("mtr_api", active=False)
    state.reset(meters=True)
    assert state.events() == []
    assert state.get_meter("mtr_api").status == "active"
    assert {m.event_name for m in state.list_meters()} == {m["event_name"] for m in METERS}


def test_work_off_validates_what_waits_unless_the_lock_is_busy(state: EmulatorState) -> None:
    stream(state, event("a"))
    state.work_off()
    assert not state._backlog  # validated without a read
    holder_has_lock, release = threading.Event(), threading.Event()

    def hold() -> None:
        with state._lock:
            holder_has_lock.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    holder_has_lock.wait(10)
    stream(state, event("b"))
    state.work_off()  # returns at once: the lock is busy
    assert len(state._backlog) == 1
    release.set()
    holder.join()
    assert statuses(state) == {"a": "counted", "b": "counted"}  # a read drains the rest


def test_counts_per_identifier_across_batches_and_outcomes(state: EmulatorState) -> None:
    stream(state, event("a"), event("b", value="0"), event("a"))  # a twice in one batch
    stream(state, event("b"), event("c", value="x"))
    state.clock.advance(DAY + 1)
    stream(state, event("a"))  # counted again: past the 24-hour window
    counts = {i: (c.received, c.counted) for i, c in state.identifiers().items()}
    assert counts == {"a": (3, 2), "b": (2, 1), "c": (1, 0)}
    stats = state.stats()
    assert stats["events_by_status"] == {"counted": 3, "duplicate": 1, "invalid": 2}
    assert (stats["events_received"], stats["unique_identifiers"]) == (6, 3)
    assert stats["counted_more_than_once"] == 1
    assert [e.identifier for e in state.events(identifier="a")] == ["a", "a", "a"]
    assert [e.status for e in state.events(identifier="a")] == ["counted", "duplicate", "counted"]


def test_cancel_finds_the_counted_row_among_duplicates_of_its_batch(state: EmulatorState) -> None:
    stream(state, event("d", value="1"), event("a", value="7"), event("a", value="9"))
    state.cancel("api_requests", "a")
    assert [e.status for e in state.events(identifier="a")] == ["cancelled", "duplicate"]
    assert state.events(identifier="d")[0].status == "counted"


def test_a_stored_event_reads_back_as_sent(state: EmulatorState) -> None:
    at = state.clock.now() - 60
    stream(state, event("a", value="3", extra="kept"), at=at)
    [stored] = state.events()
    assert (stored.identifier, stored.event_name, stored.source) == ("a", "api_requests", "stream")
    assert stored.payload == {"stripe_customer_id": "cus_1", "value": "3", "extra": "kept"}
    assert stored.timestamp == at
    assert stored.received_at >= at
    assert stored.error_code is None
