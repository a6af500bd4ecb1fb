"""Reading both kinds of DLQ message: the forwarder's letters, and whole messages SQS moved
after maxReceiveCount; the identifiers are those the forwarder derived, and the reasons that
pass (what a redrive takes by default) are told from the others."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from meter_relay.dead_letter import (
    ATTR_ERROR_CODE,
    ATTR_ERROR_MESSAGE,
    ATTR_ERROR_PARAM,
    ATTR_EVENT_INDEX,
    ATTR_FIRST_SEEN,
    ATTR_SOURCE_MESSAGE_ID,
)
from meter_relay.dlq.reading import REDRIVEN_CODE, is_passing, read_message
from meter_relay.events import derive_identifier, format_timestamp, parse_message
from tests.fakes import NOW, sqs_message
from tests.unit.relay.dlq.builders import (
    MID,
    RULES,
    SENT,
    forwarder_letters,
    read_letter,
    recent,
)

# ----- the forwarder's letters ---------------------------------------------------------------


def test_an_event_letter_reads_back_its_reason_identifier_index_and_customer() -> None:
    body = {
        "events": [
            {"event_name": "search_calls", "payload": {"customer": "cus_ok", "calls": "2"}},
            {"event_name": "search_calls", "payload": {"customer": "cus_x", "calls": "0"}},
        ]
    }
    (letter,) = forwarder_letters(json.dumps(body))
    message = read_letter(letter)

    assert message.code == "payload_invalid_value"
    assert "'0'" in message.error_message
    assert message.redriven is False
    assert message.envelope is False
    assert message.source_message_id == MID
    assert message.first_seen == SENT  # FirstSeen, not when the letter was sent
    assert message.sent_at == NOW
    assert message.attributes[ATTR_EVENT_INDEX] == "1"
    assert message.attributes[ATTR_ERROR_PARAM] == "payload.calls"
    (event,) = message.events
    assert event.index == 1
    assert event.identifier == derive_identifier(MID, 1) == letter.identifier
    assert event.event_name == "search_calls"
    assert event.customer == "cus_x"  # under the meter's customer key (METER_KEYS)
    assert event.raw["identifier"] == event.identifier  # written into the body
    assert message.to_json()["identifiers"] == [event.identifier]
    assert message.to_json()["sqs_attributes"]["SentTimestamp"] == str(int(NOW.timestamp() * 1000))


def test_an_event_letter_carries_its_messages_send_time_as_the_default_timestamp() -> None:
    """Else a replay would default it to the letter's own SentTimestamp (the dead-lettering)."""
    payload = {"stripe_customer_id": "cus_a", "value": "0"}
    given = "2026-06-01T11:00:00Z"
    body = {
        "events": [
            {"event_name": "api_requests", "payload": payload},
            {"event_name": "api_requests", "payload": payload, "timestamp": given},
            {"event_name": "api_requests", "payload": payload, "timestamp": None},
        ]
    }
    letters = forwarder_letters(json.dumps(body))
    timestamps = [json.loads(letter.body)["timestamp"] for letter in letters]
    assert timestamps == [format_timestamp(SENT), given, format_timestamp(SENT)]
    assert [read_letter(letter).events[0].raw["timestamp"] for letter in letters] == timestamps


def test_an_event_letter_keeps_the_producers_identifier() -> None:
    body = {
        "event_name": "api_requests",
        "identifier": "order-7",
        "payload": {"stripe_customer_id": "cus_a", "value": "-1"},
    }
    (letter,) = forwarder_letters(json.dumps(body))
    (event,) = read_letter(letter).events
    assert (event.identifier, event.index, event.customer) == ("order-7", 0, "cus_a")


def test_an_event_without_event_name_is_still_an_event_of_its_letter() -> None:
    (letter,) = forwarder_letters(json.dumps({"payload": {"value": "1"}}))
    message = read_letter(letter)
    assert message.code == "parameter_missing"
    (event,) = message.events
    assert (event.identifier, event.event_name) == (derive_identifier(MID, 0), None)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ("this is not json", "message_not_json"),
        ("[1, 2]", "message_not_contract"),
        ('{"events": []}', "message_not_contract"),
        ('{"events": [{"event_name": "api_requests"}], "meta": 1}', "message_not_contract"),
        ('{"events": "nope"}', "message_not_contract"),
    ],
)
def test_a_message_level_letter_carries_no_event(body: str, code: str) -> None:
    (letter,) = forwarder_letters(body)
    message = read_letter(letter)
    assert (message.code, message.redriven, message.events) == (code, False, [])
    assert message.body == body  # kept exactly as the producer sent it
    assert message.source_message_id == MID


# ----- what SQS moved after maxReceiveCount ---------------------------------------------------


