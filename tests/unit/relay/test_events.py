"""The message contract (meter_relay.events) and its published JSON Schema.

Every test parses a real body, as the forwarder does; time is fixed (NOW, SENT), never read.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]

import meter_relay
from meter_relay.catalog import Meter
from meter_relay.events import (
    EVENT_FIELDS,
    UNREAD,
    ErrorCode,
    Judge,
    MeterEvent,
    MeterKeys,
    ParsedEvent,
    ParsedMessage,
    Rejection,
    ValidationRules,
    decode_body,
    format_timestamp,
    normalise_event,
    parse_message,
    parse_rfc3339,
    stream_body,
)

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
NOW_EPOCH = 1_780_315_200  # NOW in epoch seconds
SENT = NOW - timedelta(seconds=30)
MID = "3f1c0d8e-1b2a-4c5d-9e8f-0a1b2c3d4e5f"
RULES = ValidationRules()
SEARCH_RULES = ValidationRules.from_settings(
    '{"search_calls": {"customer_key": "customer", "value_key": "calls"}}', "positive_integer"
)
SCHEMA_PATH = Path(meter_relay.__file__).parent / "message.schema.json"
SCHEMA_CODES = frozenset(
    {
        ErrorCode.MESSAGE_NOT_JSON,
        ErrorCode.MESSAGE_NOT_CONTRACT,
        ErrorCode.PARAMETER_MISSING,
        ErrorCode.PARAMETER_INVALID,
        ErrorCode.PARAMETER_UNKNOWN,
    }
)
DROP = object()  # an override that removes the field

PROPERTY_SETTINGS = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def event(**fields: Any) -> dict[str, Any]:
    """A valid event for the default meter keys, with fields overridden (DROP removes one)."""
    base: dict[str, Any] = {
        "event_name": "api_requests",
        "payload": {"stripe_customer_id": "cus_1", "value": "1"},
    }
    base.update(fields)
    return {key: value for key, value in base.items() if value is not DROP}


def payload(**values: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"stripe_customer_id": "cus_1", "value": "1"}
    base.update(values)
    return {key: value for key, value in base.items() if value is not DROP}


def parse(
    body: Any,
    *,
    rules: ValidationRules = RULES,
    message_id: str = MID,
    sent_at: datetime = SENT,
) -> ParsedMessage:
    text = body if isinstance(body, str) else json.dumps(body)
    return parse_message(text, message_id, sent_at, rules, NOW)


def one(body: Any, **kwargs: Any) -> ParsedEvent:
    message = parse(body, **kwargs)
    assert message.rejection is None
    assert len(message.events) == 1
    return message.events[0]


def rejection_of(body: Any, **kwargs: Any) -> Rejection:
    parsed = one(body, **kwargs)
    assert parsed.event is None
    assert parsed.rejection is not None
    return parsed.rejection


def accepted(body: Any, **kwargs: Any) -> dict[str, Any]:
    parsed = one(body, **kwargs)
    assert parsed.rejection is None, parsed.rejection
    assert parsed.event is not None
    return parsed.event.to_stripe()


def rfc(moment: datetime) -> str:
    return format_timestamp(moment)


# ----- the two shapes, identifiers --------------------------------------------------------------


def test_a_single_event_is_normalised_with_a_derived_identifier_and_the_sent_time() -> None:
    parsed = one(event(payload=payload(value=25)))
    assert parsed.index == 0
    assert parsed.identifier == f"{MID}-0"
    assert parsed.event_name == "api_requests"
    assert parsed.event is not None
    assert parsed.event.to_stripe() == {
        "event_name": "api_requests",
        "payload": {"stripe_customer_id": "cus_1", "value": "25"},
        "identifier": f"{MID}-0",
        "timestamp": "2026-06-01T11:59:30.000Z",
    }


def test_an_envelope_gives_one_event_per_entry_in_order() -> None:
    body = {
        "events": [
            event(payload=payload(value="1")),
            event(event_name="logins", payload=payload(value="2")),
            event(payload=payload(value="3"), identifier="producer-3"),
        ]
    }
    message = parse(body)
    assert message.rejection is None
    assert [e.index for e in message.events] == [0, 1, 2]
    assert [e.identifier for e in message.events] == [f"{MID}-0", f"{MID}-1", "producer-3"]
    assert [e.event_name for e in message.events] == ["api_requests", "logins", "api_requests"]
    assert [e.event.payload["value"] for e in message.events if e.event] == ["1", "2", "3"]


def test_an_invalid_event_of_an_envelope_is_rejected_alone_and_keeps_its_index() -> None:
    body = {"events": [event(), event(payload=payload(value="0")), 7, event()]}
    message = parse(body)
    assert message.rejection is None
    codes = [e.rejection.code if e.rejection else None for e in message.events]
    assert codes == [None, "payload_invalid_value", "parameter_invalid", None]
    assert [e.identifier for e in message.events] == [f"{MID}-{i}" for i in range(4)]


def test_derived_identifiers_are_the_same_on_redelivery_and_differ_between_messages() -> None:
    body = json.dumps({"events": [event(), event(identifier="mine"), event()]})
    first = [e.identifier for e in parse(body).events]
    again = [e.identifier for e in parse(body, sent_at=SENT + timedelta(minutes=3)).events]
    other = [e.identifier for e in parse(body, message_id="other-message").events]
    assert first == again == [f"{MID}-0", "mine", f"{MID}-2"]
    assert other == ["other-message-0", "mine", "other-message-2"]


@pytest.mark.parametrize("identifier", ["a", "order-8812/line-1", "x" * 100, "é" * 100])
def test_a_producer_identifier_is_kept(identifier: str) -> None:
    assert accepted(event(identifier=identifier))["identifier"] == identifier


def test_a_null_identifier_is_derived_like_an_absent_one() -> None:
    assert accepted(event(identifier=None))["identifier"] == f"{MID}-0"


# ----- message-level rejections ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ("", "message_not_json"),
        ("{", "message_not_json"),
        ("not json", "message_not_json"),
        ("{'event_name': 'a'}", "message_not_json"),
        ('{"event_name": "a"} trailing', "message_not_json"),
        ("[]", "message_not_contract"),
        (json.dumps([event()]), "message_not_contract"),
        ('"an event"', "message_not_contract"),
        ("null", "message_not_contract"),
        ("42", "message_not_contract"),
        ("4.5", "message_not_contract"),
        ("true", "message_not_contract"),
        (json.dumps({"events": [event()], "source": "billing"}), "message_not_contract"),
        (json.dumps({"events": [event()], **event()}), "message_not_contract"),
        (json.dumps({"events": []}), "message_not_contract"),
        (json.dumps({"events": {"0": event()}}), "message_not_contract"),
        (json.dumps({"events": event()}), "message_not_contract"),
        (json.dumps({"events": None}), "message_not_contract"),
        (json.dumps({"events": "[]"}), "message_not_contract"),
    ],
)
def test_an_unusable_body_rejects_the_whole_message(body: str, code: str) -> None:
    message = parse(body)
    assert message.rejection is not None
    assert message.rejection.code == code
    assert message.rejection.param is None
    assert message.events == []
    assert message.message_id == MID


@pytest.mark.parametrize(
    "body",
    [
        "[" * 100_000 + "]" * 100_000,
        "[" * 100_000,
        '{"events": ' + "[" * 100_000 + "]" * 100_000 + "}",
        '{"a":' * 100_000 + "1" + "}" * 100_000,
    ],
    ids=["arrays", "unterminated", "in-envelope", "objects"],
)
def test_a_deeply_nested_body_is_rejected_without_crashing(body: str) -> None:
    message = parse(body)
    assert message.rejection is not None
    assert message.rejection.code in {"message_not_json", "message_not_contract"}
    assert message.events == []


def test_nesting_that_json_takes_is_a_payload_value_of_the_wrong_type() -> None:
    nested: Any = "deep"
    for _ in range(500):
        nested = [nested]
    rejection = rejection_of(event(payload=payload(region=nested)))
    assert (rejection.code, rejection.param) == ("parameter_invalid", "payload.region")


# ----- event-level rejections: form --------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "code", "param"),
    [
        (event(event_name=DROP), "parameter_missing", "event_name"),
        (event(event_name=None), "parameter_missing", "event_name"),
        (event(payload=DROP), "parameter_missing", "payload"),
        (event(payload=None), "parameter_missing", "payload"),
        (event(event_name=""), "parameter_invalid", "event_name"),
        (event(event_name="  \t"), "parameter_invalid", "event_name"),
        (event(event_name=7), "parameter_invalid", "event_name"),
        (event(event_name=True), "parameter_invalid", "event_name"),
        (event(event_name=["api_requests"]), "parameter_invalid", "event_name"),
        (event(payload="stripe_customer_id=cus_1"), "parameter_invalid", "payload"),
        (event(payload=[["value", "1"]]), "parameter_invalid", "payload"),
        (event(payload=1), "parameter_invalid", "payload"),
        (event(payload=payload(value=True)), "parameter_invalid", "payload.value"),
        (event(payload=payload(region=False)), "parameter_invalid", "payload.region"),
        (event(payload=payload(region=None)), "parameter_invalid", "payload.region"),
        (event(payload=payload(region={"a": "b"})), "parameter_invalid", "payload.region"),
        (event(payload=payload(region=["eu"])), "parameter_invalid", "payload.region"),
        (event(identifier=""), "parameter_invalid", "identifier"),
        (event(identifier="x" * 101), "parameter_invalid", "identifier"),
        (event(identifier=12345), "parameter_invalid", "identifier"),
        (event(identifier=["a"]), "parameter_invalid", "identifier"),
        (event(timestamp="yesterday"), "parameter_invalid", "timestamp"),
        (event(timestamp="2026-06-01"), "parameter_invalid", "timestamp"),
        (event(timestamp="2026-06-01T12:00:00"), "parameter_invalid", "timestamp"),
        (event(timestamp="2026-06-01 12:00:00Z"), "parameter_invalid", "timestamp"),
        (event(timestamp="2026-06-01T12:00:00.Z"), "parameter_invalid", "timestamp"),
        (event(timestamp="2026-06-01T12:00:00.1234567890Z"), "parameter_invalid", "timestamp"),
        (event(timestamp="2026-02-30T12:00:00Z"), "parameter_invalid", "timestamp"),
        (event(timestamp="2026-06-01T24:00:00Z"), "parameter_invalid", "timestamp"),
        (event(timestamp="2026-06-01T23:59:60Z"), "parameter_invalid", "timestamp"),
        (event(timestamp="2026-06-01T12:00:00+24:00"), "parameter_invalid", "timestamp"),
        (event(timestamp="2026-06-01T12:00:00Z\n"), "parameter_invalid", "timestamp"),
        (event(timestamp="٢٠٢٦-06-01T12:00:00Z"), "parameter_invalid", "timestamp"),
        (event(timestamp=""), "parameter_invalid", "timestamp"),
        (event(timestamp=True), "parameter_invalid", "timestamp"),
        (event(timestamp={"seconds": NOW_EPOCH}), "parameter_invalid", "timestamp"),
        (event(timestamp=[NOW_EPOCH]), "parameter_invalid", "timestamp"),
        (event(timestamp=1e20), "parameter_invalid", "timestamp"),
        (event(timestamp=-(10**15)), "parameter_invalid", "timestamp"),
        (event(timestamp=253_402_300_800), "parameter_invalid", "timestamp"),
        (event(timestamp=-62_135_596_801), "parameter_invalid", "timestamp"),
        (event(customer="cus_1"), "parameter_unknown", "customer"),
        (event(events=[], zeta=1, alpha=2), "parameter_unknown", "alpha"),
        (event(Event_Name="api_requests"), "parameter_unknown", "Event_Name"),
    ],
)
def test_an_event_of_the_wrong_form_is_rejected_with_its_param(
    raw: dict[str, Any], code: str, param: str
) -> None:
    rejection = rejection_of({"events": [raw]})
    assert (rejection.code, rejection.param) == (code, param)
    assert rejection.message


@pytest.mark.parametrize(
    "text", ["NaN", "Infinity", "-Infinity"], ids=["nan", "infinity", "minus-infinity"]
)
def test_non_finite_numbers_in_a_payload_are_rejected(text: str) -> None:
    body = (
        '{"event_name": "api_requests", '
        f'"payload": {{"stripe_customer_id": "cus_1", "value": "1", "units": {text}}}}}'
    )
    rejection = rejection_of(body)
    assert (rejection.code, rejection.param) == ("parameter_invalid", "payload.units")


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_epoch_timestamps_are_rejected(text: str) -> None:
    body = (
        '{"event_name": "api_requests", '
        f'"payload": {{"stripe_customer_id": "cus_1", "value": "1"}}, "timestamp": {text}}}'
    )
    rejection = rejection_of(body)
    assert (rejection.code, rejection.param) == ("parameter_invalid", "timestamp")


@pytest.mark.parametrize("value", [7, ["e"], None])
def test_an_envelope_entry_that_is_not_an_object_is_rejected(value: Any) -> None:
    message = parse({"events": [value]})
    assert message.rejection is None
    [parsed] = message.events
    assert parsed.rejection is not None
    assert parsed.rejection.code == "parameter_invalid"
    assert parsed.event_name is None
    assert parsed.identifier == f"{MID}-0"


# ----- event-level rejections: the meter's rules ------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "code", "param"),
    [
        (
            payload(stripe_customer_id=DROP),
            "payload_no_customer_defined",
            "payload.stripe_customer_id",
        ),
        (
            payload(stripe_customer_id=""),
            "payload_no_customer_defined",
            "payload.stripe_customer_id",
        ),
        (
            payload(stripe_customer_id=" \t"),
            "payload_no_customer_defined",
            "payload.stripe_customer_id",
        ),
        ({}, "payload_no_customer_defined", "payload.stripe_customer_id"),
        (payload(value=DROP), "payload_no_value_defined", "payload.value"),
        (payload(value=""), "payload_no_value_defined", "payload.value"),
    ],
)
def test_a_payload_without_customer_or_value_is_rejected(
    fields: dict[str, Any], code: str, param: str
) -> None:
    rejection = rejection_of(event(payload=fields))
    assert (rejection.code, rejection.param) == (code, param)


@pytest.mark.parametrize(
    "value",
    ["0", "00", "-1", "+5", "1.5", "1e3", "abc", " 5", "5 ", "5\n", "٣", "0x10", 0, -1, 1.5],
)
def test_the_positive_integer_rule_refuses_anything_else(value: Any) -> None:
    rejection = rejection_of(event(payload=payload(value=value)))
    assert (rejection.code, rejection.param) == ("payload_invalid_value", "payload.value")


@pytest.mark.parametrize("value", ["1", "25", "007", "9" * 30, 3, 2.0, 10**25])
def test_the_positive_integer_rule_takes_positive_integers(value: Any) -> None:
    assert accepted(event(payload=payload(value=value)))["payload"]["value"] == (
        value if isinstance(value, str) else str(int(value))
    )


def test_a_value_of_more_digits_than_int_takes_is_judged_without_crashing() -> None:
    assert accepted(event(payload=payload(value="1" * 5000)))["payload"]["value"] == "1" * 5000
    rejection = rejection_of(event(payload=payload(value="0" * 5000)))
    assert rejection.code == "payload_invalid_value"


DECIMAL_RULES = ValidationRules(value_rule="decimal")


@pytest.mark.parametrize("value", ["1.5", "0", "0.0", "12", "0.0000001", "1e3", 0.25])
def test_the_decimal_rule_admits_numbers_from_zero(value: Any) -> None:
    assert accepted(event(payload=payload(value=value)), rules=DECIMAL_RULES)


@pytest.mark.parametrize(
    "value",
    [
        *("-1", "-0.5", "abc", "NaN", "Infinity", "sNaN", "1,5", -2),
        *(" 5 ", "5\n", "1_000", "\u0663", "-0", "+1", ".5", "5."),
    ],
)
def test_the_decimal_rule_refuses_negatives_and_non_numbers(value: Any) -> None:
    rejection = rejection_of(event(payload=payload(value=value)), rules=DECIMAL_RULES)
    assert (rejection.code, rejection.param) == ("payload_invalid_value", "payload.value")


# ----- the timestamp window ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("moment", "code"),
    [
        (NOW - timedelta(days=35), None),
        (NOW - timedelta(days=35, seconds=1), "timestamp_too_far_in_past"),
        (NOW + timedelta(minutes=4), None),
        (NOW + timedelta(minutes=5), None),
        (NOW + timedelta(minutes=5, seconds=1), "timestamp_in_future"),
        (NOW + timedelta(days=1), "timestamp_in_future"),
    ],
)
@pytest.mark.parametrize("form", ["rfc3339", "epoch"])
def test_stripes_window_is_35_days_back_and_5_minutes_ahead(
    moment: datetime, code: str | None, form: str
) -> None:
    timestamp: Any = rfc(moment) if form == "rfc3339" else moment.timestamp()
    parsed = one(event(timestamp=timestamp))
    assert (parsed.rejection.code if parsed.rejection else None) == code
    if code is not None:
        assert parsed.rejection is not None
        assert parsed.rejection.param == "timestamp"


def test_the_window_is_judged_in_utc_whatever_the_offset() -> None:
    # 12:04 at UTC+02:00 is 10:04Z: in the past, not 4 minutes ahead
    assert accepted(event(timestamp="2026-06-01T12:04:00+02:00"))
    rejection = rejection_of(event(timestamp="2026-06-01T08:06:00-04:00"))
    assert rejection.code == "timestamp_in_future"


def test_an_absent_timestamp_older_than_the_window_is_rejected() -> None:
    rejection = rejection_of(event(), sent_at=NOW - timedelta(days=36))
    assert (rejection.code, rejection.param) == ("timestamp_too_far_in_past", "timestamp")


@pytest.mark.parametrize(
    ("timestamp", "code"),
    [
        ("0001-01-01T00:00:00+01:00", "timestamp_too_far_in_past"),
        ("9999-12-31T23:59:59-01:00", "timestamp_in_future"),
        (-62_135_596_800, "timestamp_too_far_in_past"),
        (253_402_300_799, "timestamp_in_future"),
    ],
)
def test_the_extreme_dates_that_still_parse_are_judged_without_overflowing(
    timestamp: Any, code: str
) -> None:
    assert rejection_of(event(timestamp=timestamp)).code == code


# ----- custom meter keys ------------------------------------------------------------------------


def test_custom_meter_keys_are_used_for_their_event_name() -> None:
    body = event(event_name="search_calls", payload={"customer": "cus_9", "calls": 12})
    assert accepted(body, rules=SEARCH_RULES)["payload"] == {"customer": "cus_9", "calls": "12"}


@pytest.mark.parametrize(
    ("fields", "code", "param"),
    [
        (
            {"stripe_customer_id": "cus_9", "value": "1"},
            "payload_no_customer_defined",
            "payload.customer",
        ),
        ({"customer": "cus_9", "value": "1"}, "payload_no_value_defined", "payload.calls"),
        ({"customer": "cus_9", "calls": "0"}, "payload_invalid_value", "payload.calls"),
    ],
)
def test_custom_meter_keys_replace_the_defaults(
    fields: dict[str, Any], code: str, param: str
) -> None:
    rejection = rejection_of(event(event_name="search_calls", payload=fields), rules=SEARCH_RULES)
    assert (rejection.code, rejection.param) == (code, param)


def test_other_event_names_keep_the_default_keys_under_custom_rules() -> None:
    assert accepted(event(), rules=SEARCH_RULES)
    rejection = rejection_of(event(payload={"customer": "cus_9", "calls": "1"}), rules=SEARCH_RULES)
    assert rejection.param == "payload.stripe_customer_id"


def test_a_meter_may_name_only_one_of_its_keys() -> None:
    rules = ValidationRules.from_settings('{"logins": {"customer_key": "account"}}', "decimal")
    assert rules.value_rule == "decimal"
    keys = rules.keys_for("logins")
    assert (keys.customer_key, keys.value_key) == ("account", "value")
    assert accepted(
        event(event_name="logins", payload={"account": "cus_2", "value": "0"}), rules=rules
    )


@pytest.mark.parametrize(
    ("meter_keys", "value_rule"),
    [
        ("not json", "positive_integer"),
        ("[]", "positive_integer"),
        ('{"x": "customer"}', "positive_integer"),
        ('{"x": {"customer": "c"}}', "positive_integer"),
        ('{"x": {"customer_key": 5}}', "positive_integer"),
        ('{"x": {"value_key": ""}}', "positive_integer"),
        ('{"x": {"customer_key": null}}', "positive_integer"),
        ("{}", "float"),
    ],
)
def test_malformed_meter_settings_are_refused(meter_keys: str, value_rule: str) -> None:
    with pytest.raises(ValueError, match=r"METER_KEYS|VALUE_RULE"):
        ValidationRules.from_settings(meter_keys, value_rule)


def test_empty_meter_settings_mean_the_defaults() -> None:
    rules = ValidationRules.from_settings("", "positive_integer")
    keys = rules.keys_for("anything")
    assert (keys.customer_key, keys.value_key) == ("stripe_customer_id", "value")


# ----- normalisation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "text"),
    [
        (25, "25"),
        (0, "0"),
        (-3, "-3"),
        (2.0, "2"),
        (-0.0, "0"),
        (0.1, "0.1"),
        (1.5, "1.5"),
        (1e-7, "0.0000001"),
        (1e20, "100000000000000000000"),
        (2.0**60, "1152921504606847000"),  # the JSON text 1.152921504606847e+18, not 2**60
        (12_345_678_901_234_567_890_123, "12345678901234567890123"),
        (10**40, "1" + "0" * 40),
    ],
)
def test_payload_numbers_become_their_plain_decimal_text(number: float, text: str) -> None:
    assert accepted(event(payload=payload(units=number)))["payload"]["units"] == text


def test_payload_strings_are_kept_as_given() -> None:
    values = {"units": "007", "note": " spaced ", "empty": "", "big": "1e400"}
    assert accepted(event(payload=payload(**values)))["payload"] == payload(**values)


@pytest.mark.parametrize(
    ("epoch", "text"),
    [
        (NOW_EPOCH, "2026-06-01T12:00:00.000Z"),
        (NOW_EPOCH - 90, "2026-06-01T11:58:30.000Z"),
        (NOW_EPOCH - 0.25, "2026-06-01T11:59:59.750Z"),
        (float(NOW_EPOCH - 86_400), "2026-05-31T12:00:00.000Z"),
    ],
)
def test_epoch_seconds_become_rfc3339_in_utc_with_milliseconds(epoch: float, text: str) -> None:
    assert accepted(event(timestamp=epoch))["timestamp"] == text


@pytest.mark.parametrize(
    "text",
    [
        "2026-06-01T12:00:00Z",
        "2026-06-01T11:00:00.5Z",
        "2026-06-01T14:00:00+02:00",
        "2026-06-01t11:00:00.123456789z",
        "2026-06-01T07:00:00-05:00",
    ],
)
def test_an_rfc3339_timestamp_is_kept_as_given(text: str) -> None:
    assert accepted(event(timestamp=text))["timestamp"] == text


@pytest.mark.parametrize("fields", [{}, {"timestamp": None}])
def test_an_absent_timestamp_is_when_the_message_was_sent(fields: dict[str, Any]) -> None:
    sent = datetime(2026, 5, 30, 8, 15, 42, 123_456, tzinfo=UTC)
    assert accepted(event(**fields), sent_at=sent)["timestamp"] == "2026-05-30T08:15:42.123Z"


def test_unicode_event_names_and_payload_keys_survive() -> None:
    rules = ValidationRules.from_settings(
        '{"recherches_日本": {"customer_key": "client", "value_key": "quantité"}}',
        "positive_integer",
    )
    raw = event(
        event_name="recherches_日本",
        payload={"client": "cus_é", "quantité": 4, "région": "Zürich 🇨🇭"},
        identifier="ид-1",
    )
    body = json.dumps(raw, ensure_ascii=False)
    normalised = accepted(body, rules=rules)
    assert normalised["event_name"] == "recherches_日本"
    assert normalised["payload"] == {"client": "cus_é", "quantité": "4", "région": "Zürich 🇨🇭"}
    assert normalised["identifier"] == "ид-1"
    # and through the ASCII-escaped form of the same JSON
    assert accepted(json.dumps(raw), rules=rules) == normalised


# ----- dead letters -----------------------------------------------------------------------------


def test_a_rejected_event_is_dead_lettered_as_sent_with_its_derived_identifier() -> None:
    raw = event(payload=payload(value=0, units=3), timestamp=NOW_EPOCH)
    parsed = parse({"events": [event(), raw]}).events[1]
    assert parsed.rejection is not None
    assert json.loads(parsed.dead_letter_body()) == {**raw, "identifier": f"{MID}-1"}


def test_a_rejected_event_keeps_the_producers_identifier_in_its_dead_letter() -> None:
    raw = event(identifier="producer-7", colour="red")
    parsed = one(raw)
    assert parsed.rejection is not None
    assert parsed.rejection.code == "parameter_unknown"
    # and the timestamp it would have had: when the producer sent it, not when it is replayed
    assert json.loads(parsed.dead_letter_body()) == {**raw, "timestamp": format_timestamp(SENT)}


def test_a_rejected_event_keeps_its_own_timestamp_in_its_dead_letter() -> None:
    raw = event(identifier="producer-8", colour="red", timestamp="2026-06-01T11:00:00Z")
    parsed = one(raw)
    assert json.loads(parsed.dead_letter_body()) == raw


def test_a_broken_identifier_is_dead_lettered_untouched() -> None:
    raw = event(identifier="x" * 101)
    parsed = one(raw)
    assert parsed.identifier is None
    assert json.loads(parsed.dead_letter_body()) == raw


def test_an_entry_that_is_not_an_object_is_dead_lettered_as_it_was() -> None:
    parsed = parse({"events": [event(), [1, 2]]}).events[1]
    assert parsed.rejection is not None
    assert json.loads(parsed.dead_letter_body()) == [1, 2]


def test_a_valid_event_is_dead_lettered_in_its_normalised_form() -> None:
    parsed = one(event(payload=payload(value=25), timestamp=NOW_EPOCH - 60))
    assert parsed.event is not None
    assert json.loads(parsed.dead_letter_body()) == {
        "event_name": "api_requests",
        "payload": {"stripe_customer_id": "cus_1", "value": "25"},
        "identifier": f"{MID}-0",
        "timestamp": "2026-06-01T11:59:00.000Z",
    }


def test_a_dead_letter_body_parses_back_to_the_same_identifier() -> None:
    """Replaying a dead letter as its own message keeps the identifier (no double count)."""
    parsed = parse({"events": [event(), event(payload=payload(value="x"))]}).events[1]
    replayed = one(parsed.dead_letter_body(), message_id="replay-message")
    assert replayed.identifier == parsed.identifier == f"{MID}-1"


@pytest.mark.parametrize(
    ("raw", "name"),
    [(event(payload=None), "api_requests"), (event(event_name=5), None), ("x", None)],
)
def test_a_rejected_event_names_its_event_only_when_it_is_text(raw: Any, name: str | None) -> None:
    parsed = parse({"events": [raw]}).events[0]
    assert parsed.rejection is not None
    assert parsed.event_name == name


# ----- the JSON Schema --------------------------------------------------------------------------


@cache
def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return loaded


@cache
def validator() -> Any:
    return Draft202012Validator(schema(), format_checker=Draft202012Validator.FORMAT_CHECKER)


def schema_valid(document: Any) -> bool:
    return bool(validator().is_valid(document))


def test_the_schema_is_a_valid_draft_2020_12_schema_with_its_metadata() -> None:
    document = schema()
    Draft202012Validator.check_schema(document)
    assert document["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert document["$id"]
    assert document["title"]
    assert "per meter" in document["description"]
    assert "cannot require" in document["description"]


def test_the_format_checker_checks_date_times() -> None:
    """Without rfc3339-validator, jsonschema skips "date-time" silently: the tests need it."""
    assert "date-time" in Draft202012Validator.FORMAT_CHECKER.checkers


def test_the_schema_examples_are_valid_and_accepted_by_the_parser() -> None:
    examples = schema()["examples"]
    assert len(examples) >= 3
    assert any("events" in example for example in examples)
    for example in examples:
        assert schema_valid(example), example
        message = parse(example, rules=SEARCH_RULES)
        assert message.rejection is None
        assert [e.rejection for e in message.events] == [None] * len(message.events)


@pytest.mark.parametrize(
    ("document", "valid"),
    [
        (event(), True),
        ({"events": [event(), event(identifier="a", timestamp=NOW_EPOCH)]}, True),
        (event(payload=payload(units=2.5)), True),
        (event(timestamp="2026-06-01T12:00:00.123Z"), True),
        (event(timestamp="2026-06-01t12:00:00z"), True),
        (event(payload={}), True),  # the customer and value keys are per meter
        (event(timestamp=-62_135_596_800), True),
        (event(timestamp=-62_135_596_801), False),
        (event(timestamp=253_402_300_799.5), True),
        (event(timestamp=253_402_300_800), False),
        (event(identifier="x" * 100), True),
        (event(identifier=None, timestamp=None), True),
        (event(timestamp="2026-06-01T12:00:00Z\n"), False),
        (event(timestamp="٢٠٢٦-06-01T12:00:00Z"), False),
        (event(timestamp="0000-01-01T00:00:00Z"), False),
        (event(timestamp="2026-02-29T00:00:00Z"), False),
        (event(timestamp="2026-06-01T12:00:00.1234567890Z"), False),
        (event(event_name=" "), False),
        (event(identifier="x" * 101), False),
        (event(payload=payload(flag=True)), False),
        ({"events": []}, False),
        ({"events": [event()], "meta": {}}, False),
        ([event()], False),
    ],
)
def test_the_schema_on_chosen_documents(document: Any, valid: bool) -> None:
    assert schema_valid(document) is valid


# ----- properties -------------------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


def pick(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of the strategies, in proportion to its weight (st.one_of has no weights)."""
    table = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.integers(0, len(table) - 1).flatmap(lambda roll: table[roll])


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`good` four times in five: form errors stay common, yet most events get far enough."""
    return pick((4, good), (1, bad))


@st.composite
def rfc3339_texts(draw: st.DrawFn, near: bool) -> str:
    """Well-formed RFC 3339 texts: near NOW (in or around the window) or anywhere in 1..9999."""
    if near:
        moment = NOW + timedelta(seconds=draw(st.integers(-40 * 86_400, 86_400)))
        naive = moment.replace(tzinfo=None)
    else:
        naive = draw(st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)))
    minutes = draw(st.integers(-(23 * 60 + 59), 23 * 60 + 59))
    digits = draw(st.integers(0, 9))
    fraction = "." + draw(st.text("0123456789", min_size=digits, max_size=digits)) if digits else ""
    zone = (
        draw(st.sampled_from(["Z", "z"]))
        if minutes == 0 or draw(st.booleans())
        else f"{'-' if minutes < 0 else '+'}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
    )
    separator = draw(st.sampled_from(["T", "t"]))
    return f"{naive:%Y-%m-%d}{separator}{naive:%H:%M:%S}{fraction}{zone}"


# the shape of a date-time with any digits: mostly impossible dates, times, offsets, fractions
rfc3339_like = st.from_regex(
    r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{0,11})?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})?\n?\Z"
)
PERTURBATIONS: list[Callable[[str], str]] = [
    lambda text: text + "\n",
    lambda text: text + " ",
    lambda text: " " + text,
    lambda text: text[:10],
    lambda text: text[:10] + " " + text[11:],
    lambda text: text[:19],
    lambda text: text[:19] + ".1234567890Z",
    lambda text: text[:19] + ".Z",
    lambda text: text[:19] + "+24:00",
    lambda text: text[:19] + "+23:60",
    lambda text: text[:19] + "+0100",
    lambda text: text[:17] + "60Z",
    lambda text: text[:14] + "60:00Z",
    lambda text: text[:11] + "24:00:00Z",
    lambda text: "0000" + text[4:],
    lambda text: text[:5] + "02-30" + text[10:],
    lambda text: text[:5] + "13" + text[7:],
    lambda text: text.replace("2", "\u0662", 1),
    lambda text: text.replace("T", "t").replace("Z", "z"),
]
perturbed_timestamps = st.builds(
    lambda text, change: change(text),
    rfc3339_texts(near=True).map(lambda text: text[:19] + "Z"),
    st.sampled_from(PERTURBATIONS),
)
edge_timestamps = perturbed_timestamps | st.sampled_from(
    [-62_135_596_800, -62_135_596_801, -62_135_596_800.5, 253_402_300_799.5, 253_402_300_800]
)
good_timestamps = st.one_of(
    rfc3339_texts(near=True),
    rfc3339_texts(near=False),
    st.integers(NOW_EPOCH - 40 * 86_400, NOW_EPOCH + 86_400),
    st.floats(NOW_EPOCH - 40 * 86_400, NOW_EPOCH + 86_400),
    st.none(),
)
bad_timestamps = st.one_of(
    rfc3339_like,
    st.text(max_size=30),
    st.integers(min_value=-(10**13), max_value=10**13),
    st.floats(allow_nan=False, allow_infinity=False),
    json_values,
)
good_event_names = st.sampled_from(["api_requests", "search_calls", "日本"]) | st.text(
    min_size=1, max_size=8
)
bad_event_names = st.sampled_from(["", " ", "\t\n", "\x1f", "\x85", "\u3000"]) | json_values
good_identifiers = (
    st.none() | st.text(min_size=1, max_size=100) | st.text(min_size=99, max_size=100)
)
bad_identifiers = (
    st.sampled_from(["", "x" * 101]) | st.text(min_size=101, max_size=103) | json_values
)
payload_values = mostly(
    st.text(max_size=8)
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False),
    json_values,
)


@st.composite
def good_payloads(draw: st.DrawFn) -> dict[str, Any]:
    """Objects that always hold the default meter's customer and value: only form decides.

    (The parser judges the meter's keys before the timestamp's form: an object without them
    would be refused for its customer, whatever its timestamp.)
    """
    extras = draw(st.dictionaries(st.text(max_size=6), payload_values, max_size=3))
    return {**extras, "stripe_customer_id": "cus_1", "value": "1"}


bad_payloads = json_values.filter(lambda value: not isinstance(value, dict))
extra_fields = st.dictionaries(
    st.text(max_size=6).filter(lambda key: key not in EVENT_FIELDS and key != "events"),
    json_values,
    min_size=1,
    max_size=2,
)
ABSENT = object()


@st.composite
def event_dicts(draw: st.DrawFn) -> dict[str, Any]:
    """Event-shaped objects: each field well formed, badly formed or missing."""
    fields = {
        "event_name": draw(mostly(mostly(good_event_names, bad_event_names), st.just(ABSENT))),
        "payload": draw(mostly(mostly(good_payloads(), bad_payloads), st.just(ABSENT))),
        "identifier": draw(pick((2, st.just(ABSENT)), (4, good_identifiers), (2, bad_identifiers))),
        "timestamp": draw(
            pick(
                (2, st.just(ABSENT)),
                (4, good_timestamps),
                (2, edge_timestamps),
                (2, bad_timestamps),
            )
        ),
    }
    event_fields = {key: value for key, value in fields.items() if value is not ABSENT}
    if draw(st.integers(0, 9)) == 0:
        event_fields.update(draw(extra_fields))
    return event_fields


documents = mostly(
    event_dicts() | st.fixed_dictionaries({"events": st.lists(event_dicts(), max_size=3)}),
    st.one_of(
        st.fixed_dictionaries({"events": st.lists(event_dicts(), max_size=2), "meta": json_values}),
        st.fixed_dictionaries({"events": json_values}),
        json_values,
    ),
)


FIELD_VARIANTS: dict[str, st.SearchStrategy[Any]] = {
    "event_name": good_event_names | bad_event_names,
    "payload": good_payloads() | bad_payloads,
    "identifier": good_identifiers | bad_identifiers,
    "timestamp": good_timestamps | edge_timestamps | bad_timestamps,
}


@st.composite
def one_field_varied(draw: st.DrawFn) -> dict[str, Any]:
    """A valid event with one field replaced (or removed): dense at each field's edges."""
    name = draw(st.sampled_from([*FIELD_VARIANTS, "extra"]))
    if name == "extra":
        return {**event(), **draw(extra_fields)}
    value = draw(st.just(ABSENT) | FIELD_VARIANTS[name] | FIELD_VARIANTS[name])
    return event(**{name: DROP if value is ABSENT else value})


