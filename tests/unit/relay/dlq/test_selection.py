"""Filters (which messages, and which of their events) and fixes (corrections before a replay)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from meter_relay.dlq.reading import read_message
from meter_relay.dlq.selection import Filters, Fix, Reasons
from tests.fakes import sqs_message
from tests.unit.relay.dlq.builders import MID, RULES, SENT, dlq_message, forwarder_letters
from tests.unit.relay.dlq.builders import read_letter as read_letter_of

# ----- filters ----------------------------------------------------------------------------------


def test_filters_match_what_they_name() -> None:
    message = dlq_message()
    assert Filters().matches(message)
    assert Filters(codes={"payload_invalid_value", "x"}).matches(message)
    assert not Filters(codes={"no_meter"}).matches(message)
    assert Filters(event_names={"api_requests"}).matches(message)
    assert not Filters(event_names={"search_calls"}).matches(message)
    assert Filters(customers={"cus_a"}).matches(message)
    assert not Filters(customers={"cus_b"}).matches(message)
    assert Filters(since=SENT, until=SENT).matches(message)  # both bounds inclusive
    assert not Filters(since=SENT + timedelta(seconds=1)).matches(message)
    assert not Filters(until=SENT - timedelta(seconds=1)).matches(message)
    both = Filters(codes={"payload_invalid_value"}, customers={"cus_b"})
    assert not both.matches(message)  # every filter must hold


def test_filters_on_events_never_match_a_message_without_events() -> None:
    (letter,) = forwarder_letters("not json")
    message = read_letter_of(letter)
    assert Filters(codes={"message_not_json"}).matches(message)
    assert not Filters(event_names={"api_requests"}).matches(message)
    assert not Filters(customers={"cus_a"}).matches(message)


def mixed_envelope() -> Any:
    """An envelope SQS moved whole: three customers, two meters."""
    events = [
        {"event_name": "api_requests", "payload": {"stripe_customer_id": "cus_a", "value": "1"}},
        {"event_name": "api_requests", "payload": {"stripe_customer_id": "cus_b", "value": "1"}},
        {"event_name": "search_calls", "payload": {"customer": "cus_a", "calls": "1"}},
        {"event_name": "search_calls", "payload": {"customer": "cus_c", "calls": "1"}},
    ]
    return read_message(sqs_message(json.dumps({"events": events}), MID), RULES)


@pytest.mark.parametrize(
    ("filters", "chosen"),
    [
        (Filters(), [0, 1, 2, 3]),
        (Filters(customers={"cus_a"}), [0, 2]),
        (Filters(event_names={"search_calls"}), [2, 3]),
        (Filters(customers={"cus_a"}, event_names={"search_calls"}), [2]),
        (Filters(customers={"cus_b", "cus_c"}), [1, 3]),
        (Filters(customers={"cus_b"}, event_names={"search_calls"}), []),
    ],
)
def test_the_events_chosen_are_exactly_those_every_event_filter_holds_for(
    filters: Filters, chosen: list[int]
) -> None:
    message = mixed_envelope()
    assert [e.index for e in filters.chosen_events(message)] == chosen
    assert filters.matches(message) is bool(chosen)  # a message: when any event is chosen


def test_passing_reasons_only_leave_the_letters_of_a_permanent_reason() -> None:
    moved = mixed_envelope()
    refused = dlq_message(code="payload_invalid_value")
    passing = Filters(reasons=Reasons.PASSING)
    assert passing.matches(moved)
    assert not passing.matches(refused)
    assert Filters(codes={"payload_invalid_value"}).matches(refused)


def test_filters_from_the_lambda_input() -> None:
    filters = Filters.from_dict(
        {
            "code": ["a", "b"],
            "event_name": "api_requests",  # a single string is one value
            "customer": ["cus_a"],
            "since": "2026-01-01T00:00:00Z",
            "until": "2026-02-01T00:00:00.000+01:00",
            "max": 5,
        }
    )
    assert filters == Filters(
        {"a", "b"},
        {"api_requests"},
        {"cus_a"},
        datetime(2026, 1, 1, tzinfo=UTC),
        datetime(2026, 1, 31, 23, tzinfo=UTC),
        5,
    )
    assert Filters.from_dict({}) == Filters()
    assert Filters.from_dict(filters.to_dict()) == filters


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"codes": ["a"]}, "unknown filters"),
        ({"event_names": "x", "limit": 3}, "unknown filters"),
        ({"since": "2026-01-01"}, "since must be an RFC 3339"),
        ({"until": "yesterday"}, "until must be an RFC 3339"),
        ({"since": "2026-13-01T00:00:00Z"}, "since must be an RFC 3339"),
        ({"max": "many"}, "max is a whole number above 0, not 'many'"),
        ({"max": 0}, "max is a whole number above 0, not 0"),
        ({"max": -1}, "max is a whole number above 0, not -1"),
        ({"max": 2.5}, "max is a whole number above 0"),
        ({"max": True}, "max is a whole number above 0"),
        ([], "filters is a JSON object"),
        ({"customer": ""}, "customer is a text or a list of texts, none empty, not ''"),
        ({"customer": []}, "customer is a text or a list of texts, none empty"),
        ({"code": 5}, "code is a text or a list of texts, none empty, not 5"),
        ({"customer": {"cus_a": 1}}, "customer is a text or a list of texts"),
        ({"event_name": ["api_requests", ""]}, "event_name is a text or a list of texts"),
    ],
)
def test_filters_refuse_unknown_keys_and_bad_dates(data: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Filters.from_dict(data)


# ----- fixes ------------------------------------------------------------------------------------


def test_fix_renames_event_names_and_payload_keys_and_remaps_customers() -> None:
    fix = Fix.from_dict(
        {
            "event_names": {"search_call": "search_calls"},
            "payload_keys": {"customer_id": "customer", "n": "calls"},
            "customers": {"cus_old": "cus_new"},
        }
    )
    raw = {
        "event_name": "search_call",
        "identifier": "keep-me",
        "payload": {"customer_id": "cus_old", "n": "3", "region": "eu"},
        "timestamp": "2026-06-01T11:00:00Z",
    }
    fixed = fix.apply(raw, RULES)
    assert fixed == {
        "event_name": "search_calls",
        "identifier": "keep-me",  # never touched
        "payload": {"customer": "cus_new", "calls": "3", "region": "eu"},
        "timestamp": "2026-06-01T11:00:00Z",
    }
    assert raw["event_name"] == "search_call"  # a new dict: the DLQ's copy is unchanged
    assert raw["payload"] == {"customer_id": "cus_old", "n": "3", "region": "eu"}


def test_fix_remaps_customers_only_under_the_meters_customer_key() -> None:
    fix = Fix(customers={"cus_old": "cus_new"})
    api = {"event_name": "api_requests", "payload": {"stripe_customer_id": "cus_old"}}
    assert fix.apply(api, RULES)["payload"] == {"stripe_customer_id": "cus_new"}
    search = {"event_name": "search_calls", "payload": {"customer": "cus_old", "ref": "cus_old"}}
    assert fix.apply(search, RULES)["payload"] == {"customer": "cus_new", "ref": "cus_old"}
    other = {"event_name": "search_calls", "payload": {"stripe_customer_id": "cus_old"}}
    assert fix.apply(other, RULES)["payload"] == {"stripe_customer_id": "cus_old"}


def test_fix_leaves_what_is_not_an_event_alone() -> None:
    fix = Fix(event_names={"a": "b"})
    assert fix.apply("text", RULES) == "text"
    assert fix.apply({"event_name": "c", "payload": "x"}, RULES) == {
        "event_name": "c",
        "payload": "x",
    }
    assert Fix().empty
    assert not fix.empty


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"event_name": {"a": "b"}}, "unknown fix sections"),
        ({"event_names": ["a", "b"]}, "event_names must map"),
        ({"customers": {"cus_a": ""}}, "customers must map"),
        ({"payload_keys": {"a": 1}}, "payload_keys must map"),
        ("names", "fix is a JSON object"),
    ],
)
def test_fix_refuses_what_it_cannot_apply(data: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Fix.from_dict(data)


def test_fix_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "fix.json"
    path.write_text(json.dumps({"event_names": {"a": "b"}}))
    assert Fix.from_file(path) == Fix(event_names={"a": "b"})
    path.write_text("[]")
    with pytest.raises(ValueError, match="must hold a JSON object"):
        Fix.from_file(path)
    path.write_text("{")
    with pytest.raises(ValueError, match="cannot read the fix file"):
        Fix.from_file(path)
    with pytest.raises(ValueError, match="cannot read the fix file"):
        Fix.from_file(tmp_path / "missing.json")