def test_a_redriven_envelope_derives_identifiers_exactly_as_the_forwarder() -> None:
    events = [
        {"event_name": "api_requests", "payload": {"stripe_customer_id": "cus_a", "value": "1"}},
        {
            "event_name": "api_requests",
            "identifier": "producer-1",
            "payload": {"stripe_customer_id": "cus_b", "value": "2"},
        },
        {"event_name": "search_calls", "payload": {"customer": "cus_c", "calls": "3"}},
    ]
    body = json.dumps({"events": events})
    first_receive = SENT + timedelta(seconds=2)
    message = read_message(sqs_message(body, MID, sent=SENT, first_receive=first_receive), RULES)

    forwarder = parse_message(body, MID, SENT, RULES, NOW)  # what the forwarder derived
    assert [e.identifier for e in message.events] == [e.identifier for e in forwarder.events]
    assert [e.identifier for e in message.events] == [f"{MID}-0", "producer-1", f"{MID}-2"]
    assert [e.index for e in message.events] == [0, 1, 2]
    assert [e.customer for e in message.events] == ["cus_a", "cus_b", "cus_c"]
    assert message.code == REDRIVEN_CODE == "max_receive_count_exceeded"
    assert (message.redriven, message.envelope) == (True, True)
    assert message.attributes == {}
    assert message.source_message_id == MID  # SQS keeps the messageId on that move
    assert message.sent_at == SENT  # the producer's send: the forwarder's default timestamp
    assert message.first_seen == first_receive


def test_a_redriven_single_event_and_a_broken_identifier() -> None:
    single = json.dumps({"event_name": "api_requests", "payload": {}})
    message = read_message(sqs_message(single, MID), RULES)
    (event,) = message.events
    assert (event.identifier, event.index, message.envelope) == (
        derive_identifier(MID, 0),
        0,
        False,
    )

    broken = json.dumps({"event_name": "api_requests", "identifier": "x" * 101, "payload": {}})
    (event,) = read_message(sqs_message(broken, MID), RULES).events
    assert event.identifier is None  # the forwarder refuses it too: nothing to derive


def test_an_envelope_of_one_event_is_still_an_envelope() -> None:
    body = json.dumps({"events": [{"event_name": "api_requests", "payload": {}}]})
    message = read_message(sqs_message(body, MID), RULES)
    assert (len(message.events), message.envelope) == (1, True)
    assert message.events[0].identifier == f"{MID}-0"


def test_a_body_behind_a_byte_order_mark_is_read_as_the_forwarder_reads_it() -> None:
    body = "\ufeff" + json.dumps({"event_name": "api_requests", "payload": {}})
    message = read_message(sqs_message(body, MID), RULES)
    assert [e.identifier for e in message.events] == [f"{MID}-0"]
    assert message.envelope is False


def test_a_redriven_body_that_is_not_json_carries_no_event() -> None:
    message = read_message(sqs_message("nope", MID), RULES)
    assert (message.code, message.events, message.envelope) == (REDRIVEN_CODE, [], False)


def test_with_identity_writes_the_identifier_and_the_default_timestamp_in() -> None:
    given = "2026-06-01T11:59:00Z"
    events = [
        {"event_name": "api_requests", "payload": {"stripe_customer_id": "cus_a", "value": 1}},
        {"event_name": "api_requests", "identifier": "p-1", "timestamp": given, "payload": {}},
    ]
    sent = recent(minutes=1)  # inside Stripe's window: the first event is valid
    message = read_message(sqs_message(json.dumps({"events": events}), MID, sent=sent), RULES)
    first, second = (event.with_identity() for event in message.events)
    assert (first["identifier"], first["timestamp"]) == (f"{MID}-0", format_timestamp(sent))
    assert first["payload"]["value"] == "1"  # normalised, as the forwarder would send it
    assert (second["identifier"], second["timestamp"]) == ("p-1", given)  # invalid: as given


def test_a_kept_copy_of_a_redriven_envelope_still_carries_its_events() -> None:
    """What a sync replay leaves after Stripe refused a redriven envelope: attributes and the
    whole envelope, identifiers written in (the copy has a new messageId)."""
    events = [
        {"event_name": "api_requests", "identifier": f"{MID}-0", "payload": {}},
        {"event_name": "nope", "identifier": f"{MID}-1", "payload": {}},
    ]
    attributes = {
        ATTR_ERROR_CODE: {"DataType": "String", "StringValue": "no_meter"},
        ATTR_SOURCE_MESSAGE_ID: {"DataType": "String", "StringValue": MID},
        ATTR_FIRST_SEEN: {"DataType": "String", "StringValue": format_timestamp(SENT)},
    }
    message = read_message(
        sqs_message(json.dumps({"events": events}), "copy-id", attributes), RULES
    )
    assert message.code == "no_meter"
    assert [e.identifier for e in message.events] == [f"{MID}-0", f"{MID}-1"]


# ----- passing reasons ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "message", "passing"),
    [
        (REDRIVEN_CODE, "moved after maxReceiveCount receives", True),
        ("http_503", "sync replay: HTTP 503: busy", True),
        ("http_429", "", True),
        ("no_answer", "sync replay: timed out after 10.0s", True),
        ("too_many_concurrent_requests", "", True),
        ("some_new_stripe_code", "sync replay: HTTP 500 some_new_stripe_code: oops", True),
        ("payload_invalid_value", "value '0' is not a positive integer", False),
        ("no_meter", "HTTP 400 no_meter: no meter", False),
        ("message_not_json", "body is not JSON", False),
        ("http_400", "", False),
        ("http_4290", "", False),
    ],
)
def test_a_passing_reason_is_one_that_sending_again_can_cure(
    code: str, message: str, passing: bool
) -> None:
    assert is_passing(code, message) is passing
    attributes = {
        ATTR_ERROR_CODE: {"DataType": "String", "StringValue": code},
        ATTR_ERROR_MESSAGE: {"DataType": "String", "StringValue": message or "x"},
    }
    if code == REDRIVEN_CODE:
        attributes = {}
    read = read_message(sqs_message('{"event_name": "a", "payload": {}}', MID, attributes), RULES)
    assert read.passing is passing