def check_events(message: ParsedMessage) -> None:
    """Property (b): each event is normalised or rejected, never both, never neither."""
    if message.rejection is not None:
        assert message.events == []
        return
    assert message.events
    for parsed in message.events:
        assert (parsed.event is None) != (parsed.rejection is None)
        if parsed.event is not None:
            assert all(isinstance(value, str) for value in parsed.event.payload.values())
            assert parse_rfc3339(parsed.event.timestamp) is not None
            assert 1 <= len(parsed.event.identifier) <= 100
            assert parsed.identifier == parsed.event.identifier
        else:
            assert parsed.rejection is not None
            assert parsed.rejection.code in {code.value for code in ErrorCode}


@PROPERTY_SETTINGS
@given(document=documents)
def test_property_any_json_document_parses_without_raising(document: Any) -> None:
    message = parse(json.dumps(document))
    check_events(message)
    for parsed in message.events:
        json.loads(parsed.dead_letter_body())


@PROPERTY_SETTINGS
@given(
    body=st.one_of(
        st.text(),
        st.text('{}[]",:0123456789.eE-+tfnrulsa \\'),
        documents.map(lambda document: json.dumps(document)[: len(json.dumps(document)) // 2]),
    )
)
def test_property_any_text_parses_without_raising(body: str) -> None:
    check_events(parse(body))


@PROPERTY_SETTINGS
@given(
    document=st.fixed_dictionaries({"events": st.lists(event_dicts(), min_size=1, max_size=3)}),
    number=st.one_of(
        st.floats(allow_nan=False, allow_infinity=False),
        st.integers(min_value=-(10**18), max_value=10**18),
    ),
)
def test_property_nan_and_infinity_in_payloads_never_break_the_parse(
    document: dict[str, Any], number: float
) -> None:
    """NaN and Infinity are not JSON, but Python's json reads them: they must not crash."""
    for raw in document["events"]:
        if isinstance(raw.get("payload"), dict):
            raw["payload"]["nan"] = math.nan if number > 0 else math.inf
    check_events(parse(json.dumps(document)))


@PROPERTY_SETTINGS
@given(
    number=st.one_of(
        st.integers(min_value=-(10**300), max_value=10**300),
        st.floats(allow_nan=False, allow_infinity=False),
    )
)
def test_property_number_normalisation_round_trips(number: float) -> None:
    text = accepted(event(payload=payload(units=number)))["payload"]["units"]
    assert re.fullmatch(r"-?[0-9]+(\.[0-9]+)?", text), text
    assert Decimal(text) == Decimal(repr(number))


@PROPERTY_SETTINGS
@given(
    entries=st.lists(
        st.one_of(
            event_dicts(),
            st.builds(event, identifier=st.text(min_size=1, max_size=100)),
            st.builds(event),
            json_scalars,
        ),
        min_size=1,
        max_size=12,
    ),
    message_id=st.uuids().map(str),
)
def test_property_derived_identifiers_are_unique_and_stable(
    entries: list[Any], message_id: str
) -> None:
    body = json.dumps({"events": entries})
    first = parse(body, message_id=message_id)
    second = parse(body, message_id=message_id, sent_at=SENT + timedelta(minutes=1))
    assert [e.identifier for e in first.events] == [e.identifier for e in second.events]
    derived = [
        parsed
        for parsed in first.events
        if not isinstance(parsed.raw, dict) or parsed.raw.get("identifier") is None
    ]
    assert [p.identifier for p in derived] == [f"{message_id}-{p.index}" for p in derived]
    assert len({p.identifier for p in derived}) == len(derived)


def assert_schema_and_parser_agree(document: Any) -> None:
    """Schema-valid exactly when the parser finds no fault of form (meter rules aside)."""
    message = parse(json.dumps(document))
    parser_accepts_form = message.rejection is None and all(
        parsed.rejection is None or parsed.rejection.code not in SCHEMA_CODES
        for parsed in message.events
    )
    reasons = [message.rejection] + [parsed.rejection for parsed in message.events]
    assert schema_valid(document) == parser_accepts_form, reasons


VALID_TEXT = "2026-06-01T11:00:00Z"
EDGE_TIMESTAMPS: tuple[Any, ...] = (
    None,
    "",
    "2026-06-01T11:00:00.123456789+05:30",
    "2026-06-01T11:00:00-00:00",
    -62_135_596_800,
    -62_135_596_800.5,
    -62_135_596_801,
    253_402_300_799,
    253_402_300_799.5,
    253_402_300_800,
    1e300,
    True,
    [],
)
EDGE_IDENTIFIERS: tuple[Any, ...] = (None, "", "x" * 100, "x" * 101, "é" * 101, 5, [])
EDGE_EVENT_NAMES: tuple[Any, ...] = ("", " ", "\x1f", "\x85", "\u3000", "a b", 5, None)
EDGE_PAYLOAD_VALUES: tuple[Any, ...] = (
    "",
    True,
    None,
    [],
    {},
    1.5,
    -0.0,
    10**30,
    1e308,
    "x" * 1000,
)
EDGE_PAYLOADS: tuple[Any, ...] = (None, [], "x", 1)
EDGE_DOCUMENTS = [
    *(event(timestamp=change(VALID_TEXT)) for change in PERTURBATIONS),
    *(event(timestamp=value) for value in EDGE_TIMESTAMPS),
    *(event(identifier=value) for value in EDGE_IDENTIFIERS),
    *(event(event_name=value) for value in EDGE_EVENT_NAMES),
    *(event(payload=payload(extra=value)) for value in EDGE_PAYLOAD_VALUES),
    *(event(payload=value) for value in EDGE_PAYLOADS),
    event(event_name=DROP),
    event(payload=DROP),
    event(Timestamp=VALID_TEXT),
    {**event(), "events": [event()]},
    {"events": [event(), event(identifier="")]},
    {"events": [event()] * 3},
    {"events": []},
    {"events": [event()], "": 1},
    {"events": [[]]},
    {"events": event()},
]


@pytest.mark.parametrize("document", EDGE_DOCUMENTS, ids=lambda document: repr(document)[:90])
def test_the_schema_and_the_parser_agree_at_the_edges(document: Any) -> None:
    assert_schema_and_parser_agree(document)


@PROPERTY_SETTINGS
@given(document=documents | one_field_varied())
def test_property_the_schema_and_the_parser_agree_on_form(document: Any) -> None:
    assert_schema_and_parser_agree(document)


# ----- an event received in Stripe's form keeps its text ---------------------------------------


def judged_the_long_way(text: str) -> ParsedEvent:
    """What normalise_event, the full path, makes of a single-event body."""
    return normalise_event(json.loads(text), 0, MID, SENT, RULES, NOW)


def without_text(parsed: ParsedEvent) -> ParsedEvent:
    event = parsed.event
    return dataclasses.replace(
        parsed, event=None if event is None else msgspec.structs.replace(event, source=None)
    )


def keys_once(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    assert len(keys) == len(set(keys)), f"a key repeated: {keys}"
    return dict(pairs)


def renderings(document: dict[str, Any]) -> st.SearchStrategy[str]:
    """The ways producers write one event: separators, escapes, key order, a key twice."""
    keys, whole = list(document), json.dumps(document)

    def with_a_key_twice(key: str, first: Any) -> str:
        rest = ", " + whole[1:] if document else "}"
        return "{" + json.dumps({key: first})[1:-1] + rest

    return st.one_of(
        st.just(whole),
        st.just(json.dumps(document, separators=(",", ":"), ensure_ascii=False)),
        st.permutations(keys).map(lambda order: json.dumps({k: document[k] for k in order})),
        st.just(" " + whole + "\n"),
        st.builds(with_a_key_twice, st.sampled_from(keys or ["event_name"]), json_values),
    )


# events already in Stripe's form (what producers mostly send), in the window or near it
stripe_form_events = st.builds(
    event,
    identifier=st.text(min_size=1, max_size=100),
    timestamp=rfc3339_texts(near=True),
    payload=st.dictionaries(st.text(max_size=6), st.text(max_size=8), max_size=3).map(
        lambda extras: {**extras, "stripe_customer_id": "cus_1", "value": "1"}
    ),
)


@PROPERTY_SETTINGS
@given(
    data=st.data(), document=pick((2, stripe_form_events), (1, event_dicts() | one_field_varied()))
)
def test_property_a_single_event_is_judged_as_the_full_path_judges_it(
    data: st.DataObject, document: dict[str, Any]
) -> None:
    text = data.draw(renderings(document))
    message = parse(text)
    assert message.rejection is None
    (parsed,) = message.events
    assert without_text(parsed) == without_text(judged_the_long_way(text))
    if parsed.event is not None and parsed.event.source is not None:
        # sent as it is: Stripe reads exactly the normalised event, and no key twice
        assert parsed.event.source == text
        assert json.loads(text, object_pairs_hook=keys_once) == parsed.event.to_stripe()


@PROPERTY_SETTINGS
@given(
    documents=st.lists(
        pick((2, stripe_form_events), (1, event_dicts() | one_field_varied())),
        min_size=1,
        max_size=4,
    )
)
def test_property_an_envelope_event_is_judged_as_the_full_path_judges_it(
    documents: list[dict[str, Any]],
) -> None:
    message = parse({"events": documents})
    assert message.rejection is None
    expected = with_the_batch_rule(
        [
            normalise_event(document, index, MID, SENT, RULES, NOW)
            for index, document in enumerate(json.loads(json.dumps(documents)))
        ]
    )
    assert [verdict(parsed) for parsed in message.events] == [verdict(e) for e in expected]


def verdict(parsed: ParsedEvent) -> tuple[Any, ...]:
    """What is judged of an event, but the wording of a rejection's message."""
    rejection = parsed.rejection
    reason = None if rejection is None else (rejection.code, rejection.param)
    event = None if parsed.event is None else msgspec.structs.replace(parsed.event, source=None)
    return parsed.index, parsed.identifier, event, parsed.raw, reason


def with_the_batch_rule(events: list[ParsedEvent]) -> list[ParsedEvent]:
    """Events judged alone, then the batch's rule on identifiers: a valid event whose
    identifier an earlier valid one holds, with other contents, is refused (Stripe would
    count only the first)."""
    first: dict[str, MeterEvent] = {}
    judged = []
    for parsed in events:
        event = parsed.event
        if event is not None and event.identifier in first:
            earlier = first[event.identifier]
            same = (earlier.event_name, earlier.payload) == (event.event_name, event.payload)
            if not same or parse_rfc3339(earlier.timestamp) != parse_rfc3339(event.timestamp):
                refused = Rejection(ErrorCode.DUPLICATE_IDENTIFIER_IN_BATCH, "", "identifier")
                parsed = dataclasses.replace(parsed, event=None, rejection=refused)
        elif event is not None:
            first[event.identifier] = event
        judged.append(parsed)
    return judged


def test_a_text_with_a_lone_surrogate_goes_out_escaped() -> None:
    """JSON text may hold one unescaped, UTF-8 cannot: that call's body is encoded again."""
    text = json.dumps(event(identifier="e1", timestamp="2026-06-01T11:59:00Z"))
    text = text.replace("cus_1", "cus_\ud800")
    plain = one(json.dumps(event(identifier="e2", timestamp="2026-06-01T11:59:00Z"))).event
    odd = one(text).event
    assert plain is not None
    assert odd is not None
    assert odd.source in (None, text)  # msgspec cannot take it as UTF-8: read in full
    body = stream_body([plain, odd])
    assert json.loads(body) == {"events": [plain.to_stripe(), odd.to_stripe()]}
    assert json.loads(body)["events"][1]["payload"]["stripe_customer_id"] == "cus_\ud800"


def test_events_without_texts_and_a_lone_surrogate_go_out_escaped() -> None:
    """Events that kept no text (an envelope's) are encoded by msgspec, which cannot take a
    lone surrogate as UTF-8 either: json encodes that call's body, with its escape."""
    plain = MeterEvent("api_requests", {"stripe_customer_id": "cus_1", "value": "1"}, "e1", "t")
    odd = MeterEvent("api_requests", {"stripe_customer_id": "cus_\ud800", "value": "1"}, "e2", "t")
    body = stream_body([plain, odd])
    assert b"cus_\\ud800" in body
    assert json.loads(body) == {"events": [plain.to_stripe(), odd.to_stripe()]}
    assert json.loads(stream_body([plain])) == {"events": [plain.to_stripe()]}


def test_the_common_event_keeps_its_text() -> None:
    text = json.dumps(event(identifier="evt-1", timestamp="2026-06-01T11:59:00.000Z"))
    parsed = one(text)
    assert parsed.event is not None
    assert parsed.event.source == text


@pytest.mark.parametrize(
    "text",
    [
        # a key twice: Python keeps the last, Stripe's parser need not
        '{"event_name": "other", "event_name": "api_requests", "identifier": "e1", '
        '"timestamp": "2026-06-01T11:59:00Z", '
        '"payload": {"stripe_customer_id": "cus_1", "value": "1"}}',
        '{"event_name": "api_requests", "identifier": "e1", "timestamp": "2026-06-01T11:59:00Z", '
        '"payload": {"value": "7", "stripe_customer_id": "cus_1", "value": "1"}}',
        # an escaped quote
        '{"event_name": "api_requests", "identifier": "e\\"1", '
        '"timestamp": "2026-06-01T11:59:00Z", '
        '"payload": {"stripe_customer_id": "cus_1", "value": "1"}}',
        # surrounding whitespace
        ' {"event_name": "api_requests", "identifier": "e1", "timestamp": "2026-06-01T11:59:00Z", '
        '"payload": {"stripe_customer_id": "cus_1", "value": "1"}}\n',
    ],
)
def test_an_event_whose_text_could_read_otherwise_is_encoded_again(text: str) -> None:
    parsed = one(text)
    assert parsed.event is not None
    assert parsed.event.source is None
    assert without_text(parsed) == without_text(judged_the_long_way(text))


@PROPERTY_SETTINGS
@given(
    documents=st.lists(
        st.builds(
            event,
            identifier=st.none() | st.text(min_size=1, max_size=100),
            timestamp=st.just("2026-06-01T11:59:00Z"),
            payload=st.dictionaries(
                st.text(max_size=6), st.text(max_size=8) | st.integers(0, 10**6), max_size=3
            ).map(lambda extras: {**extras, "stripe_customer_id": "cus_1", "value": "1"}),
        ),
        min_size=1,
        max_size=100,
    ),
    separators=st.sampled_from([(", ", ": "), (",", ":")]),
)
def test_property_a_stream_body_holds_exactly_the_normalised_events(
    documents: list[dict[str, Any]], separators: tuple[str, str]
) -> None:
    events = [
        parsed.event
        for document in documents
        for parsed in parse(json.dumps(document, separators=separators)).events
        if parsed.event is not None
    ]
    assert len(events) == len(documents)
    body = json.loads(stream_body(events), object_pairs_hook=keys_once)
    assert body == {"events": [event.to_stripe() for event in events]}


# ----- one Judge for a whole batch: what it keeps of one event never changes another's -----------

DECIMAL_SEARCH_RULES = ValidationRules(SEARCH_RULES.meter_keys, "decimal")

# a small pool of each field, so that a batch's events share names, values and timestamps
pooled_events = st.builds(
    lambda name, customer, value, timestamp, identifier, customer_key, value_key: {
        "event_name": name,
        "identifier": identifier,
        "timestamp": timestamp,
        "payload": {customer_key: customer, value_key: value},
    },
    name=st.sampled_from(["api_requests", "search_calls", " ", ""]),
    customer=st.sampled_from(["cus_1", " ", ""]),
    value=st.sampled_from(["1", "0", "2.5", "07", "-1", "", "1e3"]),
    timestamp=st.sampled_from(
        [rfc(NOW), rfc(NOW - timedelta(days=36)), rfc(NOW + timedelta(minutes=6)), "soon"]
    ),
    identifier=st.sampled_from(["e1", "e2", "x" * 101]),
    customer_key=st.sampled_from(["stripe_customer_id", "customer"]),
    value_key=st.sampled_from(["value", "calls"]),
)


@PROPERTY_SETTINGS
@given(
    documents=st.lists(pooled_events, min_size=1, max_size=30),
    rules=st.sampled_from([RULES, SEARCH_RULES, DECIMAL_SEARCH_RULES]),
)
def test_property_one_judge_for_a_batch_judges_each_event_as_a_fresh_one_would(
    documents: list[dict[str, Any]], rules: ValidationRules
) -> None:
    judge = Judge(rules, NOW)
    for document in documents:
        shared = judge.stripe_form(document)
        assert shared == Judge(rules, NOW).stripe_form(document)
        full = normalise_event(document, 0, MID, SENT, rules, NOW)
        if shared is not None:  # the short path takes only what the full path takes as it is
            assert full.event == shared


@pytest.mark.parametrize("body", [' {"a": 1}', '{"a": 1}\n', '{"a": 1} {"b": 2}', "{", "", "[1, 2"])
def test_a_body_that_is_not_exactly_one_document_is_left_to_the_full_path(body: str) -> None:
    assert decode_body(body) is UNREAD
    message = parse(body)  # which reads it again, for its own verdict and message
    if body.strip() == '{"a": 1}':
        assert message.rejection is None
        assert message.events[0].rejection is not None
    else:
        assert message.rejection is not None
        assert message.rejection.code == ErrorCode.MESSAGE_NOT_JSON
        assert "body is not JSON" in message.rejection.message


def test_read_gives_the_one_valid_event_alone_and_everything_else_in_full() -> None:
    """The one entry point: a body that is exactly one valid event in Stripe's form is that
    event (nothing else is kept of it); any other body is read in full, with its verdicts."""
    judge = Judge(RULES, NOW)
    text = json.dumps(event(identifier="e1", timestamp=rfc(NOW)))
    read = judge.read(text, MID, SENT)
    assert isinstance(read, MeterEvent)
    assert read.source == text
    envelope = judge.read(json.dumps({"events": [event(identifier="e2")]}), MID, SENT)
    assert isinstance(envelope, ParsedMessage)
    assert envelope == parse({"events": [event(identifier="e2")]})
    broken = judge.read("{", MID, SENT)
    assert isinstance(broken, ParsedMessage)
    assert broken.rejection is not None


def test_read_short_needs_no_send_time_and_leaves_every_other_body_to_read_in_full() -> None:
    """The forwarder reads a record's send time only for a body read in full (an event without
    a timestamp takes it): the short path never needs it."""
    judge = Judge(RULES, NOW)
    single = judge.read_short(json.dumps(event(identifier="s1", timestamp=rfc(NOW))), MID)
    assert isinstance(single, MeterEvent)
    envelope = judge.read_short(
        json.dumps({"events": [event(identifier="s2", timestamp=rfc(NOW))]}), MID
    )
    assert isinstance(envelope, list)
    assert [e.identifier for e in envelope] == ["s2"]
    untimed = event(identifier="s3")
    other_contents = event(identifier="s1", timestamp=rfc(NOW), payload=payload(value="2"))
    for body in ("{", json.dumps(untimed), json.dumps(other_contents)):
        assert judge.read_short(body, MID) is None, body
    (parsed,) = judge.read_in_full("\ufeff" + json.dumps(untimed), MID, SENT).events
    assert parsed.event is not None
    assert parsed.event.timestamp == format_timestamp(SENT)


@pytest.mark.parametrize("body", [event(identifier="bom-1"), {"events": [event(), event()]}])
def test_a_byte_order_mark_before_the_json_is_read_past(body: dict[str, Any]) -> None:
    text = json.dumps(body)
    with_mark = parse("\ufeff" + text)
    assert with_mark == parse(text)
    assert with_mark.rejection is None
    assert all(parsed.rejection is None for parsed in with_mark.events)
    kept = with_mark.events[0].event
    assert kept is not None
    assert kept.source in (None, text)  # the text goes out without the mark


def test_only_a_leading_byte_order_mark_is_read_past() -> None:
    text = json.dumps(event(identifier="e1"))
    assert parse(text + "\ufeff").rejection is not None
    assert parse("\ufeff\ufeff" + text).rejection is not None


@PROPERTY_SETTINGS
@given(
    documents=st.lists(
        stripe_form_events, min_size=1, max_size=20, unique_by=lambda e: e["identifier"]
    ),
    separators=st.sampled_from([(", ", ": "), (",", ":")]),
)
def test_property_an_envelope_of_valid_events_is_sent_exactly_as_judged(
    documents: list[dict[str, Any]], separators: tuple[str, str]
) -> None:
    """An envelope of nothing but valid events in Stripe's form is read in the fewest steps
    (decoded in one pass); its events keep no text of their own, and the stream body, encoded
    from them, is exactly the normalised events, each key once."""
    body = json.dumps({"events": documents}, separators=separators)
    read = Judge(RULES, NOW).read(body, MID, SENT)
    if not isinstance(read, list):  # some event outside the window, or not valid: in full
        assert isinstance(read, ParsedMessage)
        assert any(parsed.event is None for parsed in read.events)
        return
    assert [event.to_stripe() for event in read] == documents
    assert all(event.source is None for event in read)
    assert json.loads(stream_body(read), object_pairs_hook=keys_once) == {"events": documents}


def test_an_envelope_events_text_with_a_key_twice_is_not_sent_as_it_is() -> None:
    text = (
        '{"events": [{"event_name": "other", "event_name": "api_requests", "identifier": "e1", '
        f'"timestamp": "{rfc(NOW)}", '
        '"payload": {"stripe_customer_id": "cus_1", "value": "1"}}]}'
    )
    read = Judge(RULES, NOW).read(text, MID, SENT)
    assert not isinstance(read, MeterEvent)  # an envelope: never read as a single event
    events = read if isinstance(read, list) else [p.event for p in read.events]
    (event,) = events
    assert event is not None
    assert event.event_name == "api_requests"
    assert event.source is None


# ----- the account's meters (the catalog) ------------------------------------------------------

METERS = {
    "api_requests": Meter("mtr_api", True),
    "search_calls": Meter("mtr_search", True, "customer", "calls"),
    "legacy_metric": Meter("mtr_legacy", False),
}
CATALOG_RULES = ValidationRules(meters=METERS)


def test_with_a_catalog_an_event_name_without_a_meter_is_refused_as_stripe_would() -> None:
    nobody = rejection_of(event(event_name="nobody_meters_this"), rules=CATALOG_RULES)
    assert (nobody.code, nobody.param) == ("no_meter", "event_name")
    archived = rejection_of(event(event_name="legacy_metric"), rules=CATALOG_RULES)
    assert (archived.code, archived.param) == ("archived_meter", "event_name")
    assert "mtr_legacy" in archived.message
    # without a catalog to go by, nothing is refused for its meter
    assert one(event(event_name="nobody_meters_this")).event is not None


def test_a_meters_own_payload_keys_are_used_and_meter_keys_override_them() -> None:
    search = {"event_name": "search_calls", "payload": {"customer": "cus_1", "calls": "2"}}
    assert one(search, rules=CATALOG_RULES).event is not None
    override = ValidationRules(
        {"search_calls": MeterKeys("account", "n")}, "positive_integer", METERS
    )
    assert rejection_of(search, rules=override).code == "payload_no_customer_defined"
    renamed = {"event_name": "search_calls", "payload": {"account": "cus_1", "n": "2"}}
    assert one(renamed, rules=override).event is not None


@PROPERTY_SETTINGS
@given(
    documents=st.lists(pooled_events, min_size=1, max_size=30),
    meters=st.dictionaries(
        st.sampled_from(["api_requests", "search_calls", " "]),
        st.builds(
            Meter,
            st.just("mtr_x"),
            st.booleans(),
            st.sampled_from(["stripe_customer_id", "customer"]),
            st.sampled_from(["value", "calls"]),
        ),
    ),
)
def test_property_with_a_catalog_the_short_path_judges_as_the_full_one(
    documents: list[dict[str, Any]], meters: dict[str, Meter]
) -> None:
    rules = ValidationRules(meters=meters)
    judge = Judge(rules, NOW)
    for document in documents:
        shared = judge.stripe_form(document)
        full = normalise_event(document, 0, MID, SENT, rules, NOW)
        if shared is not None:
            assert full.event == shared
        name = document["event_name"]
        if full.event is not None:
            assert name in meters
            assert meters[name].active


_SHORT_FORMS = st.tuples(
    st.sampled_from(["api_requests", "search_calls", "other_meter", " "]),
    st.sampled_from(["1", "0", "x"]),  # a valid value, then two that are not
    st.booleans(),  # in an envelope of two, else alone
)


@given(st.lists(_SHORT_FORMS, max_size=12))
def test_every_event_read_by_the_short_path_has_its_name_among_the_judges(
    bodies: list[tuple[str, str, bool]],
) -> None:
    """The ledger takes a batch's event names from its judge when nothing was read in full
    (Judge.event_names), rather than from every event: each event the short path gives (alone
    or in an envelope) has its name there, whatever else was judged before it."""
    judge = Judge(SEARCH_RULES, NOW)
    for number, (name, value, enveloped) in enumerate(bodies):
        keys = SEARCH_RULES.keys_for(name)
        one_event = {
            "event_name": name,
            "payload": {keys.customer_key: "cus_1", keys.value_key: value},
            "identifier": f"id-{number}",
            "timestamp": rfc(NOW),
        }
        body = (
            {"events": [one_event, {**one_event, "identifier": f"id-{number}-b"}]}
            if enveloped
            else one_event
        )
        read = judge.read(json.dumps(body), f"m-{number}", SENT)
        given_events = [read] if isinstance(read, MeterEvent) else read
        if isinstance(given_events, list):
            assert {e.event_name for e in given_events} <= set(judge.event_names())


def read_alone(judge: Judge, bodies: list[str]) -> list[Any]:
    """Each body read on its own (the short path, else in full)."""
    return [judge.read(body, f"m-{n}", SENT) for n, body in enumerate(bodies)]


def read_in_runs(judge: Judge, bodies: list[str]) -> list[Any]:
    """The bodies read as the forwarder reads a run: their single events judged together
    (Judge.read_singles), each other record on its own in its turn."""
    ids = [f"m-{n}" for n in range(len(bodies))]
    verdicts: list[Any] = []
    done = 0
    while done < len(bodies):
        singles = judge.read_singles(bodies[done:], ids[done:])
        assert singles.usual == (None not in singles.events)
        for n, event in enumerate(singles.events, done):
            verdicts.append(judge.read(bodies[n], ids[n], SENT) if event is None else event)
        done += len(singles.events)
        if done < len(bodies):
            verdicts.append(judge.read(bodies[done], ids[done], SENT))
            done += 1
    return verdicts


def verdicts_of(reads: list[Any]) -> list[Any]:
    return [msgspec.structs.astuple(r) if isinstance(r, MeterEvent) else r for r in reads]


def table(judge: Judge) -> dict[str, tuple[Any, str, int]]:
    """The judge's identifier table, by value (what later duplicates are judged against)."""
    return {
        identifier: (msgspec.structs.astuple(event), message_id, index)
        for identifier, (event, message_id, index) in judge._first.items()
    }


# the usual run: valid events in Stripe's form, each with an identifier of its own
usual_events = st.builds(
    lambda number, name, customer, value, extra: event(
        event_name=name,
        identifier=f"evt-{number}",
        timestamp=rfc(NOW - timedelta(seconds=number)),
        payload={
            **({"region": "eu"} if extra else {}),
            SEARCH_RULES.keys_for(name).customer_key: customer,
            SEARCH_RULES.keys_for(name).value_key: value,
        },
    ),
    number=st.integers(0, 10_000),
    name=st.sampled_from(["api_requests", "search_calls"]),
    customer=st.sampled_from(["cus_1", "cus_2"]),
    value=st.sampled_from(["1", "25"]),
    extra=st.booleans(),
)


@PROPERTY_SETTINGS
@given(
    data=st.data(),
    documents=st.lists(
        pick(
            (24, usual_events),
            (2, stripe_form_events),
            (1, pooled_events),
            (1, event_dicts() | one_field_varied()),
        ),
        min_size=1,
        max_size=12,
    ),
    earlier=st.lists(pooled_events | usual_events, max_size=3),
    rules=st.sampled_from([RULES, SEARCH_RULES, DECIMAL_SEARCH_RULES]),
)
def test_property_a_run_read_together_is_what_reading_each_record_gives(
    data: st.DataObject,
    documents: list[dict[str, Any]],
    earlier: list[dict[str, Any]],
    rules: ValidationRules,
) -> None:
    """Judge.read_singles judges a run's single events together, leaving each other record
    (an invalid event, a text not sent as it is, an identifier a record before it holds, an
    envelope, a byte order mark) to be read on its own in its turn: the verdicts, the texts
    kept and the identifier table are what reading each record on its own gives. The usual
    run is judged in one step."""
    bodies = [
        data.draw(
            pick(
                (12, st.just(json.dumps(document))),
                (2, renderings(document)),
                (1, st.just("\ufeff" + json.dumps(document))),
                (1, st.just(json.dumps({"events": [document]}))),
            )
        )
        for document in documents
    ]
    together, alone = Judge(rules, NOW), Judge(rules, NOW)
    for judge in (together, alone):
        read_alone(judge, [json.dumps(document) for document in earlier])
    before = table(together)

    first_step = Judge(rules, NOW)
    read_alone(first_step, [json.dumps(document) for document in earlier])
    singles = first_step.read_singles(bodies, [f"m-{n}" for n in range(len(bodies))])
    verdicts = read_in_runs(together, bodies)
    expected = read_alone(alone, bodies)

    assert verdicts_of(verdicts) == verdicts_of(expected)
    assert table(together) == table(alone)
    identifiers = [str(getattr(read, "identifier", "")) for read in expected]
    if (
        all(
            isinstance(read, MeterEvent) and read.source == body
            for read, body in zip(expected, bodies, strict=True)
        )
        and len(set(identifiers)) == len(expected)
        and before.keys().isdisjoint(identifiers)
    ):
        assert singles.usual
        assert len(singles.events) == len(bodies)


def test_a_run_of_valid_single_events_is_judged_in_one_step() -> None:
    """The usual batch: every record one valid event with an identifier of its own."""
    bodies = [json.dumps(event(identifier=f"e{n}", timestamp=rfc(NOW))) for n in range(100)]
    judge = Judge(RULES, NOW)
    singles = judge.read_singles(bodies, [f"m-{n}" for n in range(100)])
    assert singles.usual
    assert [e.source for e in singles.events if e is not None] == bodies
    assert judge.read_singles([], []) == ([], True)
    # the same identifiers again (a redelivered run in the same batch): each read on its own
    assert judge.read_singles(bodies[:1], ["m-x"]).events == [None]


def _usual(number: int, **fields: Any) -> dict[str, Any]:
    return event(identifier=f"evt-{number}", timestamp=rfc(NOW), **fields)


_ODD_RECORDS: dict[str, tuple[Any, bool]] = {  # the body, and whether msgspec takes it
    "a key twice": ('{"event_name": "other", ' + json.dumps(_usual(9))[1:], True),
    "an escaped quote": (
        json.dumps(_usual(9, payload=payload(stripe_customer_id='cus_"1'))),
        True,
    ),
    "a blank customer": (json.dumps(_usual(9, payload=payload(stripe_customer_id=" "))), True),
    "an identifier too long": (
        json.dumps(event(identifier="x" * 101, timestamp=rfc(NOW))),
        True,
    ),
    "an invalid value": (json.dumps(_usual(9, payload=payload(value="2.5"))), True),
    "a timestamp out of the window": (
        json.dumps(event(identifier="evt-9", timestamp=rfc(NOW - timedelta(days=36)))),
        True,
    ),
    "a blank event name": (json.dumps(_usual(9, event_name=" ")), True),
    "space before the event": (" " + json.dumps(_usual(9)), True),
    "a line break after it": (json.dumps(_usual(9)) + "\n", True),
    "an identifier twice in the run": (json.dumps(_usual(0)), True),
    "an identifier seen earlier in the batch": (json.dumps(_usual(99)), True),
    "a byte order mark": ("\ufeff" + json.dumps(_usual(9)), False),
    "an envelope": (json.dumps({"events": [_usual(9)]}), False),
    "no timestamp": (json.dumps(event(identifier="evt-9")), False),
    "no text": (None, False),
}


@pytest.mark.parametrize("odd", list(_ODD_RECORDS.values()), ids=list(_ODD_RECORDS))
def test_a_record_that_is_not_usual_is_left_to_be_read_on_its_own(odd: tuple[Any, bool]) -> None:
    """Judged in its place (None) if msgspec takes it as one event, else the run's events stop
    before it; the usual records around it are judged together either way."""
    body, taken = odd
    judge = Judge(RULES, NOW)
    assert isinstance(judge.read_short(json.dumps(_usual(99)), "m-earlier"), MeterEvent)
    bodies = [json.dumps(_usual(n)) for n in range(3)] + [body, json.dumps(_usual(4))]

    singles = judge.read_singles(bodies, [f"m-{n}" for n in range(5)])

    assert all(isinstance(e, MeterEvent) for e in singles.events[:3])
    if taken:
        assert singles.events[3] is None
        assert isinstance(singles.events[4], MeterEvent)
    else:
        assert len(singles.events) == 3
    assert singles.usual == (not taken)
    assert set(table(judge)) == {"evt-99", "evt-0", "evt-1", "evt-2"} | (
        {"evt-4"} if taken else set()
    )


def test_a_run_of_several_meters_with_their_own_payload_keys_is_judged_in_one_step() -> None:
    keys = SEARCH_RULES.keys_for("search_calls")
    search = event(
        event_name="search_calls",
        identifier="evt-s",
        timestamp=rfc(NOW),
        payload={keys.customer_key: "cus_1", keys.value_key: "4"},
    )
    bodies = [json.dumps(_usual(0)), json.dumps(search)]
    singles = Judge(SEARCH_RULES, NOW).read_singles(bodies, ["m-0", "m-1"])
    assert singles.usual
    assert verdicts_of(list(singles.events)) == verdicts_of(
        read_alone(Judge(SEARCH_RULES, NOW), bodies)
    )
    unpaid = {**search, "identifier": "evt-t", "payload": {keys.customer_key: "cus_1"}}
    third = Judge(SEARCH_RULES, NOW).read_singles([*bodies, json.dumps(unpaid)], ["a", "b", "c"])
    assert third.events[2] is None
